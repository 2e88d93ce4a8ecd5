"""A study's independent stages at the same time (`beamtune study run --parallel`): each stage's
sweep in its own driver process, started as soon as the stage it warm-starts from has finished,
all on one Ray (the given cluster, or a local one this process starts and keeps for them).

Tune runs one experiment per driver (its search algorithm, scheduler and callbacks are global to
the driver; Ray's FAQ: separate drivers for concurrent Tune runs on one cluster), so stages are
processes, not threads. Ray hands CPUs to the trials of every stage as they free up: a one-trial
stage no longer leaves a CPU idle while the next stage waits for it.

    run_stages_in_parallel(study, root, names, ...)     the parent, from sweeps.study_run.run_study
    python -m sweeps.study_parallel PAYLOAD             one stage's driver (PAYLOAD: JSON, below)

Signals: Ctrl+C or SIGUSR1 to the study interrupts it as it interrupts one sweep: the parent sends
SIGINT to each stage driver (they run in their own process groups, so a terminal's Ctrl+C reaches
them once, from the parent) and waits for each to leave its sweep resumable. A stage driver whose
parent dies (SIGKILL) is sent SIGINT by the kernel (PR_SET_PDEATHSIG), as if interrupted.
A failed stage starts nothing new; the stages already running end first, then the study fails.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from sweeps.study import Study, StudyError
from sweeps.study_status import StageRun, check_stage_ended, plan_stage

POLL_S = 0.5  # how often the parent looks at its stage drivers
INTERRUPTED = 130  # a stage driver's exit status after SIGINT, as the CLI's


def run_stages_in_parallel(study: Study, root: Path, names: list[str], *, uri: str, study_run: str,
                           address: str | None, num_cpus: int | None, verbose: int, say: Callable[[str], None],
                           retry_failed: bool) -> None:
    """Run `names` (in dependency order) as their warm starts allow; returns when all have finished.
    StudyError listing every stage that did not finish (after the running ones have ended)."""
    import ray

    from sweeps.launch import connect

    started_ray = False
    if (address or os.environ.get("RAY_ADDRESS") or "local") == "local":
        started_ray = connect("local", num_cpus, log_to_driver=verbose > 0)
        address = ray.get_runtime_context().gcs_address
    drivers: dict[str, subprocess.Popen] = {}
    try:
        with _usr1_interrupts():
            problems = _schedule(study, root, names, drivers, uri=uri, study_run=study_run, address=address,
                                 verbose=verbose, say=say, retry_failed=retry_failed)
    except BaseException:
        _interrupt(drivers, say)
        raise
    finally:
        if started_ray:
            ray.shutdown()
    if problems:
        raise StudyError(problems)


def _schedule(study: Study, root: Path, names: list[str], drivers: dict[str, subprocess.Popen], *, uri: str,
              study_run: str, address: str, verbose: int, say: Callable[[str], None], retry_failed: bool) -> list[str]:
    """Start each stage whose warm start is done, reap drivers as they end; the problems of those
    that failed. `drivers` holds the running ones (name -> process), for the caller to interrupt."""
    waiting, problems = list(names), []
    while waiting or drivers:
        for name in list(waiting):
            if problems:
                break  # a failed stage starts nothing new; the running ones may still finish
            if study.stages[name].after in waiting or study.stages[name].after in drivers:
                continue
            waiting.remove(name)
            try:
                run = plan_stage(study, root, name, retry_failed, say)
            except StudyError as error:
                problems += error.problems
                continue
            if run is not None:
                say(run.line())
                drivers[name] = _start_driver(run, root, uri=uri, study_run=study_run, address=address, verbose=verbose)
        if problems and not drivers:
            break
        time.sleep(POLL_S)
        for name, driver in list(drivers.items()):
            if driver.poll() is None:
                continue
            del drivers[name]
            try:
                status = check_stage_ended(study, root, name)
            except StudyError as error:
                say(f"stage {name}: its driver ended with status {driver.returncode}: {'; '.join(error.problems)}")
                problems += error.problems
            else:
                say(f"stage {name}: finished ({status.best_trial} {study.stages[name].spec.metric} {status.best_value:.4f})")
    return problems


def _start_driver(run: StageRun, root: Path, *, uri: str, study_run: str, address: str,
                  verbose: int) -> subprocess.Popen:
    payload = {"stage": run.name, "spec": run.spec.to_yaml(), "storage": str(root), "tracking_uri": uri,
               "address": address, "resume": run.resume, "retry_failed": run.retry, "verbose": verbose,
               "study_run_id": study_run, "parent": os.getpid()}
    # The child imports sweeps from where this process did (a checkout on PYTHONPATH, or installed).
    here = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-m", "sweeps.study_parallel", json.dumps(payload)], env=env,
                            process_group=0)


def _interrupt(drivers: dict[str, subprocess.Popen], say: Callable[[str], None]) -> None:
    """SIGINT to each running stage driver, then wait for each to leave its sweep resumable."""
    for name, driver in drivers.items():
        if driver.poll() is None:
            say(f"stage {name}: interrupting its driver (pid {driver.pid})")
            driver.send_signal(signal.SIGINT)
    for driver in drivers.values():
        _wait_uninterrupted(driver)


def _wait_uninterrupted(driver: subprocess.Popen) -> None:
    """Wait for a driver to end even through a second Ctrl+C: its sweep is being left resumable."""
    while True:
        try:
            driver.wait()
            return
        except KeyboardInterrupt:
            continue


class _usr1_interrupts:
    """SIGUSR1 raises KeyboardInterrupt in the parent while stages run (as in one sweep's driver:
    sweeps.launch.Sigusr1Interrupts), for `kill -USR1` from outside a terminal."""

    def __enter__(self):
        self.previous = signal.signal(signal.SIGUSR1, signal.default_int_handler)

    def __exit__(self, *exc):
        signal.signal(signal.SIGUSR1, self.previous)


def _die_with_parent(parent: int) -> None:
    """Linux: SIGINT to this process when its parent exits (a killed study interrupts its stages);
    elsewhere nothing. If the parent is already gone, interrupt now."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGINT)
    if os.getppid() != parent:
        raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """One stage's driver: run_sweep with the parent's settings; 0 once it returned, 130 when
    interrupted (even while torch and Ray load), 2 with one `error: stages.NAME: ...` line for a
    sweep that could not run."""
    payload = json.loads(argv[0])
    try:
        _die_with_parent(payload["parent"])
        return _drive(payload)
    except KeyboardInterrupt:
        return INTERRUPTED


def _drive(payload: dict) -> int:
    from storage.db import TrackingStoreError
    from sweeps.launch import SweepError, run_sweep
    from sweeps.spec import SweepSpec

    try:
        run_sweep(SweepSpec.model_validate(yaml.safe_load(payload["spec"])), storage=payload["storage"],
                  tracking_uri=payload["tracking_uri"], address=payload["address"], resume=payload["resume"],
                  retry_failed=payload["retry_failed"], verbose=payload["verbose"],
                  study_run_id=payload["study_run_id"])
    except (SweepError, TrackingStoreError) as error:
        print(f"error: stages.{payload['stage']}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
