"""cluster.yaml's autoscaling, run: Ray's local autoscaling cluster (the "fake multinode" provider,
whose worker nodes are real raylets on this machine and may advertise GPUs that do not exist),
built from cluster.yaml's own `available_node_types`, scaled down to this machine, and a real sweep
whose trials ask for `gpu: 0.25`:

- GPU workers start from zero (min_workers: 0) when the trials ask for GPUs;
- the four trials share one worker's GPU, and no trial runs on the head (it has no GPU);
- the worker is killed mid-trial: the autoscaler replaces it and every trial resumes from its
  checkpoint on the new worker;
- after the sweep the idle worker is scaled down;
- on the fake GPU each trial falls back to the CPU with one logged line instead of crashing.

Why not `ray.cluster_utils.AutoscalingCluster` itself: its `start()` and `shutdown()` run
`ray stop --force`, which kills every Ray process of this user on the machine (other test runs
included), it always uses GCS port 6379, and in the Ray 2.60 wheel the example.yaml it reads is
missing. So this test does what it does (`ray start --head --autoscaling-config` with
RAY_FAKE_CLUSTER=1 and a fake_multinode provider config) on its own ports and temp dir, and stops
exactly the processes it started, by pid.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers import latest_checkpoints, processes_with, sweep_in_thread
from sweeps.ray_private import autoscaler_launching
from sweeps.spec import validate

pytestmark = pytest.mark.slow

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"
FAKE_HEAD_TYPE = "ray.head.default"  # the node type name the fake provider gives its head
# Scaled down to a 2-core machine: CPUs are only a resource count here, but every node costs
# ~300 MB of processes, so at most 2 workers; a worker still fits four 0.25-GPU trials.
WORKER_CPUS, MAX_WORKERS = 2, 2
NODE_STORE = 80 * 1024**2  # object store per node (Ray's minimum is 75 MiB)
IDLE_SECONDS = 6  # idle_timeout_minutes scaled down from cluster.yaml's 10 minutes
TINY = {"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4,
        "batch_size": 128, "patience": 0, "train_limit": 150}
EPOCHS = 12
FALLBACK_LINE = "no usable CUDA; running on the CPU"  # core.device's one-line fallback message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def fake_cluster_config(source: dict, gcs_address: str) -> dict:
    """cluster.yaml's node types and scaling settings for the fake_multinode provider: the head
    type keeps its resources (renamed to the provider's head type), GPU workers keep their GPUs and
    min_workers, CPUs and worker counts are scaled down, and provider/commands are the fake ones."""
    types = source["available_node_types"]
    head = types[source["head_node_type"]]
    node_types = {FAKE_HEAD_TYPE: {"resources": dict(head["resources"]), "node_config": {}, "max_workers": 0}}
    for name, node_type in types.items():
        if name == source["head_node_type"]:
            continue
        resources = dict(node_type["resources"])
        resources["CPU"] = min(resources.get("CPU", WORKER_CPUS), WORKER_CPUS)
        resources["object_store_memory"] = NODE_STORE
        node_types[name] = {"resources": resources, "node_config": {}, "min_workers": node_type.get("min_workers", 0),
                            "max_workers": min(node_type["max_workers"], MAX_WORKERS)}
    return {
        "cluster_name": source["cluster_name"], "max_workers": min(source["max_workers"], MAX_WORKERS),
        "upscaling_speed": source["upscaling_speed"], "idle_timeout_minutes": IDLE_SECONDS / 60,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": node_types, "head_node_type": FAKE_HEAD_TYPE,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class FakeAutoscalingCluster:
    """A head started with `ray start --head --autoscaling-config` (RAY_FAKE_CLUSTER=1); its
    autoscaler launches and terminates worker nodes as local raylets. Every process of it carries
    a unique tag in its environment, so `stop` kills exactly those."""

    def __init__(self, config: dict, port: int, tmp: Path):
        self.config, self.port, self.tmp = config, port, tmp
        self.tag = f"BEAMTUNE_FAKE_CLUSTER={port}"
        self.head: subprocess.Popen | None = None

    def start(self) -> None:
        path = self.tmp / "autoscaling.json"
        path.write_text(json.dumps(self.config))
        head = dict(self.config["available_node_types"][FAKE_HEAD_TYPE]["resources"])
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled",
               "BEAMTUNE_FAKE_CLUSTER": str(self.port)}
        ray = str(Path(sys.executable).with_name("ray"))
        command = [ray, "start", "--head", "--block", f"--port={self.port}", f"--autoscaling-config={path}",
                   f"--num-cpus={int(head.pop('CPU', 0))}", f"--num-gpus={int(head.pop('GPU', 0))}",
                   f"--object-store-memory={NODE_STORE}", "--include-dashboard=false", "--disable-usage-stats",
                   f"--dashboard-agent-listen-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--temp-dir={self.tmp / 'ray'}"]
        self.log = open(self.tmp / "head.log", "w")
        self.head = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.head is not None and self.head.poll() is None:
            self.head.send_signal(signal.SIGTERM)
            try:
                self.head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.head.kill()
        kill(processes_with(self.tag))  # worker nodes the autoscaler started, and anything left over
        self.log.close()

    def node_processes(self, node_id: str) -> list[int]:
        """Every process of one fake worker node (the provider starts it with this id in its env)."""
        return [pid for pid in processes_with(f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}")
                if pid in processes_with(self.tag)]


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def gpu_workers() -> list[dict]:
    return [n for n in alive_nodes() if n["Resources"].get("GPU", 0) > 0]


class NodeWatcher(threading.Thread):
    """Records every node seen alive and its resources (ray.nodes() forgets a dead node's)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.resources: dict[str, dict] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for node in alive_nodes():
                self.resources.setdefault(node["NodeID"], node["Resources"])
            self.stop.wait(0.5)


def wait_for(what: str, condition, timeout: float, thread: threading.Thread | None = None, result=None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if thread is not None:
            assert thread.is_alive(), f"the sweep ended while waiting for {what}: {result}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.5)


@pytest.fixture
def cluster(tmp_path_factory, monkeypatch):
    import ray
    from ray._private.services import get_node_ip_address

    source = yaml.safe_load(CLUSTER_YAML.read_text())
    port = free_port()
    tmp = Path(f"/tmp/bt-as-{port}")  # short: Ray's socket paths must fit in 107 bytes
    tmp.mkdir()
    address = f"{get_node_ip_address()}:{port}"
    fake = FakeAutoscalingCluster(fake_cluster_config(source, address), port, tmp)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.shutdown()
    fake.start()
    try:
        def head_up() -> bool:
            assert fake.head.poll() is None, (tmp / "head.log").read_text()
            return (tmp / "ray" / "session_latest").exists()

        wait_for("the head", head_up, 60)
        for attempt in range(60):  # the head's GCS takes a few seconds to answer
            try:
                ray.init(address=address, log_to_driver=False)
                break
            except ConnectionError:
                assert fake.head.poll() is None, (tmp / "head.log").read_text()
                time.sleep(1)
        yield fake, source
    finally:
        ray.shutdown()
        fake.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_cluster_yaml_autoscales_gpu_workers(cluster, tmp_path):
    import ray

    from storage import tracking

    fake, source = cluster
    workers = {name: t for name, t in fake.config["available_node_types"].items() if name != FAKE_HEAD_TYPE}
    assert any(t["resources"].get("GPU") for t in workers.values()), "cluster.yaml has no GPU worker type"
    assert all(t["min_workers"] == 0 for t in workers.values() if t["resources"].get("GPU"))
    assert not fake.config["available_node_types"][FAKE_HEAD_TYPE]["resources"].get("GPU")

    # Before any demand: only the head.
    assert gpu_workers() == [] and len(alive_nodes()) == 1
    head_id = alive_nodes()[0]["NodeID"]

    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db"
    spec = validate({"name": "autoscale", "task": "synthetic", "stage": "ce", "epochs": EPOCHS, "fixed": TINY,
                     "space": {"lr": {"grid": [0.003, 0.01, 0.02, 0.05]}}, "search": {"algorithm": "grid"},
                     "scheduler": {"type": "fifo"}, "num_samples": 1, "max_failures": 3,
                     "resources": {"cpu": WORKER_CPUS / 4, "gpu": 0.25}}, storage=storage)
    thread, result = sweep_in_thread(spec, storage, uri, start=False)
    watcher = NodeWatcher()
    watcher.start()
    thread.start()

    # A GPU worker is started from zero, and all four trials run on it at once. Meanwhile the
    # autoscaler's report says a node is launching (what the live view names for pending trials).
    directory = storage / "autoscale"
    launching: list[int | None] = []

    def gpu_worker_up():
        launching.append(autoscaler_launching())
        return gpu_workers()

    first = wait_for("a GPU worker", gpu_worker_up, 120, thread, result)
    assert len(first) == 1
    assert max(n or 0 for n in launching) >= 1, launching
    victim = first[0]["NodeID"]
    # All four trials hold a quarter of that one GPU at once (none left for a fifth) while at
    # least one has checkpointed and none has finished: kill the worker under them.
    def four_sharing_and_one_checkpointed():
        latest = latest_checkpoints(directory)
        sharing = ray.cluster_resources().get("GPU") == 1 and ray.available_resources().get("GPU", 0) == 0
        return latest if sharing and latest else None

    seen = wait_for("four trials on the GPU, one checkpointed", four_sharing_and_one_checkpointed, 240, thread, result)
    assert all(info["epoch"] < EPOCHS - 1 for info in seen.values()), "a trial ended before the worker was killed"
    assert {i["attempts"][-1]["node_id"] for i in seen.values()} == {victim}
    pids = fake.node_processes(victim)
    assert pids, "found no process of the GPU worker"
    kill(pids)

    thread.join(timeout=420)
    assert not thread.is_alive(), "the sweep did not finish after the worker was lost"
    assert "error" not in result, repr(result.get("error"))
    outcome = result["outcome"]
    assert outcome.trials == 4 and outcome.errors == 0 and set(outcome.statuses.values()) == {"TERMINATED"}

    # Every trial finished on a replacement GPU worker, never on the head; those that had a
    # checkpoint resumed from it (or the one before, see below), the others restarted from epoch 0.
    final = latest_checkpoints(directory)
    assert len(final) == 4 and {i["epoch"] for i in final.values()} == {EPOCHS}
    # A checkpoint seen on disk may still have been in flight to Ray when the worker died (written,
    # not yet registered): Ray then restores the one before it, so a trial may repeat one epoch.
    for tid, info in final.items():
        nodes = [a["node_id"] for a in info["attempts"]]
        assert head_id not in nodes and nodes[-1] != victim, info["attempts"]
        if tid in seen:
            start = info["attempts"][-1]["start_epoch"]  # >= 1 (from a checkpoint) when 2 were written
            assert nodes[0] == victim and seen[tid]["epoch"] - 1 <= start < EPOCHS, info["attempts"]
        else:  # died before its first checkpoint: only MLflow counts that attempt
            assert nodes == [nodes[-1]] and info["attempts"][0]["start_epoch"] == 0
    replacements = {info["attempts"][-1]["node_id"] for info in final.values()}
    watcher.stop.set()
    assert all(watcher.resources[node].get("GPU", 0) >= 1 for node in replacements | {victim}), watcher.resources
    print(f"killed ...{victim[-5:]} at epochs {sorted(i['epoch'] for i in seen.values())}; "
          f"resumed on {['...' + r[-5:] for r in replacements]}")

    # One MLflow run per trial, all FINISHED.
    runs = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    attempts = {r.data.tags[tracking.TRIAL_TAG]: r.data.tags["beamtune.attempts"] for r in runs}
    # On the victim, then again (a retry may first land on the victim before Ray marks it dead).
    assert all(int(attempts[tid]) >= 2 for tid in seen), attempts

    # The fake GPU: every trial said once that it runs on the CPU, and ran.
    logs = "".join(p.read_text(errors="replace") for p in (fake.tmp / "ray" / "session_latest" / "logs").glob("worker-*"))
    fallbacks = logs.count(FALLBACK_LINE)
    assert fallbacks >= 4, f"expected a CPU-fallback line per trial, found {fallbacks}"

    # Idle GPU workers are scaled down.
    wait_for("idle GPU workers to be removed", lambda: gpu_workers() == [], 120)
