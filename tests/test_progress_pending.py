"""The compact live view (sweeps.progress) says what waits for resources: on a real local Ray of
2 CPUs, two trials that each ask for both CPUs, so one is PENDING while the other runs."""
from __future__ import annotations

import re
import time

import pytest

from sweeps.progress import CompactProgress

pytestmark = pytest.mark.slow  # starts Ray


def test_pending_trial_is_named_with_its_request_and_wait(ray_local, tmp_path):
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
