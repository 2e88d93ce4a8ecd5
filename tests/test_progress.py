"""The compact live view of a sweep (sweeps/progress.py): how it names the end of a trial, and the
trials that wait for resources."""
from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import pytest

from core.train import TrainConfig, train
from sweeps.progress import CompactProgress

TINY = dict(task="synthetic", threads=1, progress=False, batch_size=64,
            model={"encoder_hidden": 8, "decoder_hidden": 8, "word_dim": 8, "char_filters": 0, "label_dim": 4})


def view(lines: list[str]) -> CompactProgress:
    return CompactProgress("s", "ce", epochs=10, metric="dev_score", mode="max", searched=["seed"], say=lines.append)


def finish(progress: CompactProgress, trial_id: str, last: dict) -> None:
    trial = SimpleNamespace(trial_id=trial_id, config={"seed": int(trial_id)})
    progress.on_trial_start(0, [], trial)
    progress.on_trial_result(0, [], trial, {"dev_score": 0.5, **last})
    progress.on_trial_complete(0, [], trial)


class TestTrialEnd:
    def test_done_early_stopped_and_scheduler_stopped_are_told_apart(self):
        lines: list[str] = []
        progress = view(lines)
        finish(progress, "1", {"epoch": 10, "patience_exhausted": 0.0})
        finish(progress, "2", {"epoch": 6, "patience_exhausted": 1.0})
        finish(progress, "3", {"epoch": 2, "patience_exhausted": 0.0})
        ends = [line for line in lines if "seed=" in line and ("done" in line or "stopped" in line)]
        assert ends[0].endswith("seed=1 done")
        assert "seed=2 stopped early after epoch 6 (no dev improvement" in ends[1]
        assert ends[2].endswith("seed=3 stopped by the scheduler after epoch 2")


class TestPatienceExhaustedMetric:
    def test_set_on_the_last_epoch_of_an_early_stopped_run_only(self, tmp_path):
        # core reports it: 1 exactly on the epoch after which patience ends the run, never on the
        # planned last epoch (that run is done, not stopped).
        reports: dict[int, dict] = {}
        config = TrainConfig(out=str(tmp_path / "a"), epochs=12, patience=1, lr=0.3, **TINY)  # lr high: dev stalls soon
        final = train(config, lambda epoch, metrics, last: reports.update({epoch: metrics}))
        last = max(reports)
        assert last < 12, "the run was meant to stop early (seeded: dev falls at epoch 3)"
        flags = [reports[e]["patience_exhausted"] for e in sorted(reports)]
        assert flags == [0.0] * (len(flags) - 1) + [1.0] and final["best_epoch"] == last - 1
        whole: dict[int, dict] = {}
        train(TrainConfig(out=str(tmp_path / "b"), epochs=2, patience=0, **TINY), lambda e, m, _: whole.update({e: m}))
        assert [m["patience_exhausted"] for m in whole.values()] == [0.0, 0.0]


@pytest.mark.slow  # starts Ray
def test_pending_trial_is_named_with_its_request_and_wait(ray_local, tmp_path):
    """On a real local Ray of 2 CPUs, two trials that each ask for both CPUs: one is PENDING while
    the other runs."""
    from ray import tune

    def hold_both_cpus(config):  # local, so Ray ships it by value (tests/ is not importable on workers)
        time.sleep(config["seconds"])
        tune.report({"dev_score": 0.5, "epoch": 1})

    lines: list[str] = []
    view = CompactProgress("p", "ce", 1, "dev_score", "max", ["seconds"], say=lines.append, every=1.0)
    tuner = tune.Tuner(tune.with_resources(hold_both_cpus, {"cpu": 2}),
                       param_space={"seconds": tune.grid_search([4, 4])},
                       run_config=tune.RunConfig(name="p", storage_path=str(tmp_path), callbacks=[view], verbose=0))
    results = tuner.fit()
    assert not results.errors
    pending = [line for line in lines if "pending" in line]
    assert pending, lines
    # While Ray starts a trial it is pending with the CPUs held or free; the second one waits behind the first.
    pattern = (r"\[p\] [12] trials? pending: waiting (\d+) s for \{CPU: 2\} "
               r"\((?:Ray is starting (?:it|them)|behind 1 running trial)\)")
    assert all(re.fullmatch(pattern, line) for line in pending), "\n".join(pending)
    assert any(line.startswith("[p] 1 trial pending") and line.endswith("(behind 1 running trial)") for line in pending)
    waits = [int(re.fullmatch(pattern, line).group(1)) for line in pending]
    assert waits[0] >= 1 and waits == sorted(waits)  # named after `every` seconds, then how long it has waited


@pytest.mark.slow  # starts Ray
def test_pending_behind_another_job_says_so(ray_local, tmp_path, monkeypatch):
    """A sweep whose trial waits because something outside it (here an actor holding both CPUs, as
    another sweep's trials would) holds the cluster's resources says so, instead of "Ray is
    starting it", once the wait is longer than an actor takes to start."""
    import ray
    from ray import tune

    import sweeps.progress

    monkeypatch.setattr(sweeps.progress, "ACTOR_START_S", 2.0)

    @ray.remote(num_cpus=2)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    assert ray.get(holder.ready.remote())
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if "other jobs" in line:
            ray.kill(holder)  # the other job ends: the trial starts

    def one_epoch(config):
        tune.report({"dev_score": 0.5, "epoch": 1})

    view = CompactProgress("o", "ce", 1, "dev_score", "max", [], say=say, every=1.0)
    tuner = tune.Tuner(tune.with_resources(one_epoch, {"cpu": 1}),
                       run_config=tune.RunConfig(name="o", storage_path=str(tmp_path), callbacks=[view], verbose=0))
    deadline = threading.Timer(60, ray.kill, [holder])  # if the line never comes, the sweep still ends
    deadline.start()
    try:
        results = tuner.fit()
    finally:
        deadline.cancel()
    assert not results.errors
    held = [line for line in lines if "other jobs" in line]
    assert held, lines
    assert re.fullmatch(r"\[o\] 1 trial pending: waiting (\d+) s for \{CPU: 1\} \(no trial of this sweep runs: "
                        r"other jobs on the cluster hold the resources\)", held[0]), held[0]
    assert int(re.fullmatch(r"\[o\] 1 trial pending: waiting (\d+) s.*", held[0]).group(1)) >= 2
