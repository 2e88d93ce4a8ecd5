"""Reports: tables (storage.tables_goyal) and plots (storage.plots) written as Markdown, CSV and one
self-contained HTML page, and logged to the sweeps' MLflow runs.

    build_report(uri, sweep_names, out, ...) -> Report     reads MLflow only; writes OUT/report.{md,csv,html}
    render_markdown(table, refs) / render_csv(table) / render_html(report)

Cells are "mean ± sd (n)" over seeds in percent; a cell with one seed is the bare number. An
empty cell says why ("not run", "failed", "stopped early"). Paper reference values (a YAML file
`{row title: {"<column>": value}}`, or one such mapping per table, `{"Table 1": {...}}`, for
tables whose `refs_key` names a section) are shown beside ours with the difference; a top-level
`metric: NAME` in that file (e.g. `macro_f1`, Goyal et al.'s NER metric) puts them beside that
metric's tables only, not beside every table.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.checkpoint import atomic_write
from storage import tracking
from storage.runs import Sweep, load_sweep
from storage.tables_goyal import Cell, Table, goyal_table

REPORT_ARTIFACT = "report"


@dataclass
class Report:
    tables: list[Table]
    sweeps: list[Sweep]
    header: list[str]  # reduced settings, provenance
    plots: list[Path] = field(default_factory=list)
    refs: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # load_refs
    refs_metric: str | None = None  # the table metric the refs are in; None: every table
    ui_url: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def format_cell(cell: Cell, scale: float) -> str:
    if cell.mean is None:
        return f"— ({cell.note})" if cell.note else "—"
    text = f"{cell.mean * scale:.2f}"
    if cell.sd is not None:
        text += f" ± {cell.sd * scale:.2f} ({cell.n})"
    return text


def column_key(column: tuple[str, str]) -> str:
    return f"{column[0]} {column[1]}"


def render_markdown(table: Table, refs: dict[str, dict[str, float]] | None = None) -> str:
    refs = refs or {}
    head = [table.row_header] + [column_key(c) for c in table.columns]
    lines = [f"**{table.title}**", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for title, cells in table.rows:
        lines.append("| " + " | ".join([title] + [format_cell(c, table.column_scale(i)) for i, c in enumerate(cells)]) + " |")
        if any(refs.get(title, {}).get(column_key(col)) is not None for col in table.columns):  # a paper value here
            lines.append("| " + " | ".join([f"{title} (paper, Δ)"] + [
                _ref_text(refs[title].get(column_key(col)), cell, table.column_scale(i))
                for i, (col, cell) in enumerate(zip(table.columns, cells))
            ]) + " |")
    lines += [""] + [f"- {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def _ref_text(paper: float | None, cell: Cell, scale: float) -> str:
    if paper is None:
        return "—"
    if cell.mean is None:
        return f"{paper:.2f}"
    return f"{paper:.2f} ({cell.mean * scale - paper:+.2f})"


def render_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "row", *table.column_names, "mean", "sd", "n", "note", "mlflow_metric", "run_ids"])
    for title, cells in table.rows:
        for i, ((decoder, split), key, cell) in enumerate(zip(table.columns, table.metric_keys, cells)):
            scale = table.column_scale(i)
            writer.writerow([table.title, title, decoder, split,
                             "" if cell.mean is None else f"{cell.mean * scale:.4f}",
                             "" if cell.sd is None else f"{cell.sd * scale:.4f}", cell.n, cell.note, cell.metric or key,
                             " ".join(cell.run_ids)])
    return buffer.getvalue()


def run_link(ui_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def render_html(report: Report) -> str:
    experiments = {t.run_id: t.experiment_id for s in report.sweeps for t in s.trials}
    parts = ["<!doctype html><meta charset='utf-8'><title>beamtune report</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:48%;margin:4px}</style>", "<h1>beamtune report</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in report.header]
    for table in report.tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2><table><tr><th>{html.escape(table.row_header)}</th>"
                     + "".join(f"<th>{html.escape(column_key(c))}</th>" for c in table.columns) + "</tr>")
        for title, cells in table.rows:
            tds = [_html_cell(cell, table.column_scale(i), report.ui_url, experiments) for i, cell in enumerate(cells)]
            parts.append(f"<tr><td>{html.escape(title)}</td>{''.join(tds)}</tr>")
        parts.append("</table><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in table.notes) + "</ul>")
    for plot in report.plots:
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(plot.stem)}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts) + "\n"


def _html_cell(cell: Cell, scale: float, ui_url: str, experiments: dict[str, str]) -> str:
    text = html.escape(format_cell(cell, scale))
    if not cell.run_ids or not ui_url:
        return f"<td>{text}</td>"
    links = " ".join(f"<a href='{html.escape(run_link(ui_url, experiments[r], r))}'>[{i + 1}]</a>"
                     for i, r in enumerate(cell.run_ids))
    return f"<td>{text} <small>{links}</small></td>"


def load_refs(path: str | Path | None) -> tuple[dict[str, dict[str, dict[str, float]]], str | None]:
    """({table key: {row: {column: value}}}, the metric they are in or None). A file of rows only
    (one table's) is under the key ""."""
    if path is None:
        return {}, None
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    metric = data.pop("metric", None) if isinstance(data, dict) else None
    if metric is not None and not isinstance(metric, str):
        raise ValueError(f"{path}: metric: expected a metric name such as macro_f1, got {metric!r}")
    if isinstance(data, dict) and data and all(_ref_rows(v) is not None for v in data.values()):
        return {str(key): _ref_rows(section) for key, section in data.items()}, metric
    rows = _ref_rows(data)
    if rows is None:
        raise ValueError(f"{path}: paper references must map a row title to {{column: value}}, "
                         "or a table key to such a mapping")
    return {"": rows}, metric


def _ref_rows(section: Any) -> dict[str, dict[str, float]] | None:
    """{row: {column: number}}, or None if `section` is not one."""
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        return None
    try:
        return {str(row): {str(k): float(v) for k, v in cols.items()} for row, cols in section.items()}
    except (TypeError, ValueError):
        return None


def refs_for(report: Report, table: Table) -> dict[str, dict[str, float]]:
    """The paper values to show beside `table`: its own section (`table.refs_key`), else a file of
    rows only; none when they are in another metric than the table's."""
    if report.refs_metric not in (None, table.metric):
        return {}
    return report.refs.get(table.refs_key) or report.refs.get("", {})


def write_report(report: Report, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    header = "\n".join(f"> {line}" for line in report.header)
    markdown = header + "\n\n" + "\n".join(render_markdown(t, refs_for(report, t)) for t in report.tables)
    files = {"md": out / "report.md", "csv": out / "report.csv", "html": out / "report.html"}
    atomic_write(files["md"], markdown.encode())
    atomic_write(files["csv"], "".join(render_csv(t) for t in report.tables).encode())
    atomic_write(files["html"], render_html(report).encode())
    report.files = files
    return files


def log_report(uri: str, report: Report, also: list[str] = ()) -> None:
    """The report's files (and plots) as artifacts of every sweep's parent run (and of the runs in
    `also`, e.g. the study's), and the Markdown as each run's description, so the UI shows the
    table first."""
    markdown = report.files["md"].read_text()
    for run_id in [*(s.run_id for s in report.sweeps), *also]:
        tracking.attach_report(uri, run_id, [*report.files.values(), *report.plots], REPORT_ARTIFACT, markdown)


def build_report(uri: str, sweep_names: list[str], out: Path, refs: str | Path | None = None,
                 header: list[str] | None = None, ui_url: str = "", plots: bool = True, log: bool = True,
                 also_log_to: list[str] = (), not_started_ok: bool = False) -> Report:
    """`not_started_ok`: a sweep not in the tracking store yet (a study's later stage) is named in
    the header as not started, instead of an error."""
    from storage.plots import sweep_plots
    from storage.runs import SweepNotTracked

    sweeps, not_started = [], []
    for name in sweep_names:
        try:
            sweeps.append(load_sweep(uri, name))
        except SweepNotTracked:
            if not not_started_ok:
                raise
            not_started.append(name)
    tables = layouts(uri, sweeps)
    provenance = [f"sweeps: {', '.join(f'{s.name} ({s.stage}, {len(s.trials)} trials, {s.status})' for s in sweeps)}"
                  + (f"; not started yet: {', '.join(not_started)}" if not_started else ""), f"tracking: {uri}"]
    paper, paper_metric = load_refs(refs)
    report = Report(tables=tables, sweeps=sweeps, header=(header or []) + provenance, refs=paper,
                    refs_metric=paper_metric, ui_url=ui_url)
    if plots:
        report.plots = sweep_plots(uri, sweeps, out / "plots") + _figure1(sweeps, out / "plots") + _figure2(sweeps, out / "plots")
    write_report(report, out)
    if log:
        log_report(uri, report, also_log_to)
    return report


SEQ2SEQ_STAGES = ("ce", "dl", "hinge")


def layouts(uri: str, sweeps: list[Sweep]) -> list[Table]:
    """The tables a set of sweeps supports: Goyal et al.'s for the seq2seq stages (NER in macro F1,
    as that paper reports, and micro F1), Tu & Gimpel's Tables 1, 2, 4, 5 for the structured ones,
    and their Table 6 when there is a table6 or gd-oracle stage, Table 3 when there is a speed stage,
    §6.2 when there is a search-error stage."""
    from storage.tables_tu import paper_tables, search_error_table, table3, table6

    tables = []
    seq2seq = [s for s in sweeps if s.stage in SEQ2SEQ_STAGES]
    if seq2seq:
        metrics = ["score"]
        if any(t.final("dev", "greedy", "macro_f1") is not None for s in seq2seq for t in s.trials):
            metrics = ["macro_f1", "score"]
        tables += [goyal_table(seq2seq, metric, title=_title(seq2seq, metric)) for metric in metrics]
    structured = [s for s in sweeps if s.stage not in SEQ2SEQ_STAGES and s.stage not in ("table6", "speed", "search-error")]
    if structured:
        tables += paper_tables(structured, _crf_stages(uri, structured))
    inference = [s for s in sweeps if s.stage in ("table6", "gd-oracle")]
    six = table6(inference, _crf_stages(uri, inference)) if inference else None
    if six is not None and six.rows:  # gd-oracle trials that logged no per-N metrics give no Table 6
        tables.append(six)
    tables += table3([s for s in sweeps if s.stage == "speed"])
    correlations = search_error_table(sweeps)
    if correlations is not None:
        tables.append(correlations)
    return tables


def _figure1(sweeps: list[Sweep], folder: Path) -> list[Path]:
    """Tu & Gimpel's Figure 1 (dev score against H) for each task whose networks vary H."""
    from storage.plots import hidden_size_plot
    from storage.tables_tu import figure1_points

    return [hidden_size_plot(task, lines, folder / f"figure1-{task}.png") for task, lines in figure1_points(sweeps).items()]


def _figure2(sweeps: list[Sweep], folder: Path) -> list[Path]:
    """Tu & Gimpel's Figure 2 (score against inference time) for each task with speed trials."""
    from storage.plots import speed_plot
    from storage.tables_tu import figure2_points, speed_batch_size

    size = speed_batch_size(sweeps)
    return [speed_plot(row, points, folder / f"figure2-{_file_part(row)}.png", size)
            for row, points in sorted(figure2_points(sweeps).items())]


def _file_part(row: str) -> str:
    """A table row as part of a file name: "twitter_pos (CRF+)" -> "twitter_pos_CRFplus"."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", row.replace("+", "plus")).strip("_")


def _crf_stages(uri: str, sweeps: list[Sweep]) -> dict[str, str]:
    """The stage (crf or crf+) of the CRF each GD-oracle sweep decoded with, from its spec's warm start."""
    from storage.runs import SweepNotTracked

    found = {}
    for sweep in sweeps:
        warm = ((yaml.safe_load(sweep.spec_yaml) or {}) if not sweep.spec_yaml.startswith("#") else {}).get("warm_start") or {}
        if sweep.stage == "gd-oracle" and warm.get("sweep"):
            try:
                found[sweep.name] = load_sweep(uri, warm["sweep"]).stage
            except SweepNotTracked:
                found[sweep.name] = "?"
    return found


def _title(sweeps: list[Sweep], metric: str) -> str:
    tasks = sorted({s.task for s in sweeps})
    name = {"score": "accuracy / micro F1", "macro_f1": "macro F1", "f1": "micro F1"}.get(metric, metric)
    return f"Goyal et al. (2018) layout: {', '.join(tasks)}, {name} (%)"


def report_json(report: Report) -> str:
    return json.dumps({"files": {k: str(v) for k, v in report.files.items()}, "plots": [str(p) for p in report.plots]})
