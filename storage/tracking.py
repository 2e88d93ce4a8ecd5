"""MLflow: one parent run per sweep, one nested child run per trial, reopened by id.

Tracking URI: the flag, else `MLFLOW_TRACKING_URI`, else a SQLite file `mlflow.db` in the working
directory (made absolute, because trials run with their trial folder as working directory). The
driver creates the database and the experiment before any trial starts: concurrent first writes
to a fresh SQLite file race on the schema.

Only `MlflowClient` is used (never the fluent `mlflow.start_run` state), so trials that share a
reused Ray actor, and the driver's callback threads, cannot mix up active runs.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "beamtune.trial_id"
SWEEP_TAG = "beamtune.sweep"
STUDY_TAG = "beamtune.study"
BEST_TAG = "beamtune.best"  # "true" on the best trial's run of a sweep
STOPPED_TAG = "beamtune.early_stopped"
ERROR_TAG = "beamtune.error"
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description (markdown) in the MLflow UI
CHECKPOINT_ARTIFACT = "best_checkpoint"
MAX_MESSAGE = 4000


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


def log_sweep_params(uri: str, run_id: str, fixed: dict[str, Any], space: dict[str, str]) -> None:
    """The sweep's fixed values and its search space (one param per searched parameter, e.g.
    `space.lr = loguniform [0.001, 0.01]`) on its parent run, so the UI shows what was searched."""
    from mlflow.entities import Param

    params = {**{f"fixed.{k}": v for k, v in flatten("", fixed, {}).items()}, **{f"space.{k}": v for k, v in space.items()}}
    batch = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(batch), 100):
        client(uri).log_batch(run_id, params=batch[i:i + 100])


def mark_best(uri: str, parent_run_id: str, best_run_id: str | None, summary: str) -> None:
    """Tag the best trial's run and say in the parent's description which trial is best."""
    c = client(uri)
    if best_run_id:
        c.set_tag(best_run_id, BEST_TAG, "true")
    c.set_tag(parent_run_id, DESCRIPTION_TAG, summary)


def reopen(uri: str, run_id: str) -> None:
    client(uri).update_run(run_id, status="RUNNING")


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


class TrialRun:
    """A trial's child run. `open` creates it, or reopens the one whose id the trial's checkpoint
    holds (retry, resume, node loss) so that a trial always has exactly one run."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self.client = client(uri)

    @classmethod
    def open(cls, uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
             run_id: str | None, tags: dict[str, str]) -> "TrialRun":
        if run_id is None:
            # Started before but failed before its first checkpoint: still the same trial.
            existing = find_trial_run(uri, experiment_id, parent_run_id, trial_id)
            run_id = existing.info.run_id if existing else None
        c = client(uri)
        if run_id is None:
            run = c.create_run(experiment_id, run_name=trial_name,
                               tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, **tags})
            run_id = run.info.run_id
        else:
            c.update_run(run_id, status="RUNNING")
            if ERROR_TAG in c.get_run(run_id).data.tags:  # the error of an attempt that was retried
                c.delete_tag(run_id, ERROR_TAG)
        return cls(uri, run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten("", params, {})
        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in sorted(flat.items()) if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in numeric(metrics).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_files(self, files: list[Path], artifact_path: str) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED", message: str | None = None) -> None:
        end_run(self.uri, self.run_id, status, message)
