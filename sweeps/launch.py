"""Run a validated sweep spec on Ray Tune: search, scheduler, resources, storage, MLflow, resume.

Embedded default: a local Ray instance started here (`address="local"`, every CPU of the
machine, no dashboard, a small object store) with sweep storage in ./runs/sweeps. A cluster:
`--address` or `RAY_ADDRESS` joins it, and `--storage` must be a path every node shares.

Resume (`beamtune sweep --resume NAME`) uses `Tuner.restore`: finished and errored trials are not
re-run (errored ones are with `--retry-failed`, for a failure since fixed), unfinished ones
continue from their last checkpoint in their own MLflow run, and the Optuna searcher's state
comes back through Ray. Ray does not save the scheduler (ray#30838: the
restored ASHA starts with empty rungs, so a resumed sweep would stop nothing it should), so
`ResumableASHA` keeps its rungs in `STORAGE/.beamtune/NAME/asha_state.json` and reloads them itself.
"""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler

from core.checkpoint import MANIFEST, CheckpointError
from storage import tracking
from storage.best import DRIVER_LOCK, ENERGY_SUBDIR, SPEC_FILE, SWEEP_FILE, TRIALS_FILE, SweepNotFound, TrialBest, best_checkpoint, \
    export_checkpoint, export_energy, resolve_storage, sweep_dir
from storage.db import TrackingStoreError
from sweeps.progress import CompactProgress, say_stderr
from sweeps.ray_private import asha_state, knows_trial, restore_asha_state, result_trials
from sweeps.spec import SpecError, SweepSpec

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 256 * 1024**2
RAY_PROBE_TIMEOUT_S = 5  # a head on another node answers a TCP connect in well under this
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
        self._last = (kwargs["time_attr"], kwargs["max_t"])  # the report of a trial's last epoch

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        path = Path(self._state_path)
        if path.is_file():
            restore_asha_state(self, json.loads(path.read_text()))

    def _save(self) -> None:
        path = Path(self._state_path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asha_state(self)))
        os.replace(tmp, path)

    def state(self) -> dict[str, Any]:
        self._load()
        return json.loads(Path(self._state_path).read_text()) if Path(self._state_path).is_file() else {}

    def on_trial_add(self, tune_controller, trial):
        self._load()
        if not knows_trial(self, trial.trial_id):  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)
            self._save()

    def on_trial_result(self, tune_controller, trial, result):
        self._load()
        if not knows_trial(self, trial.trial_id):
            super().on_trial_add(tune_controller, trial)
        action = super().on_trial_result(tune_controller, trial, result)
        self._save()
        time_attr, max_t = self._last
        if result.get(time_attr, 0) >= max_t:
            # ASHA's top rung is max_t itself: a STOP there is no early stop (the trial has run every
            # epoch) and would cut the trial off before it scores its best checkpoint on dev and test.
            return self.CONTINUE
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._load()
        if knows_trial(self, trial.trial_id):
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    def on_trial_remove(self, tune_controller, trial):
        self._load()
        if knows_trial(self, trial.trial_id):
            super().on_trial_remove(tune_controller, trial)
            self._save()


# ----------------------------------------------------------------------------------------------
# SIGUSR1 as Ctrl+C.


class Sigusr1Interrupts(Callback):
    """SIGUSR1 interrupts the sweep as Ctrl+C does (KeyboardInterrupt: resumable, exit 130).

    Tune installs its own SIGUSR1 handler in every run, with no setting to turn it off, and that
    handler ends the run "cleanly": the unfinished trials are stopped and reported TERMINATED, so
    the sweep was recorded done, half-trained trials scored as early-stopped (measured: 2 of 15
    epochs, exit 0, "0 failed"). Batch schedulers send SIGUSR1 before a job's time limit (SLURM's
    --signal). Callbacks are set up after Tune has installed its handlers, so this one replaces it.
    """

    def setup(self, **info):
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, signal.default_int_handler)  # raises KeyboardInterrupt


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
            files = model_files(best) if (best / MANIFEST).is_file() else None
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
    # ray_start), "tune" (Tuner set-up and fit), "score_stopped" (scoring early-stopped trials'
    # best checkpoints), "ray_shutdown" and "finish" (MLflow bookkeeping after).
    phases: dict[str, float]
    failures: dict[str, str] = field(default_factory=dict)  # trial id -> the last line of its error

    def common_failure(self) -> str | None:
        """The error most failed trials ended with (their last line), with how many; None if none failed."""
        if not self.failures:
            return None
        message, count = collections.Counter(self.failures.values()).most_common(1)[0]
        return f"{message} ({count} of {len(self.failures)} failed trials)"


def connect(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True) -> bool:
    """Join or start Ray unless this process already has; True when this call started it.
    `log_to_driver=False` keeps the trials' own output (checkpoint notices) off the terminal."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 object_store_memory=OBJECT_STORE_BYTES, log_to_driver=log_to_driver)
    else:
        check_ray_address(address)
        try:
            ray.init(address=address, log_to_driver=log_to_driver)
        except ConnectionError as error:  # it answers but will not take us: mostly token authentication
            raise SweepError(f"cannot join the Ray cluster at {address} ({str(error).splitlines()[0]}); a cluster "
                             "started with token authentication needs RAY_AUTH_MODE=token in this process too") from error
    return True


def check_ray_address(address: str) -> None:
    """SweepError unless something listens at a `HOST:PORT` Ray address: `ray.init` waits silently,
    for many minutes, on an address where nothing runs (a typo, a head not started yet)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=RAY_PROBE_TIMEOUT_S).close()
    except OSError as error:
        raise SweepError(f"nothing answers at the Ray address {address} ({error.strerror or error}): start the head "
                         "there (`ray start --head --port PORT`), or unset --address / RAY_ADDRESS for a local "
                         "Ray") from error


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
              retry_failed: bool = False, verbose: int = 0, progress: bool = True,
              study_run_id: str | None = None) -> SweepOutcome:
    """Run (or with `resume`, continue) the sweep `spec`; returns once every trial has ended.
    `retry_failed` (with `resume`): the trials that ended in an error run again too, each from its
    last checkpoint.
    verbose 0: Ray stays quiet and, with `progress`, the compact view (sweeps.progress) reports;
    verbose 1 or 2: Ray's own tables. `study_run_id`: the MLflow run of the study this sweep is a
    stage of (its parent run nests there)."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ctrl+C must interrupt a sweep as a kill does. Tune's own SIGINT handler ends the run "cleanly":
    # it stops the unfinished trials, which it then reports TERMINATED, so the sweep was recorded as
    # done with half-trained and never-started trials (and a study skipped the stage when run again).
    # Without it the KeyboardInterrupt reaches us: no trials file, MLflow says how to resume.
    # SIGUSR1 likewise: Sigusr1Interrupts.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if verbose == 0:  # Tune's new output engine prints its boxes and a TensorBoard hint even at verbose 0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    compact = progress and verbose == 0
    start = time.perf_counter()
    root = resolve_storage(storage)
    directory = root / spec.name
    if retry_failed and not resume:
        raise SweepError("retrying failed trials needs a sweep to resume (--resume NAME)")
    check_sweep_folder(spec, root, directory, resume)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with driver_lock(directory):
            return _run_sweep(spec, root, directory, tracking_uri, address, num_cpus, resume, verbose, compact,
                              study_run_id, start, retry_failed)
    except KeyboardInterrupt:
        if (directory / SWEEP_FILE).is_file():  # the lock is free again: settle MLflow as for a killed driver
            note_incomplete(spec.name, root)
        raise


@contextlib.contextmanager
def driver_lock(directory: Path):
    """Hold the sweep's driver lock (storage.best.DRIVER_LOCK) while this process drives it: a later
    command that finds the lock free and the sweep unfinished knows its driver is gone."""
    import fcntl

    with open(directory / DRIVER_LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"sweep {directory.name!r} is being driven by another process") from None
        yield


def _run_sweep(spec: SweepSpec, root: Path, directory: Path, tracking_uri: str | None, address: str | None,
               num_cpus: int | None, resume: bool, verbose: int, compact: bool, study_run_id: str | None,
               start: float, retry_failed: bool = False) -> SweepOutcome:
    phases: dict[str, float] = {}
    if compact:
        say_stderr(f"[{spec.name}] starting Ray ({address or os.environ.get('RAY_ADDRESS') or 'local'}) and MLflow "
                   f"({tracking_uri or 'the default store'}); {'resuming' if resume else 'starting'} the sweep"
                   f"{' and retrying its failed trials' if retry_failed else ''}")
    state, started_ray = start_ray_and_tracking(spec, root, directory, tracking_uri, address, num_cpus, resume, phases,
                                                verbose, study_run_id)
    try:
        with timed(phases, "tune"):
            tuner = make_tuner(spec, root, directory, state, resume, verbose, compact, retry_failed)
            ray_trials = fit(tuner, state, directory)
        with timed(phases, "score_stopped"):
            score_stopped(spec, state, directory, ray_trials)
    finally:
        with timed(phases, "ray_shutdown"):
            if started_ray:
                import ray

                ray.shutdown()
    trials, errors = trial_outcomes(ray_trials)
    with timed(phases, "finish"):
        best = finish_sweep(spec, root, directory, state, trials, errors)
    statuses = {trial_id: status for trial_id, (_, status) in trials.items()}
    last_lines = {tid: (error.strip().splitlines() or ["trial failed"])[-1][:300] for tid, error in errors.items()}
    return SweepOutcome(spec.name, directory, state["tracking_uri"], state["experiment_id"], state["parent_run_id"], best,
                        len(statuses), len(errors), statuses, time.perf_counter() - start, phases, last_lines)


class timed:
    """`with timed(phases, name):` adds the block's wall seconds to phases[name]."""

    def __init__(self, phases: dict[str, float], name: str):
        self.phases, self.name = phases, name

    def __enter__(self) -> None:
        self.began = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.phases[self.name] = self.phases.get(self.name, 0.0) + time.perf_counter() - self.began


def check_sweep_folder(spec: SweepSpec, root: Path, directory: Path, resume: bool) -> None:
    """A new sweep needs an empty folder; a resumed one a folder Ray can restore."""
    from ray import tune

    if resume and (not (directory / SWEEP_FILE).is_file() or not tune.Tuner.can_restore(str(directory))):
        raise SweepError(f"nothing to resume: no sweep named {spec.name!r} under {root}")
    if not resume and directory.exists() and any(p.name != DRIVER_LOCK for p in directory.iterdir()):
        raise SweepError(f"sweep {spec.name!r} already exists under {root}: continue it with "
                         f"`beamtune sweep --resume {spec.name}`, or give the spec another name")


def start_ray_and_tracking(spec: SweepSpec, root: Path, directory: Path, tracking_uri: str | None, address: str | None,
                           num_cpus: int | None, resume: bool, phases: dict[str, float], verbose: int = 0,
                           study_run_id: str | None = None) -> tuple[dict[str, Any], bool]:
    """Start (or join) Ray and set up the sweep's MLflow runs at the same time: MLflow's setup
    (schema migrations on a fresh SQLite file, the parent run) and Ray's start take seconds each
    and do not depend on each other. Ray keeps the main thread (it installs signal handlers there).
    Returns (the sweep's state, as in beamtune_sweep.json; whether this call started Ray)."""
    def tracking_setup() -> dict[str, Any]:
        with timed(phases, "tracking_setup"):
            if resume:
                return reopen_tracking(directory, tracking_uri)
            return start_tracking(spec, root, directory, tracking_uri, study_run_id)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(tracking_setup)
        try:
            with timed(phases, "ray_start"):
                started_ray = connect(address, num_cpus, log_to_driver=verbose > 0)
        except BaseException:
            if not resume:  # else the same command, once Ray is there, would find a sweep "already exists"
                undo_new_sweep(pending, directory)
            raise
        try:
            return pending.result(), started_ray
        except BaseException:
            if started_ray:
                import ray

                ray.shutdown()
            raise


def undo_new_sweep(pending: concurrent.futures.Future, directory: Path) -> None:
    """A new sweep whose Ray did not start: its parent run deleted and its state files removed, so
    that nothing half-made is left. Ray's error is the one to report: a tracking setup that failed
    as well made nothing to undo, and its error would hide the cause the user must fix first."""
    if pending.exception() is not None:
        return
    state = pending.result()
    tracking.delete_run(state["tracking_uri"], state["parent_run_id"])
    for name in (SWEEP_FILE, SPEC_FILE):
        (directory / name).unlink(missing_ok=True)
    if (directory / ENERGY_SUBDIR).exists():
        shutil.rmtree(directory / ENERGY_SUBDIR)


def reopen_tracking(directory: Path, tracking_uri: str | None) -> dict[str, Any]:
    """A resumed sweep's state, its parent run RUNNING again (at a new tracking URI if given)."""
    state = json.loads((directory / SWEEP_FILE).read_text())
    if tracking_uri:
        state["tracking_uri"] = tracking.resolve_tracking_uri(tracking_uri)
    try:
        with tracking.answering(state["tracking_uri"]):
            tracking.reopen(state["tracking_uri"], state["parent_run_id"])
    except tracking.RunNotFound as error:
        raise SweepError(f"sweep {directory.name}: its parent {error} (cleared or replaced since it ran): resume it "
                         f"with --tracking-uri of the store it ran against, or remove {directory} to run it "
                         "again") from error
    return state


def start_tracking(spec: SweepSpec, root: Path, directory: Path, tracking_uri: str | None,
                   study_run_id: str | None = None) -> dict[str, Any]:
    """A new sweep's experiment, parent run (nested under the study's run, if any; with the search
    space as parameters) and warm start; its state in beamtune_sweep.json."""
    directory.mkdir(parents=True, exist_ok=True)
    retire_journals(directory)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    with tracking.answering(uri):
        experiment_id = tracking.ensure_experiment(uri, spec.experiment)
    warm_start = resolve_warm_start(spec, root, directory)
    warm_energy = resolve_warm_energy(spec, root, directory, warm_start)
    commit = tracking.git_commit()
    with tracking.answering(uri):
        parent_run_id = tracking.start_parent(
            uri, experiment_id, spec.name, {"beamtune.stage": spec.stage, "beamtune.task": spec.task,
                                            "mlflow.source.git.commit": commit or "unknown",
                                            **({tracking.PARENT_TAG: study_run_id} if study_run_id else {})},
            spec.to_yaml())
        tracking.log_sweep_params(uri, parent_run_id, spec.fixed, {k: d.describe() for k, d in spec.space.items()})
    state = {"name": spec.name, "tracking_uri": uri, "experiment_id": experiment_id,
             "parent_run_id": parent_run_id, "warm_start": warm_start, "warm_start_energy": warm_energy,
             "git_commit": commit}
    (directory / SPEC_FILE).write_text(spec.to_yaml())
    (directory / SWEEP_FILE).write_text(json.dumps(state, indent=2))
    return state


def retire_journals(directory: Path) -> None:
    """A new sweep under the name of one whose folder was removed (as a failed study stage is
    restarted): that sweep's journals, kept beside the folder (tracking.spool_dir), would still be
    found, and its parent's would write to the old parent run. Moved aside, not deleted: they may
    hold operations not yet in MLflow (`beamtune sync` of the old sweep can still replay them)."""
    journals = tracking.spool_dir(directory)
    if journals.exists():
        aside = journals.with_name(f"spool.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        journals.rename(aside)
        say_stderr(f"[{directory.name}] journals of an earlier sweep of this name moved to {aside}")


def resolve_warm_start(spec: SweepSpec, root: Path, directory: Path) -> str | None:
    """The checkpoint every trial starts from: the spec's path, or the best trial of the sweep it
    names, copied into this sweep's folder so later changes to that sweep do not matter."""
    if spec.warm_start is None:
        return None
    if spec.warm_start.checkpoint:
        return str(Path(spec.warm_start.checkpoint).absolute())
    try:
        best = best_checkpoint(root, spec.warm_start.sweep, spec.warm_start.metric, where=spec.warm_start.where)
    except SweepNotFound as error:
        raise SpecError([f"warm_start.sweep: {error}"]) from None
    return str(export_checkpoint(best, directory / "warm_start"))


def resolve_warm_energy(spec: SweepSpec, root: Path, directory: Path, warm_start: str | None) -> str | None:
    """For a stage that evaluates an inference network (SweepStage.warm_energy): the CRF energy it
    was trained against, copied into this sweep's folder (found under `root` if the sweeps moved)."""
    if warm_start is None or not spec.stage_info.warm_energy:
        return None
    try:
        return str(export_energy(warm_start, root, directory / ENERGY_SUBDIR))
    except (SweepNotFound, CheckpointError) as error:
        raise SpecError([f"warm_start: {error}"]) from None


def trial_context(spec: SweepSpec, state: dict[str, Any], directory: Path) -> dict[str, Any]:
    """What every trial of the sweep shares (sweeps.trainables): stage, task, MLflow ids, warm start."""
    data_root = str(Path(spec.data_root).absolute()) if spec.data_root else os.environ.get("BEAMTUNE_DATA")
    return {"sweep": spec.name, "stage": spec.stage, "objective": spec.stage_info.objective, "task": spec.task,
            "data_root": None if not spec.data_root and spec.task == "synthetic" else data_root,
            "epochs": spec.epochs, "threads": max(1, int(spec.resources.cpu)), "tracking_uri": state["tracking_uri"],
            "experiment_id": state["experiment_id"], "parent_run_id": state["parent_run_id"],
            "warm_start": state.get("warm_start"), "warm_start_energy": state.get("warm_start_energy"),
            "git_commit": state.get("git_commit"), "searched": sorted(spec.space),
            "spool_dir": str(tracking.spool_dir(directory))}  # the trials' MLflow journals (storage.spool)


def make_tuner(spec: SweepSpec, root: Path, directory: Path, state: dict[str, Any], resume: bool, verbose: int,
               compact: bool = False, retry_failed: bool = False):
    """The Tuner of a new sweep, or the restored one of a resumed sweep (with `retry_failed`, its
    errored trials rescheduled from their last checkpoints: Tune's resume_errored)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from sweeps.trainables import FAMILIES

    trainable = tune.with_resources(tune.with_parameters(FAMILIES[spec.stage_info.family], context=trial_context(spec, state, directory)),
                                    spec.resources.to_ray())
    if resume:
        return tune.Tuner.restore(str(directory), trainable=trainable, resume_unfinished=True,
                                  resume_errored=retry_failed, restart_errored=False)
    search_alg = _search_alg(spec)
    return tune.Tuner(
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
            callbacks=[Sigusr1Interrupts(),
                       MlflowSweepCallback(state["tracking_uri"], state["experiment_id"], state["parent_run_id"], directory,
                                           spec.name)] + (
                [CompactProgress(spec.name, spec.stage, spec.epochs if spec.stage_info.family == "train" else 1,  # evaluation: one report
                                  spec.metric, spec.mode, sorted(spec.space))]
                if compact else [])))


def fit(tuner, state: dict[str, Any], directory: Path) -> list:
    """Run the trials; returns Ray's Trial objects. A driver interrupted here leaves its parent run
    KILLED (resumable; journaled, so a tracking error cannot hide the interruption)."""
    try:
        results = tuner.fit()
    except BaseException:
        tracking.parent_run(state["tracking_uri"], tracking.spool_dir(directory), state["parent_run_id"]).finish("KILLED")
        raise
    return result_trials(results)


def trial_outcomes(trials: list) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(trial id -> (Ray's trial name, Ray status), trial id -> error of the failed ones)."""
    names = {t.trial_id: (str(t), t.status) for t in trials}
    errors = {t.trial_id: str(t.get_error() or "trial failed") for t in trials if t.status == "ERROR"}
    return names, errors


def score_stopped(spec: SweepSpec, state: dict[str, Any], directory: Path, trials: list) -> None:
    """The best checkpoint of every trial the scheduler stopped, scored on dev and test while Ray
    is still up (sweeps.stopped_scores), so every trial that ended well has final scores."""
    from sweeps.stopped_scores import score_stopped_trials

    if spec.stage_info.family != "train":  # evaluation stages (gd-oracle, table6) report once: never stopped early
        return
    score_stopped_trials(trials, spec.resources.to_ray(), trial_context(spec, state, directory),
                         tracking.spool_dir(directory), lambda line: say_stderr(f"[{spec.name}] {line}"))


def finish_sweep(spec: SweepSpec, root: Path, directory: Path, state: dict[str, Any], trials: dict[str, tuple[str, str]],
                 errors: dict[str, str]) -> TrialBest | None:
    """Record the sweep's trials, settle every child run, sum the sweep up on its parent run (whose
    description names the best trial, which is tagged), all through the journals (storage.spool)."""
    uri, parent_run_id = state["tracking_uri"], state["parent_run_id"]
    # The trials of this sweep as Ray knows them (storage.best ignores folders of other trials).
    (directory / TRIALS_FILE).write_text(json.dumps({tid: status for tid, (_, status) in trials.items()}, indent=1))
    try:
        best = best_checkpoint(root, spec.name)
    except SweepNotFound:
        best = None
    summary = {"beamtune.trials": len(trials), "beamtune.errors": len(errors)}
    if best is not None:
        label = tracking.trial_label(spec.stage, best.params, sorted(spec.space))
        summary.update({"beamtune.best_trial": best.trial_name, "beamtune.best_checkpoint": str(best.checkpoint),
                        tracking.DESCRIPTION_TAG: f"**Best trial: {label}** ({spec.metric} {best.value:.4f} at epoch "
                        f"{best.epoch}, its best checkpoint); {len(trials)} trials, {len(errors)} failed. "
                        f"`beamtune best --sweep {spec.name}` ranks them; `beamtune report --sweep {spec.name}` makes "
                        "the table."})
    # No child run may stay RUNNING; a tracking server that is down by now costs one line (replay later).
    journals = tracking.spool_dir(directory)
    tracking.finish_sweep(uri, journals, state["experiment_id"], parent_run_id, trials, errors, summary,
                          {f"best_{spec.metric}": best.value} if best is not None else {},
                          tracking.UnreachableWarning(uri, journals, spec.name))
    if best is not None and best.mlflow_run_id:
        tracking.mark_best(uri, journals, best.trial_id, best.mlflow_run_id)
    return best


def note_incomplete(name: str, storage: str | os.PathLike | None = None) -> str | None:
    """If no driver runs sweep `name` and it did not end, say so in MLflow (parent and RUNNING
    trial runs KILLED, tag `beamtune.incomplete`) and return the reason (None if it is complete)."""
    from storage.best import incomplete

    reason = incomplete(storage, name)
    if reason is None:
        return None
    directory = sweep_dir(storage, name)
    state = json.loads((directory / SWEEP_FILE).read_text())
    hint = f"{reason}; continue it with `beamtune sweep --resume {name}`"
    # What the trials journaled but did not get into MLflow before the driver died goes first: a
    # trial that ended has its run ended as it ended, not marked KILLED. Journals that still do not
    # replay (tracking down) are replayed by `--resume` or `beamtune sync`.
    tracking.replay_all(state["tracking_uri"], tracking.spool_dir(directory))
    try:
        with tracking.answering(state["tracking_uri"]):
            tracking.mark_incomplete(state["tracking_uri"], state["experiment_id"], state["parent_run_id"], hint)
    except TrackingStoreError as error:  # what the sweep folder says still holds; MLflow catches up next time
        return f"{hint} (not marked in MLflow: {error})"
    return hint


def load_sweep_spec(name: str, storage: str | os.PathLike | None = None) -> SweepSpec:
    """The spec a sweep was started with (for --resume NAME)."""
    from sweeps.spec import read_saved_spec, validate

    path = sweep_dir(storage, name) / SPEC_FILE
    if not path.is_file():
        raise SweepError(f"nothing to resume: no sweep named {name!r} under {resolve_storage(storage)}")
    return validate(read_saved_spec(path), storage)
