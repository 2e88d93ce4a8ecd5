"""The Ray private attributes sweeps.ray_private relies on still exist and mean what it assumes.
A failure here after a Ray upgrade names the attribute to fix in sweeps/ray_private.py."""
from __future__ import annotations

import json
from types import SimpleNamespace

from ray.tune import ResultGrid
from ray.tune.schedulers import AsyncHyperBandScheduler

from sweeps.ray_private import asha_state, knows_trial, restore_asha_state, result_trials


def _asha():
    return AsyncHyperBandScheduler(time_attr="epoch", metric="m", mode="max", max_t=4, grace_period=1, reduction_factor=2)


def test_asha_state_round_trips_through_json():
    asha = _asha()
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    for trial in trials:
        asha.on_trial_add(None, trial)
    for i, trial in enumerate(trials):
        asha.on_trial_result(None, trial, {"epoch": 1, "m": float(i), "training_iteration": 1})
    state = json.loads(json.dumps(asha_state(asha)))
    assert set(state["trial_bracket"]) == {"t0", "t1", "t2"}
    recorded = {tid: value for bracket in state["brackets"] for milestone, rung in bracket if milestone == 1
                for tid, value in rung.items()}
    assert recorded == {"t0": 0.0, "t1": 1.0, "t2": 2.0}  # the rung at epoch 1 holds every trial's value

    fresh = _asha()
    assert not knows_trial(fresh, "t0")
    restore_asha_state(fresh, state)
    assert knows_trial(fresh, "t0") and json.loads(json.dumps(asha_state(fresh))) == state


def test_result_grid_gives_its_trials():
    grid = ResultGrid(SimpleNamespace(trials=[]))
    assert result_trials(grid) == []
