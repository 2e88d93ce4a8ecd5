"""Tracked sweeps read back from MLflow, for reports: nothing here trains or writes.

    load_sweep(uri, name) -> Sweep     the newest parent run tagged with the sweep's name and its trials
    Trial.final(split, decoder, metric) the score of the trial's best checkpoint, or None
    Trial.history(uri, key) -> [(step, value)]   a per-epoch metric (dev score, alpha, lambda)

A trial's final scores are the metrics `final.<split>.<decoder>.<metric>` that the trainable logs
after training (sweeps/trainables.py); for a trial stopped early by the scheduler the driver scores
its best checkpoint after the sweep (sweeps/stopped_scores.py). A trial without them (failed, or
its scoring failed) is left out of reports, which say so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storage import tracking

FINAL_PREFIX = tracking.FINAL_PREFIX  # sweeps.trainables logs {"final": {"dev": ..., "test": ..., "best_epoch": ...}}


class SweepNotTracked(LookupError):
    """No parent run for this sweep name in the tracking store."""


@dataclass
class Trial:
    run_id: str
    experiment_id: str
    name: str
    status: str  # MLflow run status: FINISHED, FAILED, RUNNING, KILLED
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]  # the latest value of every metric

    @property
    def seed(self) -> str:
        return self.params.get("seed", self.tags.get("beamtune.seed", "0"))

    @property
    def stopped_early(self) -> bool:
        return self.tags.get(tracking.STOPPED_TAG) == "true"

    def final(self, split: str, decoder: str, metric: str = "score") -> float | None:
        return self.metrics.get(f"{FINAL_PREFIX}.{split}.{decoder}.{metric}")

    def has_final(self) -> bool:
        return any(key.startswith(f"{FINAL_PREFIX}.") for key in self.metrics)

    def history(self, uri: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in tracking.client(uri).get_metric_history(self.run_id, key))


@dataclass
class Sweep:
    name: str
    run_id: str
    experiment_id: str
    stage: str
    task: str
    status: str
    spec_yaml: str
    trials: list[Trial] = field(default_factory=list)

    @property
    def finished(self) -> list[Trial]:
        """Trials with final scores (ran to the end of training, or were evaluated after a stop)."""
        return [t for t in self.trials if t.status == "FINISHED" and t.has_final()]


def _trial(run: Any) -> Trial:
    return Trial(run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                 name=run.info.run_name or run.data.tags.get(tracking.TRIAL_TAG, run.info.run_id[:8]),
                 status=run.info.status, params=dict(run.data.params), tags=dict(run.data.tags),
                 metrics=dict(run.data.metrics))


def load_sweep(uri: str, name: str) -> Sweep:
    """The newest parent run of sweep `name` (any experiment) and its child runs."""
    c = tracking.client(uri)
    experiments = [e.experiment_id for e in c.search_experiments()]
    parents = c.search_runs(experiments, filter_string=f"tags.`{tracking.SWEEP_TAG}` = '{name}'",
                            order_by=["attributes.start_time DESC"], max_results=1000)
    parents = [p for p in parents if tracking.TRIAL_TAG not in p.data.tags]  # trials carry the sweep tag too
    if not parents:
        raise SweepNotTracked(f"no sweep named {name!r} in the tracking store {uri}")
    parent = parents[0]
    spec_yaml = _read_text_artifact(c, parent.info.run_id, "spec.yaml")
    children = tracking.child_runs(uri, parent.info.experiment_id, parent.info.run_id)
    return Sweep(name=name, run_id=parent.info.run_id, experiment_id=parent.info.experiment_id,
                 stage=parent.data.tags.get("beamtune.stage", "?"), task=parent.data.tags.get("beamtune.task", "?"),
                 status=parent.info.status, spec_yaml=spec_yaml,
                 trials=sorted((_trial(r) for r in children), key=lambda t: t.name))


def _read_text_artifact(c: Any, run_id: str, path: str) -> str:
    import mlflow.artifacts

    try:
        return mlflow.artifacts.load_text(f"{c.get_run(run_id).info.artifact_uri}/{path}")
    except OSError as error:  # an artifact store that lost the file: the report still works without it
        return f"# spec.yaml not readable: {error}"
