"""The SQLite tracking database: created or migrated by one process at a time, checked before use.

MLflow's SqlAlchemyStore creates a fresh database (tables, then every Alembic migration) in
whichever process opens it first, without a lock: two sweeps started at once on a fresh file both
run the migrations and one crashes half-way (`duplicate column name`, `expected to match one
row`), which can leave the file between two schema versions so that every later command fails.
`ensure_store` takes an exclusive `fcntl.flock` on `FILE.lock` (a sibling file, so every process
that can open the database can take it) around the first opening, and refuses a file whose schema
is not MLflow's head with one line naming the file and the command that repairs it.
"""
from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
_READY: set[str] = set()  # URIs this process has created or checked already


class TrackingStoreError(RuntimeError):
    """The tracking database cannot be used as it is (the message says why and how to repair it)."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for any other store or an in-memory one)."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    path = uri[len(SQLITE_PREFIX):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(path: Path):
    """Exclusive lock on `path`'s sibling `.lock` file (blocks until the holder is done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def schema_state(path: Path) -> tuple[list[str], set[str]]:
    """(the Alembic revisions recorded in the file, its table names); both empty for a new file."""
    if not path.is_file() or path.stat().st_size == 0:
        return [], set()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revisions = ([row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
                     if "alembic_version" in tables else [])
    return revisions, tables


def check_schema(uri: str) -> None:
    """Raise TrackingStoreError unless the file is new or at MLflow's head schema revision."""
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    path = sqlite_path(uri)
    if path is None:
        return
    revisions, tables = schema_state(path)
    mlflow_tables = {t for t in tables if not t.startswith(("alembic_", "sqlite_"))}
    if not mlflow_tables and not revisions:
        return  # new (or empty): MLflow creates it
    head = _get_latest_schema_revision()
    if revisions == [head] and set(Base.metadata.tables) <= mlflow_tables:
        return
    found = ", ".join(revisions) or "none"
    if revisions and len(revisions) == 1:
        raise TrackingStoreError(
            f"tracking database {path} is half-migrated (schema revision {found}, MLflow {_mlflow_version()} "
            f"expects {head}): back it up, then repair it with `mlflow db upgrade {SQLITE_PREFIX}{path}`")
    raise TrackingStoreError(
        f"tracking database {path} is half-created (schema revision {found}, expected {head}; an interrupted "
        f"first migration): it cannot be upgraded in place; move it aside (`mv {path} {path}.broken`) and "
        f"start again with a fresh file")


def _mlflow_version() -> str:
    import mlflow

    return mlflow.__version__


def ensure_store(uri: str) -> None:
    """Create or check the SQLite database at `uri` once per process, under the file lock; other
    stores (a tracking server, a folder) are left to MLflow."""
    path = sqlite_path(uri)
    if path is None or uri in _READY:
        return
    from mlflow.tracking import MlflowClient

    with store_lock(path):
        check_schema(uri)
        # The first opening creates the tables and runs the migrations; later ones only verify.
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _READY.add(uri)
