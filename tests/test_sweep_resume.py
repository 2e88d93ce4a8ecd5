"""Kill the sweep driver (SIGKILL, whole process group: Ray dies with it) once a trial has
finished; `beamtune sweep --resume NAME` finishes the sweep without re-running finished trials,
keeps ASHA's rungs (ray#30838) and leaves exactly one settled MLflow run per trial. Ctrl+C and
SIGUSR1 leave a sweep as the kill does; a trial whose worker is killed fails, and `--retry-failed`
(sweep and study) runs it again from its checkpoint."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import processes_with
from storage import tracking

pytestmark = pytest.mark.slow  # starts Ray and MLflow

BEAMTUNE = Path(sys.executable).with_name("beamtune")
TINY = {"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4, "batch_size": 64,
        "patience": 0}


def terminated_trials(directory: Path) -> set[str]:
    """Trials Ray's saved experiment state records as TERMINATED."""
    done = set()
    for path in glob.glob(str(directory / "experiment_state-*.json")):
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for trial_json, _ in state.get("trial_data", []):
            trial = json.loads(trial_json)
            if trial.get("status") == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def test_killed_driver_resumes(tmp_path):
    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db"
    spec = {"name": "r", "task": "synthetic", "stage": "ce", "epochs": 3, "fixed": TINY, "num_samples": 6,
            "max_concurrent": 2, "space": {"lr": {"loguniform": [3.0e-3, 3.0e-2]}}, "search": {"seed": 1},
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(spec))
    tag = f"BEAMTUNE_RESUME_TEST={tmp_path.name}"  # in the environment of every process of the first driver
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local"}
    first_env = {**env, "BEAMTUNE_RESUME_TEST": tmp_path.name}
    common = ["--storage", str(storage), "--tracking-uri", uri, "--num-cpus", "2", "--quiet"]
    directory = storage / "r"

    driver = subprocess.Popen([str(BEAMTUNE), "sweep", str(tmp_path / "r.yaml"), *common], env=first_env,
                              stdout=open(tmp_path / "first.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not terminated_trials(directory):
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    # Trial workers notice their raylet's death only after a moment, and until then may still log;
    # look at the sweep only once every process of the first driver is gone.
    gone_by = time.monotonic() + 60
    while processes_with(tag):
        if time.monotonic() > gone_by:
            for pid in processes_with(tag):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    killed_at = time.time()
    finished = terminated_trials(directory)
    asha_before = json.loads((storage / ".beamtune" / "r" / "asha_state.json").read_text())
    recorded_before = {(i, m, tid) for i, b in enumerate(asha_before["brackets"]) for m, rec in b for tid in rec}

    client = tracking.client(uri)
    sweep_state = json.loads((directory / "beamtune_sweep.json").read_text())
    exp, parent = sweep_state["experiment_id"], sweep_state["parent_run_id"]
    finished_checkpoints = {tid: sorted(p.name for p in directory.glob(f"*{tid}*/checkpoint_*")) for tid in finished}
    assert len(finished) < 6, "the driver was killed too late to test anything"

    # Any command that touches the sweep now shows it for what it is: incomplete, not running.
    best = subprocess.run([str(BEAMTUNE), "best", "--sweep", "r", "--storage", str(storage)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "warning: sweep r is incomplete" in best.stderr and "beamtune sweep --resume r" in best.stderr, best.stderr
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "KILLED" and tracking.INCOMPLETE_TAG in parent_run.data.tags
    assert "RUNNING" not in {r.info.status for r in tracking.child_runs(uri, exp, parent)}
    # The runs as the killed sweep left them: `best` replayed what its trials had journaled but not
    # yet written (a finished trial's end, when MLflow was busy at that moment).
    before = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(uri, exp, parent)}
    assert all(before[tid].info.status == "FINISHED" for tid in finished), {t: r.info.status for t, r in before.items()}

    resumed = subprocess.run([str(BEAMTUNE), "sweep", "--resume", "r", *common], env=env, capture_output=True,
                             text=True, timeout=400)
    (tmp_path / "resumed.log").write_text(resumed.stdout + resumed.stderr)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "sweep r: 6 trials (0 failed)" in resumed.stdout

    after = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(uri, exp, parent)}
    assert len(after) == 6 and len(tracking.child_runs(uri, exp, parent)) == 6  # one run per trial
    assert {r.info.status for r in after.values()} == {"FINISHED"}
    assert client.get_run(parent).info.status == "FINISHED"
    assert tracking.INCOMPLETE_TAG not in client.get_run(parent).data.tags
    for tid in finished:  # not re-run: same run, untouched, same checkpoints
        assert after[tid].info.end_time == before[tid].info.end_time
        assert after[tid].data.tags["beamtune.attempts"] == "1"
        assert sorted(p.name for p in directory.glob(f"*{tid}*/checkpoint_*")) == finished_checkpoints[tid]
    for tid, run in after.items():  # every metric history is one point per epoch, no repeats
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "dev_score")]
        assert sorted(steps) == list(range(1, len(steps) + 1)), (tid, steps)

    # ASHA kept its rungs: the resumed scheduler rewrote its state, and everything recorded before
    # the kill is still there (a scheduler restarted empty, as Ray's is, would have dropped it).
    assert (storage / ".beamtune" / "r" / "asha_state.json").stat().st_mtime > killed_at
    asha_after = json.loads((storage / ".beamtune" / "r" / "asha_state.json").read_text())
    recorded_after = {(i, m, tid) for i, b in enumerate(asha_after["brackets"]) for m, rec in b for tid in rec}
    assert recorded_before and recorded_before <= recorded_after
    assert {tid for _, m, tid in recorded_after if m == 1.0} == set(after)  # all 6 reached the first rung


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1], ids=["ctrl_c", "sigusr1"])
def test_ctrl_c_interrupts_as_a_kill_does(tmp_path, signum):
    """SIGINT (Ctrl+C), or SIGUSR1 (a batch scheduler's warning), to the driver: exit 130 with the
    resume command, the sweep left unfinished (no trials file: Tune's own handlers would have
    reported the stopped trials TERMINATED and the sweep done), MLflow told so; `--resume` then runs
    every trial to its last epoch (checked after SIGINT; the sweep is left the same way)."""
    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db"
    # The trials must not finish before the driver handles the signal. Twice, on a loaded machine
    # (the suite beside trainings, and with the test's own process reniced below Ray's workers,
    # which Ray starts at nice 15), the run exited 0 with "2 trials (0 failed)": the trials had
    # trained all their epochs while this process waited for the CPU. So the trials' workers are
    # stopped (SIGSTOP) before the signal is sent: nothing they do can race it.
    epochs = 12
    spec = {"name": "c", "task": "synthetic", "stage": "ce", "epochs": epochs, "fixed": TINY, "num_samples": 2,
            "max_concurrent": 2, "space": {"lr": {"loguniform": [3.0e-3, 3.0e-2]}}, "search": {"seed": 1},
            "scheduler": {"type": "fifo"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(spec))
    tag = f"BEAMTUNE_CTRL_C_TEST={tmp_path.name}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local", "BEAMTUNE_CTRL_C_TEST": tmp_path.name}
    common = ["--storage", str(storage), "--tracking-uri", uri, "--num-cpus", "2", "--quiet"]
    directory = storage / "c"
    driver = subprocess.Popen([str(BEAMTUNE), "sweep", str(tmp_path / "c.yaml"), *common], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not list(directory.glob("*/checkpoint_000000")):
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no trial made a checkpoint in time"
            time.sleep(0.2)
        stopped = [pid for pid in processes_with(tag) if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ImplicitFunc")]
        assert stopped, "no trial worker found to stop"
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        assert len(terminated_trials(directory)) < 2, "interrupted too late to test anything"
        driver.send_signal(signum)
        out, err = driver.communicate(timeout=120)
    finally:
        for pid in stopped:  # let them be stopped for good, whoever still has to do it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, out[-2000:] + err[-3000:]
    assert err.strip().splitlines()[-1] == ("error: interrupted; the finished trials and the others' checkpoints are "
                                            "kept: continue with `beamtune sweep --resume c`")
    assert not (directory / "beamtune_trials.json").exists()
    state = json.loads((directory / "beamtune_sweep.json").read_text())
    parent = tracking.client(uri).get_run(state["parent_run_id"])
    assert parent.info.status == "KILLED" and "beamtune sweep --resume c" in parent.data.tags[tracking.INCOMPLETE_TAG]
    if signum != signal.SIGINT:
        return

    resumed = subprocess.run([str(BEAMTUNE), "sweep", "--resume", "c", *common], env=env, capture_output=True, text=True,
                             timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "sweep c: 2 trials (0 failed)" in resumed.stdout
    client = tracking.client(uri)
    runs = tracking.child_runs(uri, state["experiment_id"], state["parent_run_id"])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:  # every trial trained all its epochs, none was cut short and called finished
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "dev_score")) == list(range(1, epochs + 1))


RETRY_EPOCHS = 12  # ~1 s each: the kill (after epoch 2) lands well before the end
RETRY_SPEC = {"task": "synthetic", "stage": "ce", "epochs": RETRY_EPOCHS, "fixed": TINY, "num_samples": 2,
              "max_concurrent": 2, "max_failures": 0, "space": {"lr": {"loguniform": [3.0e-3, 3.0e-2]}},
              "search": {"seed": 1}, "scheduler": {"type": "fifo"}}


def run_killing_one_trial(command: list[str], env: dict, directory: Path, tmp_path: Path) -> tuple[int, str, str]:
    """Run `command` (a sweep or study driver) and SIGKILL one trial's worker (as the OOM killer
    would) once both trials are past epoch 2; returns (exit status, stdout, stderr)."""
    tag = f"BEAMTUNE_RETRY_TEST={tmp_path.name}"
    driver = subprocess.Popen(command, env={**env, "BEAMTUNE_RETRY_TEST": tmp_path.name}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while len({p.parent for p in directory.glob("*/checkpoint_*") if p.name != "checkpoint_000000"}) < 2:
            # both trials past epoch 2 (Ray keeps only the latest checkpoints: look for any later one)
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the trials made no second checkpoint in time"
            time.sleep(0.05)
        # The trials' actors, by their process titles ("ray::ImplicitFunc.<method>"; not Ray's own
        # agents, ray::DashboardAgent and ray::RuntimeEnvAgent, whose death takes the node down).
        titles = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in processes_with(tag)}
        workers = [pid for pid, title in titles.items() if title.startswith(b"ray::ImplicitFunc")]
        assert workers, list(titles.values())
        os.kill(workers[0], signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    return driver.returncode, out, err


def check_retried(uri: str, directory: Path, killed: str, other_end: int) -> None:
    """Both trials' runs FINISHED with every epoch once and final scores; the killed trial continued
    from a checkpoint; the other was not run again."""
    state = json.loads((directory / "beamtune_sweep.json").read_text())
    client = tracking.client(uri)
    runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(uri, state["experiment_id"], state["parent_run_id"])}
    assert len(runs) == 2 and {r.info.status for r in runs.values()} == {"FINISHED"}
    # From a checkpoint, not from scratch (which one: the last the driver registered before the kill).
    assert int(runs[killed].data.tags["beamtune.resumed_from_epoch"]) >= 1
    assert next(r.info.end_time for tid, r in runs.items() if tid != killed) == other_end
    for run in runs.values():
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "dev_score"))
        assert steps == list(range(1, RETRY_EPOCHS + 1))
        assert "final.test.greedy.score" in run.data.metrics


def killed_trial(uri: str, directory: Path) -> tuple[str, int]:
    """(The errored trial's id, the other trial's run end time), checking the errored run is FAILED."""
    statuses = json.loads((directory / "beamtune_trials.json").read_text())
    killed = next(tid for tid, status in statuses.items() if status == "ERROR")
    state = json.loads((directory / "beamtune_sweep.json").read_text())
    runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in tracking.child_runs(uri, state["experiment_id"], state["parent_run_id"])}
    assert runs[killed].info.status == "FAILED"
    return killed, next(r.info.end_time for tid, r in runs.items() if tid != killed)


def test_retry_failed_reruns_errored_trials_from_their_last_checkpoint(tmp_path):
    """A trial whose worker died with no retries left ends in ERROR; `--resume --retry-failed` runs
    it again from its last checkpoint, in its own MLflow run, to its last epoch, and leaves the
    finished trial alone."""
    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "f.yaml").write_text(yaml.safe_dump({"name": "f", **RETRY_SPEC}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local"}
    common = ["--storage", str(storage), "--tracking-uri", uri, "--num-cpus", "2", "--quiet"]
    code, out, err = run_killing_one_trial([str(BEAMTUNE), "sweep", str(tmp_path / "f.yaml"), *common], env,
                                           storage / "f", tmp_path)
    assert code == 0 and "sweep f: 2 trials (1 failed)" in out, out[-2000:] + err[-3000:]
    killed, other_end = killed_trial(uri, storage / "f")

    retried = subprocess.run([str(BEAMTUNE), "sweep", "--resume", "f", "--retry-failed", *common], env=env,
                             capture_output=True, text=True, timeout=400)
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert "sweep f: 2 trials (0 failed)" in retried.stdout
    check_retried(uri, storage / "f", killed, other_end)


def test_study_run_retry_failed(tmp_path):
    """A study stage that finished with a failed trial is skipped when the study runs again, and
    with --retry-failed its failed trial runs again from its last checkpoint."""
    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "stages": {"ce": {"spec": RETRY_SPEC}}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local"}
    command = [str(BEAMTUNE), "study", "run", str(tmp_path / "s.yaml"), "--storage", str(storage), "--tracking-uri", uri,
               "--num-cpus", "2"]
    code, out, err = run_killing_one_trial(command, env, storage / "s-ce", tmp_path)
    assert code == 0 and "2 trials, 1 failed" in out, out[-2000:] + err[-3000:]
    killed, other_end = killed_trial(uri, storage / "s-ce")

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0 and "stage ce: finished before, skipped" in again.stderr, again.stderr[-3000:]
    retried = subprocess.run([*command, "--retry-failed"], env=env, capture_output=True, text=True, timeout=400)
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert "stage ce: resuming sweep s-ce and retrying its failed trials" in retried.stderr
    check_retried(uri, storage / "s-ce", killed, other_end)


def test_retry_failed_needs_resume(tmp_path):
    result = subprocess.run([str(BEAMTUNE), "sweep", str(tmp_path / "x.yaml"), "--retry-failed"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --retry-failed retries the failed trials of a sweep: use it with --resume NAME"
