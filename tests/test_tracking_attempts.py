"""`beamtune.attempts` counts every start Ray makes of a trial, also starts that die before the
trial's own code runs (a worker killed while it starts): the driver counts them
(`tracking.record_start` from Tune's on_trial_start), not the trial. Here Ray starts one trial
three times: its first two workers are killed (SIGKILL) as soon as they exist, the third trains
to the end (FailureConfig: max_failures 2)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from helpers import sweep_in_thread
from storage import tracking
from sweeps.spec import validate

TINY = {"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4, "batch_size": 64,
        "patience": 0}


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _trial_workers() -> set[int]:
    """This process's Ray workers that run a trial (their title is `ray::ImplicitFunc...`)."""
    pids = set()
    for pid in _descendants(os.getpid()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::ImplicitFunc"):
            pids.add(pid)
    return pids


def _recorded_starts(directory: Path) -> int:
    """How many trial starts the driver has journaled (tracking.record_start) for the sweep."""
    count = 0
    for journal in tracking.spool_dir(directory).glob("*.jsonl"):
        for line in journal.read_text().splitlines():
            try:
                op = json.loads(line)
            except ValueError:  # a line being written
                continue
            count += op.get("op") == "tags" and tracking.ATTEMPTS_TAG in op.get("tags", {})
    return count


@pytest.fixture
def ray_one_cpu():
    import ray

    ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=256 * 1024**2,
             log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_every_start_is_counted(ray_one_cpu, tmp_path):

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = validate({"name": "a", "task": "synthetic", "stage": "ce", "epochs": 2, "fixed": dict(TINY),
                     "num_samples": 1, "max_failures": 2, "resources": {"cpu": 1}, "scheduler": {"type": "fifo"}},
                    storage=tmp_path / "sweeps")

    stale = _trial_workers()  # of an earlier Ray of this process, still exiting
    thread, result = sweep_in_thread(spec, tmp_path / "sweeps", uri)
    killed: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while len(killed) < 2:
            assert thread.is_alive(), "the sweep ended before its trial was killed twice"
            assert time.monotonic() < deadline, "no trial worker appeared"
            # Kill a worker only once Ray has started the trial in it (Tune's start is journaled):
            # a worker killed before that never started the trial, and is not an attempt.
            if _recorded_starts(tmp_path / "sweeps" / "a") <= len(killed):
                time.sleep(0.05)
                continue
            for pid in _trial_workers() - killed - stale:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
                break
            time.sleep(0.05)
    finally:
        thread.join(timeout=600)
    assert "error" not in result, repr(result.get("error"))
    outcome = result["outcome"]
    assert outcome.trials == 1 and outcome.errors == 0  # the third start trained to the end
    (child,) = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags["beamtune.attempts"] == "3"
    steps = [m.step for m in tracking.client(uri).get_metric_history(child.info.run_id, "dev_score")]
    assert sorted(steps) == [1, 2]
