"""ResumableASHA (sweeps.launch): a trial that reports its last epoch is never stopped there, so it
always scores its best checkpoint on dev and test; below the top rung ASHA cuts as before."""
from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from sweeps.launch import ResumableASHA


def scheduler(tmp_path, max_t: int = 4) -> ResumableASHA:
    return ResumableASHA(str(tmp_path / "asha.json"), time_attr="epoch", max_t=max_t, grace_period=1,
                         reduction_factor=2, metric="dev_score", mode="max", stop_last_trials=False)


def report(asha: ResumableASHA, trial, epoch: int, score: float) -> str:
    return asha.on_trial_result(None, trial, {"epoch": epoch, "dev_score": score})


def test_last_epoch_continues_even_below_the_cutoff(tmp_path):
    asha = scheduler(tmp_path)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for trial in trials:
        asha.on_trial_add(None, trial)
    # Good trials reach the top rung (epoch 4) first; the weakest one arrives there last.
    for epoch in (1, 2, 3, 4):
        for i, trial in enumerate(trials[:3]):
            report(asha, trial, epoch, 0.9 - 0.01 * i)
    for epoch in (1, 2, 3):
        report(asha, trials[3], epoch, 0.95)  # strong early: survives the lower rungs
    assert report(asha, trials[3], 4, 0.10) == TrialScheduler.CONTINUE
    # ... where plain ASHA (same rungs) stops it
    plain = AsyncHyperBandScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2, metric="dev_score",
                                    mode="max", stop_last_trials=False)
    for trial in trials:
        plain.on_trial_add(None, trial)
    for epoch in (1, 2, 3, 4):
        for i, trial in enumerate(trials[:3]):
            plain.on_trial_result(None, trial, {"epoch": epoch, "dev_score": 0.9 - 0.01 * i})
    for epoch in (1, 2, 3):
        plain.on_trial_result(None, trials[3], {"epoch": epoch, "dev_score": 0.95})
    assert plain.on_trial_result(None, trials[3], {"epoch": 4, "dev_score": 0.10}) == TrialScheduler.STOP


def test_lower_rungs_still_cut(tmp_path):
    asha = scheduler(tmp_path)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    for trial in trials:
        asha.on_trial_add(None, trial)
    report(asha, trials[0], 1, 0.9)
    report(asha, trials[1], 1, 0.8)
    assert report(asha, trials[2], 1, 0.1) == TrialScheduler.STOP
