"""What a sweep, study or report says when the MLflow store or the Ray cluster it names is not
there: one line naming the URI or address and what to do, exit 2, never MLflow's retry traceback
nor a silent wait, and nothing half-made left behind (a new sweep whose Ray did not start can be
run again as it was). Real MLflow stores, real sockets, a real `ray start --head` with token
authentication for the cluster that answers but will not take a driver."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage import tracking
from storage.db import TrackingStoreError
from sweeps.launch import SweepError, check_ray_address

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SPEC = "name: s\ntask: synthetic\nstage: ce\nepochs: 1\nfixed: {encoder_hidden: 8, decoder_hidden: 8, label_dim: 8}\n"


def free_port() -> int:
    """A port nothing listens on (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def beamtune(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([str(BIN / "beamtune"), *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=300)


def one_error(done: subprocess.CompletedProcess) -> str:
    """The single `error:` line of a command that must fail with exit 2 and no traceback."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


class TestAnswering:
    def test_a_server_that_is_not_running_is_named(self):
        uri = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(TrackingStoreError) as caught:
            with tracking.answering(uri):
                tracking.ensure_experiment(uri, "e")
        message = str(caught.value)
        assert uri in message and "connection refused" in message and "--tracking-uri" in message
        assert "\n" not in message

    def test_other_refusals_carry_mlflow_code(self, tmp_path):
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        with pytest.raises(TrackingStoreError, match="RESOURCE_DOES_NOT_EXIST"):
            with tracking.answering(uri):
                tracking.client(uri).get_run("0" * 32)

    def test_other_errors_pass_through(self):
        with pytest.raises(KeyError):
            with tracking.answering("sqlite:///unused.db"):
                raise KeyError("not MLflow's")


class TestReopen:
    def test_a_run_the_store_does_not_hold(self, tmp_path):
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        tracking.ensure_experiment(uri, "e")  # a store, without the run
        with pytest.raises(tracking.RunNotFound, match=f"run {'a' * 32} is not in the store at {uri}"):
            tracking.reopen(uri, "a" * 32)

    def test_a_deleted_run(self, tmp_path):
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        run_id = tracking.start_parent(uri, tracking.ensure_experiment(uri, "e"), "s", {}, "name: s\n")
        tracking.delete_run(uri, run_id)
        with pytest.raises(tracking.RunNotFound, match="was deleted"):
            tracking.reopen(uri, run_id)

    def test_a_killed_run_runs_again_unmarked(self, tmp_path):
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        experiment_id = tracking.ensure_experiment(uri, "e")
        run_id = tracking.start_parent(uri, experiment_id, "s", {}, "name: s\n")
        tracking.mark_incomplete(uri, experiment_id, run_id, "driver gone")
        tracking.reopen(uri, run_id)
        run = tracking.client(uri).get_run(run_id)
        assert run.info.status == "RUNNING" and tracking.INCOMPLETE_TAG not in run.data.tags


class TestCheckRayAddress:
    def test_nothing_listening(self):
        address = f"127.0.0.1:{free_port()}"
        with pytest.raises(SweepError, match=f"nothing answers at the Ray address {address} .*ray start --head"):
            check_ray_address(address)

    def test_something_listening(self):
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            check_ray_address(f"127.0.0.1:{server.getsockname()[1]}")
            check_ray_address(f"ray://127.0.0.1:{server.getsockname()[1]}")

    def test_names_ray_resolves_itself(self):
        check_ray_address("auto")


@pytest.mark.slow
def test_sweep_with_no_tracking_server(tmp_path):
    (tmp_path / "s.yaml").write_text(SPEC)
    uri = f"http://127.0.0.1:{free_port()}"
    done = beamtune(["sweep", "s.yaml", "--storage", "sweeps", "--tracking-uri", uri, "--num-cpus", "1", "--quiet"],
                    tmp_path, RAY_ADDRESS="local")
    assert uri in one_error(done)


@pytest.mark.slow
def test_sweep_with_no_ray_head_leaves_nothing_half_made(tmp_path):
    (tmp_path / "s.yaml").write_text(SPEC)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweep", "s.yaml", "--storage", "sweeps", "--tracking-uri", uri, "--quiet"]
    address = f"127.0.0.1:{free_port()}"
    assert f"nothing answers at the Ray address {address}" in one_error(beamtune(args, tmp_path, RAY_ADDRESS=address))
    assert not (tmp_path / "sweeps" / "s" / "beamtune_sweep.json").exists()
    runs = tracking.client(uri).search_runs([tracking.ensure_experiment(uri, "beamtune")])
    assert runs == []  # the parent run made meanwhile was deleted (deleted runs are not listed)
    done = beamtune([*args, "--num-cpus", "1"], tmp_path, RAY_ADDRESS="local")  # the same sweep, now it can run
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_study_whose_run_is_gone_from_the_store(tmp_path):
    study = tmp_path / "q.yaml"
    study.write_text(f"name: q\nstages:\n  a:\n    spec:\n{''.join('      ' + line + chr(10) for line in SPEC.splitlines())}")
    state = tmp_path / "sweeps" / ".studies" / "q" / "beamtune_study.json"
    state.parent.mkdir(parents=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state.write_text(f'{{"tracking_uri": "{uri}", "experiment_id": "1", "run_id": "{"b" * 32}"}}')
    done = beamtune(["study", "run", str(study), "--storage", "sweeps", "--tracking-uri", uri, "--num-cpus", "1"],
                    tmp_path, RAY_ADDRESS="local")
    line = one_error(done)
    assert f"study q: its MLflow run {'b' * 32} is not in the store at {uri}" in line and str(state.parent) in line


@pytest.mark.slow
def test_report_with_no_tracking_server(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    assert uri in one_error(beamtune(["report", "--sweep", "s", "--tracking-uri", uri, "--out", "r"], tmp_path))


@pytest.mark.slow
def test_cluster_with_token_authentication_and_a_driver_without(tmp_path):
    port = free_port()
    # --block in a session of its own: the test stops this head alone (`ray stop` would stop every
    # Ray of the user's on the machine).
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
                             "--include-dashboard=false", "--disable-usage-stats"], env={**os.environ, "RAY_AUTH_MODE": "token"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not listening(port):
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        (tmp_path / "s.yaml").write_text(SPEC)
        done = beamtune(["sweep", "s.yaml", "--storage", "sweeps", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                         "--quiet"], tmp_path, RAY_ADDRESS=f"127.0.0.1:{port}", RAY_AUTH_MODE="disabled")
        assert f"cannot join the Ray cluster at 127.0.0.1:{port}" in (line := one_error(done))
        assert "RAY_AUTH_MODE=token" in line and not (tmp_path / "sweeps" / "s" / "beamtune_sweep.json").exists()
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_an_interrupted_sweep_is_reported_while_mlflow_does_not_answer(tmp_path):
    from sweeps.launch import note_incomplete

    folder = tmp_path / "s"
    folder.mkdir()
    uri = f"http://127.0.0.1:{free_port()}"
    (folder / "beamtune_sweep.json").write_text(f'{{"tracking_uri": "{uri}", "experiment_id": "1", "parent_run_id": "{"c" * 32}"}}')
    reason = note_incomplete("s", tmp_path)
    assert reason.startswith("its driver stopped before the sweep ended; continue it with `beamtune sweep --resume s`")
    assert f"(not marked in MLflow: MLflow tracking at {uri} does not answer" in reason
