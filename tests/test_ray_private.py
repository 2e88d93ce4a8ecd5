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


def test_autoscaler_status_is_read_as_ray_status_writes_it():
    """The v1 autoscaler's status JSON: `autoscaler_report` is asdict(AutoscalerSummary) (monitor.py)."""
    from dataclasses import asdict

    from ray.autoscaler._private.autoscaler import AutoscalerSummary

    from sweeps.ray_private import parse_autoscaler_status

    summary = AutoscalerSummary(active_nodes={"head": 1}, idle_nodes=None, pending_launches={"gpu_worker": 2},
                                pending_nodes=[("10.0.0.3", "gpu_worker", "setting-up")], failed_nodes=[])
    raw = json.dumps({"load_metrics_report": {}, "autoscaler_report": asdict(summary)}).encode()
    assert parse_autoscaler_status(raw) == 3
    idle = AutoscalerSummary(active_nodes={"head": 1}, idle_nodes=None, pending_launches={}, pending_nodes=[],
                             failed_nodes=[])
    assert parse_autoscaler_status(json.dumps({"autoscaler_report": asdict(idle)})) == 0
    assert parse_autoscaler_status(json.dumps({"load_metrics_report": {}})) is None  # a head without an autoscaler
    assert parse_autoscaler_status(None) is None
