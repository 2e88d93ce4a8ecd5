"""The compact live view of a sweep (sweeps/progress.py): how it names the end of a trial, and the
trials that wait for resources."""
from __future__ import annotations

import re
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
