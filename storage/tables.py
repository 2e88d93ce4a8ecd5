"""Per-instance result tables as Parquet (pyarrow): one row per sentence, written atomically.

    write_rows(path, rows, metadata)   rows: list of flat dicts with the same keys
    write_result_table(path, result)   a result's rows, its summary in the metadata and as JSON
    read_rows(path) -> (rows, metadata)
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from core.checkpoint import atomic_write


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]], metadata: dict[str, Any] | None = None) -> Path:
    """Write `rows` (same keys in every row, scalar values) to a Parquet file, with `metadata`
    (JSON-serialisable) stored in the schema under b"beamtune"."""
    if not rows:
        raise ValueError("write_rows: no rows to write")
    keys = list(rows[0])
    for i, row in enumerate(rows):
        if list(row) != keys:
            raise ValueError(f"write_rows: row {i} has keys {sorted(row)}, expected {sorted(keys)}")
    table = pa.Table.from_pylist(list(rows))
    if metadata:
        table = table.replace_schema_metadata({b"beamtune": json.dumps(metadata).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return path


def read_rows(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    table = pq.read_table(path)
    meta = (table.schema.metadata or {}).get(b"beamtune")
    return table.to_pylist(), json.loads(meta) if meta else {}


def write_result_table(path: str | Path, result: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Persist a result with "rows" (core.oracle.run_oracle: one per sentence; core.table6.run_table6:
    one per Table 6 row) as Parquet at `path`, with the rest of the result (the summary: Table-6
    rows, oracle, Viterbi, cost, ...) in its metadata and as JSON beside it (`path` with suffix
    .json). Returns (Parquet path, summary)."""
    summary = {key: value for key, value in result.items() if key != "rows"}
    parquet = write_rows(path, result["rows"], summary)
    atomic_write(parquet.with_suffix(".json"), json.dumps(summary, indent=2).encode())
    return parquet, summary
