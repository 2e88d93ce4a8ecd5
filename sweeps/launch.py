"""Run a validated sweep spec on Ray Tune: search, scheduler, resources, storage, MLflow, resume.

Embedded default: a local Ray instance started here (`address="local"`, every CPU of the
machine, no dashboard, a small object store) with sweep storage in ./runs/sweeps. A cluster:
`--address` or `RAY_ADDRESS` joins it, and `--storage` must be a path every node shares.

Resume (`beamtune sweep --resume NAME`) uses `Tuner.restore`: finished and errored trials are not
re-run, unfinished ones continue from their last checkpoint in their own MLflow run, and the
Optuna searcher's state comes back through Ray. Ray does not save the scheduler (ray#30838: the
restored ASHA starts with empty rungs, so a resumed sweep would stop nothing it should), so
`ResumableASHA` keeps its rungs in `STORAGE/.beamtune/NAME/asha_state.json` and reloads them itself.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler

from storage import tracking
from storage.best import SPEC_FILE, SWEEP_FILE, TRIALS_FILE, SweepNotFound, TrialBest, best_checkpoint, export_checkpoint, \
    resolve_storage, sweep_dir
from sweeps.spec import SpecError, SweepSpec

OBJECT_STORE_BYTES = 256 * 1024**2
ASHA_STATE = "asha_state.json"


class SweepError(RuntimeError):
    """The sweep cannot start or continue (exists already, nothing to resume, ...)."""


# ----------------------------------------------------------------------------------------------
# ASHA that survives a driver restart.


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA whose rungs (every trial's recorded value at every milestone) and trial-to-bracket
    assignment are written to `state_path` after every decision and read back on first use, so a
    restored sweep keeps cutting trials against the values of the trials before the restart."""

    def __init__(self, state_path: str, **kwargs):
        super().__init__(**kwargs)
        self._state_path = str(state_path)
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = Path(self._state_path)
        if not path.is_file():
            return
        state = json.loads(path.read_text())
        for bracket, rungs in zip(self._brackets, state["brackets"]):
            by_milestone = {float(m): recorded for m, recorded in rungs}
            bracket._rungs = [(milestone, dict(by_milestone.get(float(milestone), {})))
                              for milestone, _ in bracket._rungs]
        self._trial_info.update({tid: self._brackets[i] for tid, i in state["trial_bracket"].items()})
        self._num_stopped = state.get("num_stopped", 0)

    def _save(self) -> None:
        index = {id(b): i for i, b in enumerate(self._brackets)}
        state = {"brackets": [[[m, recorded] for m, recorded in b._rungs] for b in self._brackets],
                 "trial_bracket": {tid: index[id(b)] for tid, b in self._trial_info.items()},
                 "num_stopped": self._num_stopped}
        path = Path(self._state_path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def state(self) -> dict[str, Any]:
        self._load()
        return json.loads(Path(self._state_path).read_text()) if Path(self._state_path).is_file() else {}

    def on_trial_add(self, tune_controller, trial):
        self._load()
        if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)
            self._save()

    def on_trial_result(self, tune_controller, trial, result):
        self._load()
        if trial.trial_id not in self._trial_info:
            super().on_trial_add(tune_controller, trial)
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._load()
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    def on_trial_remove(self, tune_controller, trial):
        self._load()
        if trial.trial_id in self._trial_info:
            super().on_trial_remove(tune_controller, trial)
            self._save()


# ----------------------------------------------------------------------------------------------
# MLflow bookkeeping the driver does (trials do the rest, see sweeps.trainables).


class MlflowSweepCallback(Callback):
    """Counts every start of every trial (storage.tracking.record_start: Ray's starts, also those
    that die before the trial's own code runs), says once when the tracking server does not answer,
    and ends a trial's child run when the trial ends but could not end it itself: stopped by the
    scheduler while its thread was gone (with its best checkpoint), or lost with its node / worker
    (FAILED, with Ray's error). All journaled (storage.spool): the driver never waits on tracking."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, directory: Path, sweep: str):
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.journals = tracking.spool_dir(directory)
        self.warning = tracking.UnreachableWarning(uri, self.journals, sweep)

    def _ids(self, trial) -> tuple:
        return self.uri, self.journals, self.experiment_id, self.parent_run_id, trial.trial_id, str(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        tracking.record_start(*self._ids(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.warning.check(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        files = None
        if trial.checkpoint is not None:
            from storage.best import BEST_SUBDIR, model_files

            best = Path(trial.checkpoint.path) / BEST_SUBDIR
            files = model_files(best) if (best / "checkpoint.json").is_file() else None
        tracking.settle(*self._ids(trial), "FINISHED", stopped=True, files=files)

    def on_trial_error(self, iteration, trials, trial, **info):
        tracking.settle(*self._ids(trial), "FAILED", _trial_error(trial))


def _trial_error(trial) -> str:
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1][: tracking.MAX_MESSAGE]
    return "trial failed (see its error.txt in the sweep storage)"


def trial_dirname(trial) -> str:
    return str(trial)  # the trial name, e.g. train_trial_1a2b3_00000; not a list of parameters


# ----------------------------------------------------------------------------------------------
# The sweep.


@dataclass
class SweepOutcome:
    name: str
    directory: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    best: TrialBest | None
    trials: int
    errors: int
    statuses: dict[str, str]  # trial id -> TERMINATED / ERROR
    seconds: float
    # Wall seconds of each phase: "ray_start" (0 when Ray was already up), "tracking_setup" (overlaps
    # ray_start), "tune" (Tuner set-up and fit), "ray_shutdown" and "finish" (MLflow bookkeeping after).
    phases: dict[str, float]


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join or start Ray unless this process already has; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 object_store_memory=OBJECT_STORE_BYTES)
    else:
        ray.init(address=address)
    return True


def _search_alg(spec: SweepSpec):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.search.algorithm == "optuna" and spec.space:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.search.seed))
    # Tune applies TuneConfig.max_concurrent_trials only to a Searcher (it wraps it in a
    # ConcurrencyLimiter) and ignores it, with a warning, for this generator: it takes the limit itself.
    return BasicVariantGenerator(random_state=spec.search.seed, max_concurrent=spec.max_concurrent or 0)


def _scheduler(spec: SweepSpec, directory: Path):
    from ray.tune.schedulers import FIFOScheduler

    if spec.scheduler.type == "fifo":
        return FIFOScheduler()
    # Not inside Ray's experiment folder: Ray syncs that from its driver staging copy, which on a
    # resumed sweep holds the state as it was at the restart and would overwrite the newer one.
    state_dir = directory.parent / ".beamtune" / directory.name
    state_dir.mkdir(parents=True, exist_ok=True)
    return ResumableASHA(str(state_dir / ASHA_STATE), time_attr="epoch", max_t=spec.epochs,
                         grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor,
                         # A trial that reaches the last epoch ends by itself and scores its best
                         # checkpoint on dev and test; a STOP there would cut that short.
                         stop_last_trials=False)


def param_space(spec: SweepSpec) -> dict[str, Any]:
    from ray import tune

    space = spec.param_space()
    if spec.search.algorithm == "grid":  # every listed value is a grid point
        space.update({name: tune.grid_search(list(d.choice)) for name, d in spec.space.items() if d.kind == "choice"})
    return space


def run_sweep(spec: SweepSpec, *, storage: str | os.PathLike | None = None, tracking_uri: str | None = None,
              address: str | None = None, num_cpus: int | None = None, resume: bool = False,
              verbose: int = 1) -> SweepOutcome:
    """Run (or with `resume`, continue) the sweep `spec`; returns once every trial has ended."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from sweeps.trainables import FAMILIES

    start = time.perf_counter()
    root = resolve_storage(storage)
    directory = root / spec.name
    sweep_file = directory / SWEEP_FILE
    if resume and (not sweep_file.is_file() or not tune.Tuner.can_restore(str(directory))):
        raise SweepError(f"nothing to resume: no sweep named {spec.name!r} under {root}")
    if not resume and directory.exists() and any(directory.iterdir()):
        raise SweepError(f"sweep {spec.name!r} already exists under {root}: continue it with "
                         f"`beamtune sweep --resume {spec.name}`, or give the spec another name")

    phases: dict[str, float] = {}

    def prepare_tracking() -> dict[str, Any]:
        """The sweep's MLflow experiment and parent run (and its warm start), created or reopened."""
        began = time.perf_counter()
        try:
            return _prepare_tracking()
        finally:
            phases["tracking_setup"] = time.perf_counter() - began

    def _prepare_tracking() -> dict[str, Any]:
        if resume:
            state = json.loads(sweep_file.read_text())
            if tracking_uri:
                state["tracking_uri"] = tracking.resolve_tracking_uri(tracking_uri)
            tracking.reopen(state["tracking_uri"], state["parent_run_id"])
            return state
        directory.mkdir(parents=True, exist_ok=True)
        uri = tracking.resolve_tracking_uri(tracking_uri)
        experiment_id = tracking.ensure_experiment(uri, spec.experiment)
        warm_start = None
        if spec.warm_start is not None:
            if spec.warm_start.checkpoint:
                warm_start = str(Path(spec.warm_start.checkpoint).absolute())
            else:  # the best trial of an earlier sweep, copied so later changes to it do not matter
                try:
                    best = best_checkpoint(root, spec.warm_start.sweep, spec.warm_start.metric)
                except SweepNotFound as error:
                    raise SpecError([f"warm_start.sweep: {error}"]) from None
                warm_start = str(export_checkpoint(best, directory / "warm_start"))
        commit = tracking.git_commit()
        parent_run_id = tracking.start_parent(
            uri, experiment_id, spec.name, {"beamtune.stage": spec.stage, "beamtune.task": spec.task,
                                            "mlflow.source.git.commit": commit or "unknown"}, spec.to_yaml())
        state = {"name": spec.name, "tracking_uri": uri, "experiment_id": experiment_id,
                 "parent_run_id": parent_run_id, "warm_start": warm_start, "git_commit": commit}
        (directory / SPEC_FILE).write_text(spec.to_yaml())
        sweep_file.write_text(json.dumps(state, indent=2))
        return state

    # MLflow's setup (schema migrations on a fresh SQLite file, the parent run) and Ray's start take
    # seconds each and do not depend on each other: overlap them. Ray keeps the main thread (it
    # installs signal handlers there).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(prepare_tracking)
        began = time.perf_counter()
        started_ray = connect(address, num_cpus)
        phases["ray_start"] = time.perf_counter() - began
        try:
            state = pending.result()
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise
    uri, experiment_id, parent_run_id = state["tracking_uri"], state["experiment_id"], state["parent_run_id"]

    context = {"sweep": spec.name, "stage": spec.stage, "objective": spec.stage_info.objective, "task": spec.task,
               "data_root": str(Path(spec.data_root).absolute()) if spec.data_root else os.environ.get("BEAMTUNE_DATA"),
               "epochs": spec.epochs, "threads": max(1, int(spec.resources.cpu)), "tracking_uri": uri,
               "experiment_id": experiment_id, "parent_run_id": parent_run_id, "warm_start": state.get("warm_start"),
               "git_commit": state.get("git_commit")}
    context["spool_dir"] = str(tracking.spool_dir(directory))  # trials' MLflow journals (storage.spool)
    if not spec.data_root and spec.task == "synthetic":
        context["data_root"] = None

    began = time.perf_counter()
    try:
        trainable = tune.with_resources(tune.with_parameters(FAMILIES[spec.stage_info.family], context=context),
                                        spec.resources.to_ray())
        if resume:
            tuner = tune.Tuner.restore(str(directory), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            search_alg = _search_alg(spec)
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(spec),
                tune_config=tune.TuneConfig(
                    metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples, search_alg=search_alg,
                    scheduler=_scheduler(spec, directory), reuse_actors=True,
                    max_concurrent_trials=None if isinstance(search_alg, BasicVariantGenerator) else spec.max_concurrent,
                    trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=str(root), verbose=verbose,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints,
                                                            checkpoint_score_attribute=spec.metric,
                                                            checkpoint_score_order=spec.mode),
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                    callbacks=[MlflowSweepCallback(uri, experiment_id, parent_run_id, directory, spec.name)]))
        try:
            results = tuner.fit()
        except BaseException:  # journaled: a tracking error must not hide this one
            tracking.parent_run(uri, tracking.spool_dir(directory), parent_run_id).finish("KILLED")
            raise
        statuses = {t.trial_id: t.status for t in results._experiment_analysis.trials}
        names = {t.trial_id: (str(t), t.status) for t in results._experiment_analysis.trials}
        errors = {t.trial_id: str(t.get_error() or "trial failed") for t in results._experiment_analysis.trials
                  if t.status == "ERROR"}
    finally:
        phases["tune"] = time.perf_counter() - began
        began = time.perf_counter()
        if started_ray:
            ray.shutdown()
        phases["ray_shutdown"] = time.perf_counter() - began

    began = time.perf_counter()
    # The trials of this sweep as Ray knows them (storage.best ignores folders of other trials).
    (directory / TRIALS_FILE).write_text(json.dumps(statuses, indent=1))
    try:
        best = best_checkpoint(root, spec.name)
    except SweepNotFound:
        best = None
    summary = {"beamtune.trials": len(statuses), "beamtune.errors": len(errors)}
    if best is not None:
        summary.update({"beamtune.best_trial": best.trial_name, "beamtune.best_checkpoint": str(best.checkpoint)})
    # No child run may stay RUNNING; a tracking server that is down by now costs one line (replay later).
    tracking.finish_sweep(uri, tracking.spool_dir(directory), experiment_id, parent_run_id, names, errors, summary,
                          {f"best_{spec.metric}": best.value} if best is not None else {},
                          tracking.UnreachableWarning(uri, tracking.spool_dir(directory), spec.name))
    phases["finish"] = time.perf_counter() - began
    return SweepOutcome(spec.name, directory, uri, experiment_id, parent_run_id, best, len(statuses), len(errors),
                        statuses, time.perf_counter() - start, phases)


def load_sweep_spec(name: str, storage: str | os.PathLike | None = None) -> SweepSpec:
    """The spec a sweep was started with (for --resume NAME)."""
    from sweeps.spec import load_spec

    path = sweep_dir(storage, name) / SPEC_FILE
    if not path.is_file():
        raise SweepError(f"nothing to resume: no sweep named {name!r} under {resolve_storage(storage)}")
    spec = load_spec(path, storage)
    return spec
