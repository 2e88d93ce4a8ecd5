"""Where each stage of a study stands, from its sweep folder alone (no Ray, no MLflow), and what
running it would take now.

    stage_status(study, storage) -> {stage: StageStatus}    pending | running | interrupted | finished | failed
    spec_drift(saved, spec) -> ("FIELD: SAVED -> NOW", ...)  a sweep that ran under another spec
    refuse_before_start(study, root, stages)                 StudyError for stages that cannot run now
    plan_stage(study, root, name, retry_failed, say) -> StageRun | None
    check_stage_ended(study, root, name) -> StageStatus      StudyError unless it finished

A finished, interrupted or failed stage whose sweep ran under another spec (an edited study file
or other --set overrides: more seeds, another grid) is refused, naming the fields: skipping it
would report the old spec's results as the new one's (spec_drift).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from storage import tracking
from storage.best import SPEC_FILE, TRIALS_FILE, SweepNotFound, best_checkpoint, driver_alive, resolve_storage
from sweeps.spec import SweepSpec, read_saved_spec
from sweeps.study import Study, StudyError

UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
# Spec fields that say how a sweep runs, not what it finds: a stage that finished with 4 trials at
# a time, or found the same data under another path, is still this spec's result.
OPERATIONAL_FIELDS = frozenset({"data_root", "max_concurrent", "resources", "max_failures", "keep_checkpoints",
                                "experiment", "max_trials"})


@dataclass
class StageStatus:
    state: str  # pending | running | interrupted | finished | failed
    trials: int = 0
    failed: int = 0
    best_trial: str | None = None
    best_value: float | None = None
    drift: tuple[str, ...] = ()  # spec_drift of its sweep against the study's spec

    def line(self, stage: str, metric: str) -> str:
        text = f"{stage:<18} {self.state:<11}"  # tu_ner's infnetplus_layers is 17
        if self.trials:
            text += f" {self.trials} trials, {self.failed} failed"
        if self.best_trial is not None:
            text += f"; best {self.best_trial} {metric} {self.best_value:.4f}"
        if self.drift:
            text += f"; ran under another spec ({'; '.join(self.drift)})"
        return text


_UNSET = object()  # a field one of two specs lacks


def _flat(data: dict, prefix: str = "") -> dict[str, object]:
    """{"space.seed.grid": [1], ...}: nested mappings as dotted paths (lists are values)."""
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def spec_drift(saved: dict, spec: SweepSpec) -> tuple[str, ...]:
    """"FIELD: SAVED -> NOW" for each field outside OPERATIONAL_FIELDS where a sweep's saved spec
    (its spec.yaml, as SweepSpec.to_yaml wrote it) and `spec` differ. The saved spec is read back
    through SweepSpec first, so a field added to SweepSpec since, at its default, is no drift."""
    try:
        saved = SweepSpec.model_validate(saved).model_dump(mode="json", exclude_none=True)
    except ValueError as error:  # pydantic's ValidationError is one
        return (f"its spec.yaml no longer validates: {str(error).splitlines()[0]}",)
    old, new = (_flat({k: v for k, v in data.items() if k not in OPERATIONAL_FIELDS})
                for data in (saved, spec.model_dump(mode="json", exclude_none=True)))
    return tuple(f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
                 for key in sorted(old.keys() | new.keys()) if old.get(key, _UNSET) != new.get(key, _UNSET))


def _one_status(root: Path, sweep: str, spec: SweepSpec) -> StageStatus:
    """A stage's state from its sweep folder; its best trial named as its MLflow run is."""
    metric = spec.metric
    directory = root / sweep
    if not directory.is_dir() or not any(directory.iterdir()):
        return StageStatus("pending")
    trials_file = directory / TRIALS_FILE
    if not trials_file.is_file():  # running now, or its driver was killed before the sweep ended
        return StageStatus("running" if driver_alive(directory) else "interrupted", drift=_drift(directory, spec))
    statuses = json.loads(trials_file.read_text())
    status = StageStatus("finished", trials=len(statuses), failed=sum(s == "ERROR" for s in statuses.values()),
                         drift=_drift(directory, spec))
    if any(s in UNFINISHED for s in statuses.values()):
        status.state = "interrupted"
    elif statuses and status.failed == len(statuses):
        status.state = "failed"
    try:
        best = best_checkpoint(root, sweep, metric)
        status.best_trial, status.best_value = tracking.trial_label(spec.stage, best.params, sorted(spec.space)), best.value
    except SweepNotFound:
        if status.state == "finished":
            status.state = "failed"  # every trial ended, none left a checkpoint to start from
    return status


def _drift(directory: Path, spec: SweepSpec) -> tuple[str, ...]:
    """spec_drift against the sweep's spec.yaml; none before start_tracking has written it."""
    path = directory / SPEC_FILE
    return spec_drift(read_saved_spec(path), spec) if path.is_file() else ()


def stage_status(study: Study, storage: str | os.PathLike | None = None) -> dict[str, StageStatus]:
    root = resolve_storage(storage)
    return {name: _one_status(root, study.sweep_name(name), stage.spec) for name, stage in study.stages.items()}


def refuse_before_start(study: Study, root: Path, stages: list[str] | None) -> None:
    """StudyError, before anything starts (the study's MLflow run included, which other drivers of
    the study may be using), for each stage to run whose sweep another process is driving now, or
    that finished or was interrupted under another spec: skipping or resuming it would give the old
    spec's results."""
    problems = []
    for name, stage in study.stages.items():
        if stages is not None and name not in stages:
            continue
        status = _one_status(root, study.sweep_name(name), stage.spec)
        if status.state == "running":
            problems.append(f"stages.{name}: its sweep {study.sweep_name(name)} is being run by another process: wait "
                            f"for it, or run the stages that do not need it (--stages)")
        elif status.drift and status.state in ("finished", "interrupted", "failed"):
            problems.append(f"stages.{name}: its sweep {study.sweep_name(name)} {status.state} under another spec "
                            f"({'; '.join(status.drift)}): run it with the spec it ran under, or remove "
                            f"{root / study.sweep_name(name)} (or use another sweeps folder) to run this one")
    if problems:
        raise StudyError(problems)


@dataclass
class StageRun:
    """What running a stage means now: its sweep started afresh or resumed, failed trials retried."""
    name: str
    spec: SweepSpec
    resume: bool
    retry: bool

    def line(self) -> str:
        return (f"stage {self.name}: {'resuming' if self.resume else 'starting'} sweep {self.spec.name}"
                f"{' and retrying its failed trials' if self.retry else ''}")


def plan_stage(study: Study, root: Path, name: str, retry_failed: bool,
               say: Callable[[str], None]) -> StageRun | None:
    """The run a stage needs, from its sweep folder as it is now; None (said) for a finished stage.
    StudyError for one that failed before (unless retried) or that another process drives."""
    stage = study.stages[name]
    status = _one_status(root, study.sweep_name(name), stage.spec)
    retry = retry_failed and (status.failed > 0 or status.state == "interrupted")
    if status.state == "finished" and not retry:
        say(f"stage {name}: finished before, skipped ({status.best_trial} {stage.spec.metric} {status.best_value:.4f})")
        return None
    if status.state == "failed" and not retry:
        raise StudyError([f"stages.{name}: failed in an earlier run ({status.failed} of {status.trials} trials); "
                          f"fix it and run its failed trials again with --retry-failed, or start it afresh by "
                          f"removing {root / study.sweep_name(name)}"])
    if status.state == "running":  # started by another process since refuse_before_start
        raise StudyError([f"stages.{name}: sweep {study.sweep_name(name)} is being run by another process"])
    return StageRun(name, stage.spec, resume=status.state != "pending", retry=retry)


def check_stage_ended(study: Study, root: Path, name: str) -> StageStatus:
    """The stage's status after its sweep returned; StudyError unless every trial ended well enough."""
    status = _one_status(root, study.sweep_name(name), study.stages[name].spec)
    if status.state != "finished":
        raise StudyError([f"stages.{name}: {status.state} ({status.failed} of {status.trials} trials failed)"])
    return status


