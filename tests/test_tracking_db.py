"""The SQLite tracking database (storage.db): a fresh file opened by several processes at once is
created once, under a file lock (MLflow alone runs the migrations in every process and one crashes
half-way); a file left between two schema revisions is refused with one line naming the file and
the command that repairs it. Real processes, a real MLflow store."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import tracking

ROOT = Path(__file__).resolve().parent.parent
OPENER = """
import os, sys, time
from pathlib import Path
go = Path(sys.argv[2])
while not go.exists():  # everyone imports first, then all open the fresh file at the same moment
    time.sleep(0.01)
from storage import tracking
print(tracking.ensure_experiment(sys.argv[1], "race"))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _revision(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]


@pytest.mark.slow
def test_fresh_file_opened_by_three_processes_at_once(tmp_path):
    from mlflow.store.db.utils import _get_latest_schema_revision

    path, go = tmp_path / "mlflow.db", tmp_path / "go"
    uri = f"sqlite:///{path}"
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, uri, str(go)], env=_env(), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    # Each has imported Python by now (MLflow itself comes after the go: the migrations race then).
    time.sleep(3)
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, found by the other two
    assert _revision(path) == [_get_latest_schema_revision()]


def _half_migrated(path: Path) -> str:
    """A file whose first migration stopped half-way: MLflow's initial tables, then the Alembic
    migrations up to one in the middle (as a process killed during them leaves it)."""
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase
    from mlflow.store.db.utils import _get_alembic_config

    url = f"sqlite:///{path}"
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(url)
    revisions = [r.revision for r in ScriptDirectory.from_config(config).walk_revisions()][::-1]  # oldest first
    middle = revisions[len(revisions) // 2]
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, middle)
    engine.dispose()
    return middle


@pytest.mark.slow  # MLflow's migrations take seconds
def test_half_migrated_file_is_reported_with_its_repair(tmp_path):
    from storage import db

    path = tmp_path / "mlflow.db"
    middle = _half_migrated(path)
    uri = f"sqlite:///{path}"
    with pytest.raises(db.TrackingStoreError) as caught:
        tracking.ensure_experiment(uri, "e")
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and middle in message
    assert f"`mlflow db upgrade {uri}`" in message
    # The command it names repairs the file.
    repair = subprocess.run([str(Path(sys.executable).with_name("mlflow")), "db", "upgrade", uri], env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert repair.returncode == 0, repair.stderr[-3000:]
    assert tracking.ensure_experiment(uri, "e")


@pytest.mark.slow  # MLflow's migrations take seconds
def test_half_created_file_is_reported(tmp_path):
    """Tables without a recorded revision (a first migration killed before Alembic wrote one)
    cannot be upgraded in place: the line says to move the file aside."""
    from storage import db

    path = tmp_path / "mlflow.db"
    _half_migrated(path)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("DELETE FROM alembic_version")
        connection.commit()
    with pytest.raises(db.TrackingStoreError, match=r"half-created .* move it aside"):
        tracking.ensure_experiment(f"sqlite:///{path}", "e")


@pytest.mark.slow
def test_sweep_command_on_a_half_migrated_file(tmp_path):
    path = tmp_path / "mlflow.db"
    _half_migrated(path)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ntask: synthetic\nstage: ce\nepochs: 1\n")
    done = subprocess.run([str(Path(sys.executable).with_name("beamtune")), "sweep", str(spec), "--storage",
                           str(tmp_path / "sweeps"), "--tracking-uri", f"sqlite:///{path}", "--num-cpus", "1", "--quiet"],
                          env={**_env(), "RAY_ADDRESS": "local"}, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"mlflow db upgrade sqlite:///{path}" in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
