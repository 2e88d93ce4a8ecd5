"""MLflow: one parent run per sweep, one nested child run per trial, reopened by id.

Tracking URI: the flag, else `MLFLOW_TRACKING_URI`, else a SQLite file `mlflow.db` in the working
directory (made absolute, because trials run with their trial folder as working directory). A
SQLite file is created or migrated by one process at a time and checked first (storage.db).

Every write to a trial's run, and the driver's last writes to the parent, go through a journal
(storage.spool) in the sweep storage and are replayed from there in order: a tracking server that
is down costs a trial nothing but a delayed replay, the driver says so once and, if it is still
down when the sweep ends, names `beamtune sync`. HTTP clients give up after seconds, not MLflow's
minutes of retries (`HTTP_CLIENT_DEFAULTS`, unless the environment sets them). Starting a sweep
(experiment, parent run) still needs the tracking store to answer (`answering`: one line if not).

Only `MlflowClient` is used (never the fluent `mlflow.start_run` state), so trials that share a
reused Ray actor, and the driver's callback threads, cannot mix up active runs.
"""
from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from storage import db
from storage.spool import Spool, spools

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "beamtune.trial_id"
SWEEP_TAG = "beamtune.sweep"
STUDY_TAG = "beamtune.study"
BEST_TAG = "beamtune.best"  # "true" on the best trial's run of a sweep
STOPPED_TAG = "beamtune.early_stopped"
INCOMPLETE_TAG = "beamtune.incomplete"  # on a sweep's parent run whose driver is gone: why, and how to resume
ERROR_TAG = "beamtune.error"
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description (markdown) in the MLflow UI
CHECKPOINT_ARTIFACT = "best_checkpoint"
FINAL_PREFIX = "final"  # a trial's best checkpoint scored on dev and test: metrics final.<split>.<decoder>.<metric>
FINAL_KEYS = ("dev", "test", "best_epoch")  # what of core.train.train's result goes under FINAL_PREFIX
ATTEMPTS_TAG = "beamtune.attempts"
MAX_MESSAGE = 4000
# MLflow's own defaults (7 retries with exponential backoff, 120 s timeout) block a call for
# minutes when the server is down; a journaled write loses nothing by failing fast instead.
HTTP_CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# After a failed replay a writer tries again at its first write RETRY_AFTER_S later, doubling the
# wait after each further failure up to RETRY_MAX_S: a server that hangs instead of refusing costs a
# trial at most (1 + retries) * timeout seconds every RETRY_MAX_S.
RETRY_AFTER_S, RETRY_MAX_S = 10.0, 80.0
PARENT_SPOOL = "_parent"
REPLAY_WAIT_S = 120.0  # how long the driver's last replay waits for a trial that is still replaying


def resolve_tracking_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).absolute())
    elif "://" not in uri:  # a plain folder
        uri = str(Path(uri).absolute())
    return uri


def ui_command(uri: str) -> str:
    """The command that shows these runs in the MLflow UI."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}/#/experiments (the tracking server's UI)"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
    db.ensure_store(uri)  # a SQLite file: created or migrated by one process at a time
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """Create (or find) the experiment, which also creates a fresh database; returns its id."""
    c = client(uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:") or uri.startswith("/"):
        # Beside the database, not relative to whichever working directory a trial has.
        base = Path(uri[len("sqlite:///"):]).parent if uri.startswith("sqlite:") else Path(uri)
        artifact_location = (base / "mlartifacts").as_uri()
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created meanwhile by another driver
        experiment = c.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_parent(uri: str, experiment_id: str, sweep: str, tags: dict[str, str], spec_yaml: str) -> str:
    c = client(uri)
    run = c.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: sweep, **tags})
    c.log_text(run.info.run_id, spec_yaml, "spec.yaml")
    return run.info.run_id


def start_study(uri: str, experiment_id: str, study: str, study_yaml: str, overrides: list[str]) -> str:
    """The run a study's stage sweeps nest under; the study file is its artifact."""
    c = client(uri)
    tags = {STUDY_TAG: study, "beamtune.overrides": " ".join(overrides) or "none",
            "mlflow.source.git.commit": git_commit() or "unknown"}
    run = c.create_run(experiment_id, run_name=f"study {study}", tags=tags)
    c.log_text(run.info.run_id, study_yaml, "study.yaml")
    return run.info.run_id


def update_study(uri: str, run_id: str, study_yaml: str, overrides: list[str]) -> None:
    """A study run again (resumed, or continued with other `--set` overrides): its run shows the
    latest invocation's study file and overrides, which the report's header states; the earlier
    overrides stay readable in `beamtune.overrides.previous`, since finished stages ran under them."""
    c = client(uri)
    now, before = " ".join(overrides) or "none", c.get_run(run_id).data.tags.get("beamtune.overrides", "none")
    if now != before:
        c.set_tag(run_id, "beamtune.overrides.previous", before)
        c.set_tag(run_id, "beamtune.overrides", now)
    c.log_text(run_id, study_yaml, "study.yaml")


def log_sweep_params(uri: str, run_id: str, fixed: dict[str, Any], space: dict[str, str]) -> None:
    """The sweep's fixed values and its search space (one param per searched parameter, e.g.
    `space.lr = loguniform [0.001, 0.01]`) on its parent run, so the UI shows what was searched."""
    from mlflow.entities import Param

    params = {**{f"fixed.{k}": v for k, v in flatten("", fixed, {}).items()}, **{f"space.{k}": v for k, v in space.items()}}
    batch = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(batch), 100):
        client(uri).log_batch(run_id, params=batch[i:i + 100])


def mark_best(uri: str, directory: Path, trial_id: str, run_id: str) -> None:
    """Tag the best trial's run (BEST_TAG), through its journal like every trial write."""
    run = {"run_id": run_id, "trial_id": trial_id}
    JournaledRun(uri, Spool(directory, trial_id), run).write("tags", tags={BEST_TAG: "true"})


def mark_incomplete(uri: str, experiment_id: str, parent_run_id: str, reason: str) -> None:
    """A sweep whose driver is gone: its parent and every trial run still RUNNING become KILLED, and
    the parent says why and how to continue (INCOMPLETE_TAG), so the UI does not show them running."""
    c = client(uri)
    for run in [c.get_run(parent_run_id), *child_runs(uri, experiment_id, parent_run_id)]:
        if run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, status="KILLED")
    c.set_tag(parent_run_id, INCOMPLETE_TAG, reason)


def attach_report(uri: str, run_id: str, files: list[Path], artifact_path: str, description: str) -> None:
    """A report's files as artifacts of a run, and its Markdown as the run's description. Straight to
    MLflow, not journaled: a report is made from MLflow, so the store is there."""
    c = client(uri)
    for path in files:
        c.log_artifact(run_id, str(path), artifact_path)
    c.set_tag(run_id, DESCRIPTION_TAG, description)


class RunNotFound(db.TrackingStoreError):
    """A run that a sweep or study recorded is not in the store it ran against (cleared, replaced
    or the run deleted since): resuming would write to nothing."""


@contextlib.contextmanager
def answering(uri: str):
    """Around a command's MLflow setup (experiment, parent run, reopening): MLflow's failures as one
    TrackingStoreError line naming the store, not the HTTP client's retry traceback. A server that
    is not running is the usual cause; its URI and the option that changes it are what one needs."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        message = str(error.message)
        if "Connection refused" in message or "Failed to establish" in message:
            reason = "does not answer (connection refused): start its server, or"
        elif "timed out" in message.lower():
            reason = "does not answer (timed out): check its server, or"
        else:
            reason = f"refused a request ({error.error_code}: {message.splitlines()[0][:200]}):"
        raise db.TrackingStoreError(f"MLflow tracking at {uri} {reason} give another store with --tracking-uri "
                                    f"or MLFLOW_TRACKING_URI") from error


def reopen(uri: str, run_id: str) -> None:
    """A resumed sweep's (or study's) run: RUNNING again, no longer marked incomplete. RunNotFound
    when the store does not hold it."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        run = c.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RunNotFound(f"MLflow run {run_id} is not in the store at {uri}") from error
    if run.info.lifecycle_stage == "deleted":
        raise RunNotFound(f"MLflow run {run_id} was deleted from the store at {uri}")
    c.update_run(run_id, status="RUNNING")
    if INCOMPLETE_TAG in run.data.tags:
        c.delete_tag(run_id, INCOMPLETE_TAG)


def end_run(uri: str, run_id: str, status: str = "FINISHED", message: str | None = None) -> None:
    c = client(uri)
    if message:
        c.set_tag(run_id, ERROR_TAG, message[:MAX_MESSAGE])
    c.set_terminated(run_id, status=status)


def delete_run(uri: str, run_id: str) -> None:
    client(uri).delete_run(run_id)


def log_summary(uri: str, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Metrics and tags on a (parent) run, at step 0."""
    c = client(uri)
    for key, value in metrics.items():
        c.log_metric(run_id, key, value)
    for key, value in tags.items():
        c.set_tag(run_id, key, value)


def run_tag(uri: str, run_id: str, key: str, default: str | None = None) -> str | None:
    return client(uri).get_run(run_id).data.tags.get(key, default)


def logged_steps(uri: str, run_id: str, key: str) -> set[int]:
    """The steps at which metric `key` of a run was logged."""
    return {m.step for m in client(uri).get_metric_history(run_id, key)}


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    return client(uri).search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                   max_results=10_000)


def find_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str):
    runs = client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=10)
    return runs[0] if runs else None


def flatten(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value
    return out


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The loggable metrics (numbers; NaN/inf kept, MLflow stores them) of a possibly nested dict."""
    flat = flatten("", metrics, {})
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# Short names in trial labels for the parameters sweeps search most.
LABEL_NAMES = {"encoder_hidden": "H", "decoder_hidden": "Hdec", "label_dim": "Ldim", "dropout": "drop", "beam_size": "k"}


def trial_label(stage: str, params: dict[str, Any], searched: list[str]) -> str:
    """A readable run name: the stage and the trial's searched values, e.g. `ce lr=0.0023 H=32 seed=161`."""
    def value(v: Any) -> str:
        return f"{v:.2g}" if isinstance(v, float) else str(v)

    names = [k for k in searched if k in params and k != "seed"] + (["seed"] if "seed" in params else [])
    return " ".join([stage] + [f"{LABEL_NAMES.get(k, k)}={value(params[k])}" for k in names])


# ----------------------------------------------------------------------------------------------
# Journaled writes: every write to a trial's run (and the driver's final writes to the parent) is
# appended to a storage.spool journal first and replayed from there, in order.


def spool_dir(sweep_directory: str | os.PathLike) -> Path:
    """The journals of a sweep: beside its Ray folder in the sweep storage (which every node shares),
    not inside it (Ray syncs that folder from the driver's staging copy)."""
    directory = Path(sweep_directory)
    return directory.parent / ".beamtune" / directory.name / "spool"


def _resolve_run(uri: str, run: dict[str, Any]) -> str:
    """The run a journal writes to: by id, else the trial's run found by its tags, else a new one
    (found, not created again, when a replay is repeated after a crash)."""
    if run.get("run_id"):
        return run["run_id"]
    existing = find_trial_run(uri, run["experiment_id"], run["parent_run_id"], run["trial_id"])
    if existing is not None:
        return existing.info.run_id
    created = client(uri).create_run(run["experiment_id"], run_name=run["trial_name"],
                                     tags={PARENT_TAG: run["parent_run_id"], TRIAL_TAG: run["trial_id"]})
    return created.info.run_id


# MLflow's answers that replaying the same operation again cannot change (a changed parameter
# value, a run deleted meanwhile): the operation is set aside in KEY.rejected, with one line on
# stderr, so that it does not hold back every later one. Anything else is retried later.
REJECTED_CODES = ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")


def apply_op(uri: str, spool: Spool, op: dict[str, Any], state: dict[str, Any]) -> None:
    """Send one journaled operation to MLflow (see Spool.replay)."""
    from mlflow.exceptions import MlflowException

    try:
        _apply(uri, spool, op, state)
    except MlflowException as error:
        if error.error_code not in REJECTED_CODES:
            raise
        line = f"{spool.key} operation {op['seq']} ({op['op']}) rejected by MLflow: {error.message}".splitlines()[0]
        with open(spool.directory / f"{spool.key}.rejected", "a") as handle:
            handle.write(line + "\n")
        print(f"beamtune: {line}", file=sys.stderr, flush=True)


def _apply(uri: str, spool: Spool, op: dict[str, Any], state: dict[str, Any]) -> None:
    from mlflow.entities import Metric, Param, RunTag

    c = client(uri)
    if state.get("run_id") is None:
        if "run" not in op:
            raise ValueError(f"{spool.path}: operation {op['seq']} has no run to write to")
        state["run_id"] = _resolve_run(uri, op["run"])
    run_id, kind = state["run_id"], op["op"]
    if kind == "open":  # a trial (re)starts in its run: RUNNING, its tags, no error of a retried attempt
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["run"].get("tags", {}).items()])
        run = c.get_run(run_id)
        if run.info.status != "RUNNING" or run.info.run_name != op["run"]["trial_name"]:
            # The trial's own name (tracking.trial_label), also when the driver's journal created the run.
            c.update_run(run_id, status="RUNNING", name=op["run"]["trial_name"])
        if ERROR_TAG in run.data.tags:
            c.delete_tag(run_id, ERROR_TAG)
    elif kind == "params":  # values already there are skipped (MLflow refuses a changed value)
        existing = c.get_run(run_id).data.params
        new = [Param(k, v) for k, v in op["params"].items() if k not in existing]
        for i in range(0, len(new), 100):
            c.log_batch(run_id, params=new[i:i + 100])
    elif kind == "metrics":  # the journaled timestamp: a repeated replay is an identical row
        batch = [Metric(k, v, op["timestamp"], op["step"]) for k, v in op["metrics"].items()]
        for i in range(0, len(batch), 1000):
            c.log_batch(run_id, metrics=batch[i:i + 1000])
    elif kind == "tags":
        c.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
    elif kind == "files":
        for name in op["files"]:
            c.log_artifact(run_id, str(spool.files_dir / str(op["seq"]) / name), op["artifact_path"])
    elif kind == "finish":
        if op.get("message"):
            c.set_tag(run_id, ERROR_TAG, op["message"])
        c.set_terminated(run_id, status=op["status"])
    else:
        raise ValueError(f"{spool.path}: unknown operation {kind!r} (seq {op['seq']})")


class JournaledRun:
    """Writes to one MLflow run through its journal. Each write is appended (durably), then the
    pending operations are replayed unless the last replay failed recently (RETRY_AFTER_S, with
    backoff); nothing here raises because tracking is down."""

    def __init__(self, uri: str, spool: Spool, run: dict[str, Any]):
        self.uri, self.spool, self.run = uri, spool, run
        self._retry_at, self._failures = 0.0, 0

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, once a replay has reached MLflow (None until then)."""
        return self.spool.state().get("run_id") or self.run.get("run_id")

    def write(self, op: str, files: list[Path] | None = None, flush: bool = True, **payload: Any) -> int:
        seq = self.spool.append(op, files=files, run=self.run, **payload)
        if flush:
            self.flush()
        return seq

    def flush(self, force: bool = False, wait: float = 0.0) -> bool | None:
        """Replay what is pending (see Spool.replay for `wait` and the result)."""
        if not force and time.monotonic() < self._retry_at:
            return False
        done = self.spool.replay(functools.partial(apply_op, self.uri, self.spool), wait=wait)
        if done is False:
            self._failures += 1
            self._retry_at = time.monotonic() + min(RETRY_AFTER_S * 2 ** (self._failures - 1), RETRY_MAX_S)
        else:
            self._failures, self._retry_at = 0, 0.0
        return done

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        values = numeric(metrics)
        if values:
            self.write("metrics", metrics=values, step=step, timestamp=int(time.time() * 1000))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.write("tags", tags={k: str(v) for k, v in tags.items()})

    def log_files(self, files: list[Path], artifact_path: str) -> None:
        self.write("files", files=[Path(f) for f in files], artifact_path=artifact_path)

    def finish(self, status: str = "FINISHED", message: str | None = None) -> None:
        """End the run; the trial's last chance to replay, so it tries even right after a failure."""
        self.write("finish", flush=False, status=status, message=message[:MAX_MESSAGE] if message else None)
        self.flush(force=True)


class TrialRun(JournaledRun):
    """A trial's child run. `open` journals a (re)start in the trial's one run: the run whose id the
    checkpoint holds, else the one tagged with the trial id, else a new one (retry, resume, node
    loss: a trial always has exactly one run). The journal is keyed by the trial id."""

    @classmethod
    def open(cls, uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
             run_id: str | None, tags: dict[str, str], spool_directory: str | os.PathLike) -> "TrialRun":
        run = {"experiment_id": experiment_id, "parent_run_id": parent_run_id, "trial_id": trial_id,
               "trial_name": trial_name, "run_id": run_id, "tags": {k: str(v) for k, v in tags.items()}}
        trial_run = cls(uri, Spool(spool_directory, trial_id), run)
        trial_run.write("open")
        return trial_run

    def log_params(self, params: dict[str, Any]) -> None:
        flat = flatten("", params, {})
        self.write("params", params={k: str(v)[:6000] for k, v in sorted(flat.items())})

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which this trial's run has `key` (journaled: in MLflow or on its way)."""
        return {op["step"] for op in self.spool.ops() if op["op"] == "metrics" and key in op["metrics"]}


# ----------------------------------------------------------------------------------------------
# The driver's side: attempts, runs a trial could not end itself, the parent's summary, replays.


def _driver_run(uri: str, directory: Path, experiment_id: str, parent_run_id: str, trial_id: str,
                trial_name: str) -> JournaledRun:
    run = {"experiment_id": experiment_id, "parent_run_id": parent_run_id, "trial_id": trial_id,
           "trial_name": trial_name, "run_id": None}
    return JournaledRun(uri, Spool(directory, trial_id), run)


def record_start(uri: str, directory: Path, experiment_id: str, parent_run_id: str, trial_id: str,
                 trial_name: str) -> int:
    """Count a start of the trial (Ray started its actor: first run, retry, resume), before the
    trial can fail; returns the count, which goes to the run's ATTEMPTS_TAG. Not replayed here: the
    driver does not wait on tracking, the trial replays it with its first write."""
    run = _driver_run(uri, directory, experiment_id, parent_run_id, trial_id, trial_name)
    count = 1 + sum(1 for op in run.spool.ops() if op["op"] == "tags" and ATTEMPTS_TAG in op["tags"])
    run.write("tags", flush=False, tags={ATTEMPTS_TAG: str(count)})
    return count


def settled(spool: Spool) -> bool:
    """Whether the trial's latest start is followed by a `finish` in its journal."""
    ops = spool.ops()
    for op in reversed(ops):
        if op["op"] == "finish":
            return True
        if op["op"] == "open" or (op["op"] == "tags" and ATTEMPTS_TAG in op["tags"]):
            return False
    return False


def settle(uri: str, directory: Path, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
           status: str, message: str | None = None, stopped: bool = False, files: list[Path] | None = None) -> bool:
    """End a trial's run that the trial could not end itself (stopped while its thread was gone,
    lost with its node, killed with the driver); journaled, replayed later. False if already ended."""
    run = _driver_run(uri, directory, experiment_id, parent_run_id, trial_id, trial_name)
    if settled(run.spool):
        return False
    if stopped:
        run.write("tags", flush=False, tags={STOPPED_TAG: "true"})
    if files:
        run.write("files", flush=False, files=files, artifact_path=CHECKPOINT_ARTIFACT)
    run.write("finish", flush=False, status=status, message=message[:MAX_MESSAGE] if message else None)
    return True


def final_metrics(final: dict[str, Any]) -> dict[str, Any]:
    """The part of core.train.train's result a trial's run gets as `final.*` metrics."""
    return {FINAL_PREFIX: {k: v for k, v in final.items() if k in FINAL_KEYS}}


def has_final_scores(directory: Path, trial_id: str) -> bool:
    """Whether the trial's journal holds its best checkpoint's final scores (in MLflow or on their way)."""
    prefix = FINAL_PREFIX + "."
    return any(op["op"] == "metrics" and any(k.startswith(prefix) for k in op["metrics"])
               for op in Spool(directory, trial_id).ops())


def log_stopped_scores(uri: str, directory: Path, experiment_id: str, parent_run_id: str, trial_id: str,
                       trial_name: str, final: dict[str, Any], metrics_json: Path) -> None:
    """A stopped trial's best checkpoint scored by the driver (sweeps.stopped_scores) on its run, as
    a trial that ran every epoch logs them itself: `final.*` at the best epoch's step, metrics.json
    beside the checkpoint. Journaled after the run's finish (MLflow takes metrics on an ended run)
    and replayed with the sweep's last writes."""
    run = _driver_run(uri, directory, experiment_id, parent_run_id, trial_id, trial_name)
    run.write("metrics", flush=False, metrics=numeric(final_metrics(final)), step=int(final["best_epoch"]),
              timestamp=int(time.time() * 1000))
    run.write("files", flush=False, files=[metrics_json], artifact_path=CHECKPOINT_ARTIFACT)


def parent_run(uri: str, directory: Path, parent_run_id: str) -> JournaledRun:
    """The sweep's parent run, written through its own journal."""
    return JournaledRun(uri, Spool(directory, PARENT_SPOOL), {"run_id": parent_run_id})


def replay_all(uri: str, directory: Path) -> dict[str, str]:
    """Replay every journal of a sweep (the trials' first, then the parent's); returns the key and
    last error of each journal that still has pending operations (empty: all in MLflow)."""
    failing = {}
    for spool in sorted(spools(directory), key=lambda s: s.key == PARENT_SPOOL):
        if JournaledRun(uri, spool, {}).flush(force=True, wait=REPLAY_WAIT_S) is not True and spool.pending():
            failing[spool.key] = spool.last_error() or "being replayed by another process"
    return failing


class UnreachableWarning:
    """Says once per driver that the tracking server does not answer (any trial's journal holding an
    error from its last replay), and at the end whether anything is still only in the journals."""

    def __init__(self, uri: str, directory: Path, sweep: str):
        self.uri, self.directory, self.sweep = uri, Path(directory), sweep
        self.warned = False

    def check(self, trial_id: str) -> None:
        if self.warned:
            return
        error = Spool(self.directory, trial_id).last_error()
        if error:
            self.warned = True
            print(f"beamtune: MLflow tracking at {self.uri} does not answer ({error}); trials keep training and "
                  f"journal their logs under {self.directory}, replayed when it answers again",
                  file=sys.stderr, flush=True)

    def final(self, failing: dict[str, str]) -> None:
        if failing:
            key, error = next(iter(failing.items()))
            print(f"beamtune: MLflow tracking at {self.uri} still does not answer ({key}: {error}); {len(failing)} "
                  f"run(s) are only in the journals under {self.directory}: replay them with "
                  f"`beamtune sync --sweep {self.sweep}`",
                  file=sys.stderr, flush=True)


def finish_sweep(uri: str, directory: Path, experiment_id: str, parent_run_id: str, trials: dict[str, tuple[str, str]],
                 errors: dict[str, str], summary: dict[str, Any], metrics: dict[str, float], warning: UnreachableWarning) -> None:
    """The driver's last MLflow writes, journaled then replayed: every trial run a trial left open is
    ended as Ray ended the trial (`trials`: id -> (name, Ray status); `errors`: id -> Ray's error),
    the parent gets `summary` tags and `metrics` and ends. Runs of trials Ray does not know (started
    after the last snapshot of a killed driver) are deleted once MLflow answers. Tracking that does
    not answer costs one line saying how to replay later (`warning.final`)."""
    unfinished = any(status not in ("TERMINATED", "ERROR") for _, status in trials.values())
    for trial_id, (name, status) in trials.items():
        if not Spool(directory, trial_id).path.is_file():
            continue  # never started: no run
        final = "FAILED" if status == "ERROR" else "FINISHED" if status == "TERMINATED" else "KILLED"
        message = errors[trial_id].splitlines()[-1] if errors.get(trial_id) else None
        settle(uri, directory, experiment_id, parent_run_id, trial_id, name, final, message)
    parent = parent_run(uri, directory, parent_run_id)
    if metrics:
        parent.write("metrics", flush=False, metrics=metrics, step=0, timestamp=int(time.time() * 1000))
    parent.write("tags", flush=False, tags={k: str(v) for k, v in summary.items()})
    parent.write("finish", flush=False, status="KILLED" if unfinished else "FINISHED", message=None)
    failing = replay_all(uri, directory)
    if not failing:
        delete_orphans(uri, experiment_id, parent_run_id, set(trials))
    warning.final(failing)


def delete_orphans(uri: str, experiment_id: str, parent_run_id: str, known: set[str]) -> None:
    """A trial started after Ray's last snapshot of a killed driver: the restored sweep does not
    know it (its searcher sampled a replacement), so its partial run goes."""
    c = client(uri)
    for run in child_runs(uri, experiment_id, parent_run_id):
        if run.data.tags.get(TRIAL_TAG) not in known:
            end_run(uri, run.info.run_id, "KILLED", "orphaned: its sweep driver was killed before Ray recorded this "
                    "trial; the resumed sweep ran a new trial instead")
            c.delete_run(run.info.run_id)
