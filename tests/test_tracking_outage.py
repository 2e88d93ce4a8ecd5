"""The MLflow tracking server goes down in the middle of a sweep and comes back: a real `mlflow
server` on 127.0.0.1, killed (SIGKILL) for longer than the client's retry window while the trials
train, restarted on the same port and backend. Trials neither wait nor fail (no Ray retry burned),
the driver says so once, and every journaled write reaches MLflow in order: each epoch exactly once.
Then the server goes down for the end of a second sweep: one line names `beamtune sync`, which
replays everything once the server is back."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from storage import tracking
from storage.best import TRIAL_SIDECAR
from sweeps.spec import validate

TINY = {"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4, "batch_size": 64,
        "patience": 0}
BIN = Path(sys.executable).parent


class Server:
    """`mlflow server` on a fixed port and backend, which can be killed and started again."""

    def __init__(self, tmp_path: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.tmp_path, self.url, self.process = tmp_path, f"http://127.0.0.1:{self.port}", None

    def start(self) -> None:
        log = open(self.tmp_path / "mlflow-server.log", "a")
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.tmp_path}/server.db",
             "--artifacts-destination", str(self.tmp_path / "server-artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{self.url}/health", timeout=2).read().strip() == b"OK":
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(self.tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn worker
            self.process.wait()


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    try:
        yield s
    finally:
        s.kill()


def _spec(tmp_path, name, epochs):
    return validate({"name": name, "task": "synthetic", "stage": "ce", "epochs": epochs, "fixed": dict(TINY),
                     "num_samples": 1, "max_concurrent": 2, "resources": {"cpu": 1},
                     "space": {"lr": {"grid": [0.01, 0.02]}}, "search": {"algorithm": "grid"},
                     "scheduler": {"type": "fifo"}}, storage=tmp_path / "sweeps")


def _start_sweep(tmp_path, name, url, epochs):
    from sweeps.launch import run_sweep

    result = {}

    def target():
        try:
            result["outcome"] = run_sweep(_spec(tmp_path, name, epochs), storage=tmp_path / "sweeps", tracking_uri=url, verbose=0)
        except BaseException as error:  # reported by the test thread
            result["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def spools(journal_dir: Path):
    from storage.spool import spools

    return spools(journal_dir)


def _epochs(journal_dir: Path) -> tuple[int, int]:
    """(epochs acknowledged by MLflow, epochs journaled but pending) over all trials."""
    acked = pending = 0
    for spool in spools(journal_dir):
        done = spool.state()["acked"]
        for op in spool.ops():
            if op["op"] == "metrics" and "epoch" in op["metrics"]:
                acked, pending = (acked + 1, pending) if op["seq"] <= done else (acked, pending + 1)
    return acked, pending


def _checkpointed(directory: Path) -> dict[str, int]:
    """trial id -> the last epoch it checkpointed in the sweep storage (Ray's side: training goes on)."""
    latest: dict[str, int] = {}
    for path in directory.glob(f"*/checkpoint_*/{TRIAL_SIDECAR}"):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):  # being written or pruned
            continue
        latest[info["trial_id"]] = max(latest.get(info["trial_id"], 0), info["epoch"])
    return latest


def _in_mlflow(url: str) -> int:
    """How many epochs (over all trials of the sweeps' experiment) the tracking server holds."""
    client = tracking.client(url)
    experiment = client.get_experiment_by_name("beamtune")
    runs = client.search_runs([experiment.experiment_id]) if experiment is not None else []
    return sum(len(client.get_metric_history(r.info.run_id, "epoch")) for r in runs if tracking.TRIAL_TAG in r.data.tags)


def _wait(condition, what: str, thread, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert thread.is_alive(), f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _check_runs(url, outcome, epochs) -> None:
    client = tracking.client(url)
    assert outcome.errors == 0 and set(outcome.statuses.values()) == {"TERMINATED"}
    children = tracking.child_runs(url, outcome.experiment_id, outcome.parent_run_id)
    assert len(children) == 2 and {c.data.tags[tracking.TRIAL_TAG] for c in children} == set(outcome.statuses)
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags[tracking.ATTEMPTS_TAG] == "1"  # no Ray retry burned on tracking
        assert child.data.params["lr"] in ("0.01", "0.02") and child.data.tags["beamtune.stage"] == "ce"
        for key in ("dev_score", "train_loss", "epoch"):  # no gap, no duplicate
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (key, steps)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, tracking.CHECKPOINT_ARTIFACT)}
        assert "best_checkpoint/metrics.json" in artifacts
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["beamtune.trials"] == "2"
    assert "best_dev_score" in parent.data.metrics


@pytest.mark.slow
def test_server_down_mid_sweep_then_back(ray_local, tmp_path, server, capfd):
    # Enough epochs to outlast the restart of the server (tens of seconds on a loaded machine).
    thread, result = _start_sweep(tmp_path, "s", server.url, epochs=12)
    try:
        _wait(lambda: _in_mlflow(server.url) >= 1, "the first epoch reached MLflow", thread)
        server.kill()
        at_kill = _checkpointed(tmp_path / "sweeps" / "s")
        # Longer than the client's retry window: every trial trains on, 2 epochs more (without the
        # journal they sat in MLflow's retries for minutes, then failed).
        _wait(lambda: (lambda now: len(now) == 2 and all(e >= at_kill.get(t, 0) + 2 for t, e in now.items()))(
              _checkpointed(tmp_path / "sweeps" / "s")), "epochs trained while the server is down", thread, timeout=150)
        server.start()
    finally:
        thread.join(timeout=600)
    assert "error" not in result, repr(result.get("error"))
    err = capfd.readouterr().err
    assert err.count(f"MLflow tracking at {server.url} does not answer") == 1, err[-3000:]
    assert "still does not answer" not in err
    assert all(not s.pending() for s in spools(tracking.spool_dir(tmp_path / "sweeps" / "s")))
    _check_runs(server.url, result["outcome"], 12)


@pytest.mark.slow
def test_server_down_at_sweep_end_then_sync(ray_local, tmp_path, server, capfd):
    journals = tracking.spool_dir(tmp_path / "sweeps" / "e")
    thread, result = _start_sweep(tmp_path, "e", server.url, epochs=4)
    try:
        _wait(lambda: _epochs(journals)[0] >= 1, "the first epoch reached MLflow", thread)
        server.kill()
    finally:
        thread.join(timeout=600)
    assert "error" not in result, repr(result.get("error"))
    err = capfd.readouterr().err
    assert err.count(f"MLflow tracking at {server.url} does not answer") == 1, err[-3000:]
    assert "still does not answer" in err and "`beamtune sync --sweep e`" in err
    assert any(s.pending() for s in spools(journals))

    server.start()
    synced = subprocess.run([str(BIN / "beamtune"), "sync", "--sweep", "e", "--storage", str(tmp_path / "sweeps")],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert all(not s.pending() for s in spools(journals))
    _check_runs(server.url, result["outcome"], 4)
    state = json.loads((tmp_path / "sweeps" / "e" / "beamtune_sweep.json").read_text())
    assert state["tracking_uri"] == server.url
