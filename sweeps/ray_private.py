"""Every Ray private attribute beamtune reads or writes, behind one small adapter.

Ray has no public API for two things beamtune needs:

- the `Trial` objects (ids and statuses) of a finished `ResultGrid` (`ResultGrid._experiment_analysis`);
- ASHA's state, to keep it across a driver restart (ray#30838: `Tuner.restore` does not save the
  scheduler): `AsyncHyperBandScheduler._brackets`, each bracket's `_rungs` (a list of
  (milestone, {trial id: value})), `_trial_info` (trial id -> bracket) and `_num_stopped`.

tests/test_ray_private.py builds the real Ray objects and fails, naming the attribute, when a Ray
upgrade renames or reshapes any of them.
"""
from __future__ import annotations

from typing import Any


def result_trials(results) -> list:
    """The Trial objects of a finished ResultGrid (trial_id, status, get_error())."""
    return list(results._experiment_analysis.trials)


def asha_state(scheduler) -> dict[str, Any]:
    """ASHA's decisions so far as JSON-able data: every bracket's rungs, each trial's bracket, stops."""
    index = {id(b): i for i, b in enumerate(scheduler._brackets)}
    return {"brackets": [[[m, dict(recorded)] for m, recorded in b._rungs] for b in scheduler._brackets],
            "trial_bracket": {tid: index[id(b)] for tid, b in scheduler._trial_info.items()},
            "num_stopped": scheduler._num_stopped}


def restore_asha_state(scheduler, state: dict[str, Any]) -> None:
    """Put `asha_state`'s data back into a fresh scheduler of the same shape."""
    for bracket, rungs in zip(scheduler._brackets, state["brackets"]):
        by_milestone = {float(m): recorded for m, recorded in rungs}
        bracket._rungs = [(milestone, dict(by_milestone.get(float(milestone), {}))) for milestone, _ in bracket._rungs]
    scheduler._trial_info.update({tid: scheduler._brackets[i] for tid, i in state["trial_bracket"].items()})
    scheduler._num_stopped = state.get("num_stopped", 0)


def knows_trial(scheduler, trial_id: str) -> bool:
    """Whether ASHA has assigned `trial_id` to a bracket."""
    return trial_id in scheduler._trial_info
