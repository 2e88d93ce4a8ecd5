"""Running a study (sweeps.study): its stages in dependency order, each as a sweep on one Ray
(local by default), nested under one MLflow run for the study, then the report.

    run_study(study, storage=..., tracking_uri=..., address=..., stages=..., retry_failed=...,
              parallel=...) -> {stage: StageStatus}
    study_run_id(study, storage, uri) -> the study's MLflow run

Running a study again (or with --resume) skips finished stages, resumes an interrupted one from
Ray's trial checkpoints and starts the rest; a failed stage stops the study (the stages after it
would warm-start from nothing). With --retry-failed, the failed trials of the stages to run (a
failed stage's, and those of a stage that finished with some) run again from their last
checkpoints. Stages that ran under another spec are refused (sweeps.study_status). With
`parallel`, stages that do not depend on each other run at the same time (sweeps.study_parallel).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from storage import tracking
from storage.best import resolve_storage
from sweeps.study import Study, StudyError
from sweeps.study_parallel import run_stages_in_parallel
from sweeps.study_status import StageStatus, check_stage_ended, plan_stage, refuse_before_start, stage_status

STUDY_FILE = "beamtune_study.json"  # under STORAGE/.studies/NAME: the study's MLflow run


def study_run_id(study: Study, storage: str | os.PathLike | None, uri: str) -> str | None:
    """The MLflow run of the study (None before its first run, or when it ran against another store)."""
    state_file = resolve_storage(storage) / ".studies" / study.name / STUDY_FILE
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    return state["run_id"] if state["tracking_uri"] == uri else None


def _study_run(study: Study, root: Path, uri: str) -> tuple[str, str]:
    """(experiment id, run id) of the study's MLflow run: created once, reopened on every later run."""
    state_file = root / ".studies" / study.name / STUDY_FILE
    experiment = next(iter(study.stages.values())).spec.experiment
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state["tracking_uri"] == uri:
            try:
                with tracking.answering(uri):
                    tracking.reopen(uri, state["run_id"])
                    tracking.update_study(uri, state["run_id"], study.text, study.overrides)
            except tracking.RunNotFound as error:
                raise StudyError([f"study {study.name}: its {error} (cleared or replaced since it ran): run it "
                                  f"against the store it ran against (--tracking-uri), or remove {state_file.parent} "
                                  "and the stage sweeps it ran to start the study over"]) from error
            return state["experiment_id"], state["run_id"]
    with tracking.answering(uri):
        experiment_id = tracking.ensure_experiment(uri, experiment)
        run_id = tracking.start_study(uri, experiment_id, study.name, study.text, study.overrides)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}))
    return experiment_id, run_id


def run_study(study: Study, *, storage: str | os.PathLike | None = None, tracking_uri: str | None = None,
              address: str | None = None, num_cpus: int | None = None, verbose: int = 0,
              say: Callable[[str], None] = print, stages: list[str] | None = None,
              retry_failed: bool = False, parallel: bool = False) -> dict[str, StageStatus]:
    """Run every stage that has not finished, in order (only `stages`, from sweeps.study.select_stages,
    when given); with `retry_failed`, also the failed trials of the stages that had some (each
    from its last checkpoint). With `parallel`, each stage starts as soon as the stage it
    warm-starts from has finished, in its own driver process (sweeps.study_parallel), all on one
    Ray. Returns the final status of each stage of the study."""
    root = resolve_storage(storage)
    refuse_before_start(study, root, stages)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    _, study_run = _study_run(study, root, uri)
    names = [name for name in study.stages if stages is None or name in stages]
    try:
        if parallel:
            run_stages_in_parallel(study, root, names, uri=uri, study_run=study_run, address=address,
                                   num_cpus=num_cpus, verbose=verbose, say=say, retry_failed=retry_failed)
        else:
            _run_stages_in_order(study, root, names, uri=uri, study_run=study_run, address=address,
                                 num_cpus=num_cpus, verbose=verbose, say=say, retry_failed=retry_failed)
    except BaseException:
        tracking.end_run(uri, study_run, "KILLED")
        raise
    tracking.end_run(uri, study_run, "FINISHED")
    return stage_status(study, root)


def _run_stages_in_order(study: Study, root: Path, names: list[str], *, uri: str, study_run: str,
                         address: str | None, num_cpus: int | None, verbose: int, say: Callable[[str], None],
                         retry_failed: bool) -> None:
    """Each stage's sweep in this process, one after another (a failed stage stops the study)."""
    import ray

    from sweeps.launch import connect, run_sweep

    started_ray = connect(address, num_cpus, log_to_driver=verbose > 0)
    try:
        for name in names:
            run = plan_stage(study, root, name, retry_failed, say)
            if run is None:
                continue
            say(run.line())
            run_sweep(run.spec, storage=root, tracking_uri=uri, address=address, resume=run.resume,
                      retry_failed=run.retry, verbose=verbose, study_run_id=study_run)
            check_stage_ended(study, root, name)
    finally:
        if started_ray:
            ray.shutdown()
