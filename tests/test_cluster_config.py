"""cluster.yaml: valid for Ray's cluster launcher, and the properties the README promises.

`ray up` needs a cloud account, so it cannot run here. These tests load the file the same way
`ray up` does. Ray fills in its defaults and checks the result against its own JSON schema. Then
the tests check what would otherwise fail only on a live cluster.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


class TestClusterYaml:
    def test_ray_accepts_it(self, config):
        from ray.autoscaler._private.util import prepare_config, validate_config

        validate_config(prepare_config(config))  # raises on any schema violation

    def test_cpu_head_and_autoscaling_gpu_workers(self, config):
        types = config["available_node_types"]
        head = types[config["head_node_type"]]
        assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")  # no trials on the head
        gpu = [t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU")]
        assert gpu and all(t["min_workers"] < t["max_workers"] for t in gpu)

    def test_token_auth_on_every_node(self, config):
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            starts = [c for c in config[key] if "ray start" in c]
            assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key

    def test_mlflow_private_and_not_sqlite_on_nfs(self, config):
        server = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
        assert "--host 0.0.0.0" not in server and "hostname -I" in server  # the private address only
        assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in server
        backend = server.split("--backend-store-uri ", 1)[1].split()[0]
        assert backend.startswith("sqlite:///") and "/shared/" not in backend  # SQLite locking is unsafe on NFS
        assert "--artifacts-destination /shared/" in server  # artifacts on the storage every node shares

    def test_installs_beamtune_from_the_mounted_checkout(self, config):
        assert config["file_mounts"]["~/beamtune"] == "."
        assert any("pip install" in c and "~/beamtune" in c for c in config["setup_commands"])
        assert any("BEAMTUNE_SWEEPS=/shared/" in c for c in config["setup_commands"])  # shared sweep storage
