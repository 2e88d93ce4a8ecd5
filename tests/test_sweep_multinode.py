"""A worker node dies under a running trial: Ray's multi-node test cluster (`ray.cluster_utils.Cluster`,
a head and two worker nodes in this process's machine), trials that only fit on the workers (a custom
`slot` resource), and the worker running a trial removed without a graceful shutdown while the sweep
runs. The sweep finishes, the trial continues on the other worker from its last checkpoint, and each
trial keeps exactly one MLflow run, none left RUNNING.

`Cluster.add_node`/`remove_node` install signal handlers, so they must run in the main thread: the
sweep runs in a thread and the test thread kills the node (shared/notes/platform-probe.md, 4a).
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from storage import tracking
from helpers import latest_checkpoints, sweep_in_thread
from sweeps.spec import validate

pytestmark = pytest.mark.slow  # starts Ray and MLflow

TINY = {"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4, "batch_size": 64,
        "patience": 0}
EPOCHS = 12
NODE_STORE = 80 * 1024**2  # object store per node (Ray's minimum is 75 MiB)


@pytest.fixture
def cluster():
    import ray
    from ray._common.utils import reset_ray_address
    from ray.cluster_utils import Cluster

    ray.shutdown()
    c = Cluster(initialize_head=True, connect=False,
                head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": NODE_STORE})
    try:
        workers = [c.add_node(num_cpus=1, resources={"slot": 1}, include_dashboard=False,
                              object_store_memory=NODE_STORE) for _ in range(2)]
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield c, workers
    finally:
        ray.shutdown()
        try:
            c.shutdown()
        finally:
            # Cluster writes $RAY_TMP/ray_current_cluster; a stale one makes a plain ray.init() hang.
            reset_ray_address()


def test_worker_node_lost_mid_trial(cluster, tmp_path):

    c, workers = cluster
    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db"
    spec = validate({"name": "mn", "task": "synthetic", "stage": "ce", "epochs": EPOCHS, "fixed": TINY,
                     "space": {"lr": {"grid": [0.01, 0.02]}}, "search": {"algorithm": "grid"},
                     "scheduler": {"type": "fifo"}, "num_samples": 1, "max_concurrent": 2, "max_failures": 2,
                     "resources": {"cpu": 1, "custom": {"slot": 1}}}, storage=storage)

    thread, result = sweep_in_thread(spec, storage, uri)

    # Wait until a trial has checkpointed a few epochs (and is not near its end), then kill its node.
    directory, deadline = storage / "mn", time.monotonic() + 120
    while True:
        assert thread.is_alive(), f"the sweep ended before a node was removed: {result}"
        assert time.monotonic() < deadline, "no trial reached epoch 3 in time"
        running = {tid: info for tid, info in latest_checkpoints(directory).items() if 3 <= info["epoch"] <= EPOCHS - 4}
        if running:
            victim_id, seen = next(iter(running.items()))
            break
        time.sleep(0.2)
    node_id = seen["attempts"][-1]["node_id"]
    victim_node = next(w for w in workers if w.node_id == node_id)
    c.remove_node(victim_node, allow_graceful=False)  # main thread; SIGKILLs the node's processes

    thread.join(timeout=240)
    assert not thread.is_alive(), "the sweep did not finish after the node was lost"
    assert "error" not in result, repr(result.get("error"))
    outcome = result["outcome"]

    # The sweep finished: both trials ended well, nothing failed.
    assert outcome.trials == 2 and outcome.errors == 0
    assert set(outcome.statuses.values()) == {"TERMINATED"}

    # The killed trial resumed from its last checkpoint on the other worker; the other trial ran once.
    final = latest_checkpoints(directory)
    assert set(final) == set(outcome.statuses) and {info["epoch"] for info in final.values()} == {EPOCHS}
    attempts = final[victim_id]["attempts"]
    assert len(attempts) == 2, attempts
    assert attempts[0]["node_id"] == node_id and attempts[0]["start_epoch"] == 0
    resumed = attempts[1]
    print(f"killed at epoch >= {seen['epoch']}: attempts {[(a['node_id'][:8], a['start_epoch']) for a in attempts]}")
    assert resumed["node_id"] != node_id and resumed["node_id"] in {w.node_id for w in workers}
    # Its last checkpoint at the kill: at least the one seen just before it, never from scratch.
    assert seen["epoch"] <= resumed["start_epoch"] < EPOCHS
    for tid, info in final.items():
        if tid != victim_id:
            assert len(info["attempts"]) == 1 and info["attempts"][0]["node_id"] != node_id

    # Exactly one MLflow run per trial, all FINISHED; the moved trial's run has every epoch once.
    runs = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    assert sorted(r.data.tags[tracking.TRIAL_TAG] for r in runs) == sorted(outcome.statuses)
    assert {r.info.status for r in runs} == {"FINISHED"}
    client = tracking.client(uri)
    for run in runs:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "dev_score"))
        assert steps == list(range(1, EPOCHS + 1)), steps
        if run.data.tags[tracking.TRIAL_TAG] == victim_id:
            assert run.data.tags["beamtune.attempts"] == "2"
            assert run.data.tags["beamtune.resumed_from_epoch"] == str(resumed["start_epoch"])
        else:
            assert run.data.tags["beamtune.attempts"] == "1"
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"
