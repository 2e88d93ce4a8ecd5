"""Every Ray private attribute beamtune reads or writes, behind one small adapter.

Ray has no public API for two things beamtune needs:

- the `Trial` objects (ids and statuses) of a finished `ResultGrid` (`ResultGrid._experiment_analysis`);
- ASHA's state, to keep it across a driver restart (ray#30838: `Tuner.restore` does not save the
  scheduler): `AsyncHyperBandScheduler._brackets`, each bracket's `_rungs` (a list of
  (milestone, {trial id: value})), `_trial_info` (trial id -> bracket) and `_num_stopped`;
- what the autoscaler is doing (`ray status` reads it the same way): the v1 autoscaler's report in
  the GCS internal KV (`ray_constants.DEBUG_AUTOSCALING_STATUS`, JSON: `autoscaler_report` is
  `asdict(AutoscalerSummary)`, with `pending_launches` {node type: count} and `pending_nodes`
  [(ip, node type, status)]).

tests/test_ray_private.py builds the real Ray objects and fails, naming the attribute, when a Ray
upgrade renames or reshapes any of them.
"""
from __future__ import annotations

import json
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


def parse_autoscaler_status(raw: bytes | str | None) -> int | None:
    """Nodes the autoscaler is launching (requested, or started and not yet up), from its status
    JSON; None when there is no autoscaler report (no autoscaler, or not yet reported)."""
    if not raw:
        return None
    report = json.loads(raw).get("autoscaler_report")
    if not report:
        return None
    return sum(report.get("pending_launches", {}).values()) + len(report.get("pending_nodes", []))


def autoscaler_launching() -> int | None:
    """`parse_autoscaler_status` of the cluster this driver is connected to."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    if not _internal_kv_initialized():
        return None
    return parse_autoscaler_status(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS))
