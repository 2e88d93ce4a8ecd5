"""`beamtune sweep` and `beamtune best`: hyperparameter sweeps on Ray Tune with MLflow tracking
(sweeps.launch) and the best checkpoint of a finished sweep (storage.best). Ray, MLflow and
core are imported only when a command runs: a spec is checked in full before Ray starts.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sweeps.cli.common import fail, spec_errors

SWEEP_STORAGE_HELP = "Folder of sweeps (also $BEAMTUNE_SWEEPS; default ./runs/sweeps). On a cluster: a path every node shares."


def sweep(
    spec: Optional[Path] = typer.Argument(None, help="Sweep spec (YAML), e.g. sweeps/specs/quickstart.yaml."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the killed sweep NAME instead (no SPEC)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="With --resume: run the trials that ended in an "
                                      "error again too, each from its last checkpoint (after fixing their cause)."),
    address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="Ray cluster to join (default: start a local Ray)."),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=SWEEP_STORAGE_HELP),
    tracking_uri: Optional[str] = typer.Option(None, envvar="MLFLOW_TRACKING_URI",
                                               help="MLflow tracking URI (default: sqlite:///mlflow.db here)."),
    num_cpus: Optional[int] = typer.Option(None, min=1, help="CPUs of the local Ray (default: all)."),
    quiet: bool = typer.Option(False, "--quiet", help="No live progress."),
    verbose: bool = typer.Option(False, "--verbose", help="Ray's own progress tables and trial output instead of the compact view."),
) -> None:
    """Run a hyperparameter sweep on Ray Tune, logging to MLflow; print the best trial at the end."""
    from sweeps.spec import SpecError, load_spec

    if (spec is None) == (resume is None):
        fail("give a SPEC file, or --resume NAME (not both)")
    if retry_failed and resume is None:
        fail("--retry-failed retries the failed trials of a sweep: use it with --resume NAME")
    try:  # the whole spec is checked before Ray is even imported
        spec_obj = load_spec(spec, storage) if resume is None else None
    except SpecError as error:
        spec_errors(error)
    from storage.db import TrackingStoreError
    from sweeps.launch import SweepError, load_sweep_spec, run_sweep
    from sweeps.preflight import preflight

    try:
        spec_obj = spec_obj or load_sweep_spec(resume, storage)
        preflight(spec_obj, storage, address, num_cpus)  # the data and checkpoint it names, before Ray starts
        outcome = run_sweep(spec_obj, storage=storage, tracking_uri=tracking_uri, address=address, num_cpus=num_cpus,
                            resume=resume is not None, retry_failed=retry_failed, verbose=1 if verbose else 0,
                            progress=not quiet)
    except SpecError as error:
        spec_errors(error)
    except (SweepError, TrackingStoreError) as error:
        fail(str(error))
    except KeyboardInterrupt:
        name = resume or spec_obj.name
        typer.echo(f"error: interrupted; the finished trials and the others' checkpoints are kept: continue with "
                   f"`beamtune sweep --resume {name}`", err=True)
        raise typer.Exit(code=130) from None
    from storage.tracking import ui_command

    typer.echo(f"\nsweep {outcome.name}: {outcome.trials} trials ({outcome.errors} failed) in {outcome.seconds:.0f} s")
    if outcome.best is not None:
        best = outcome.best
        from storage.tracking import trial_label

        label = trial_label(spec_obj.stage, best.params, sorted(spec_obj.space))
        typer.echo(f"best trial {label} ({best.trial_name}): {spec_obj.metric} {best.value:.4f} at epoch {best.epoch} "
                   "(best checkpoint)")
        typer.echo(f"checkpoint {best.checkpoint}")
        typer.echo(f"export it: beamtune best --sweep {outcome.name} --export runs/{outcome.name}-best")
    typer.echo(f"MLflow: parent run {outcome.parent_run_id} (experiment {outcome.experiment_id}) at {outcome.tracking_uri}")
    typer.echo(f"MLflow UI: {ui_command(outcome.tracking_uri)}")
    if outcome.trials and outcome.errors == outcome.trials:  # a sweep that produced nothing is a failure
        typer.echo(f"error: all {outcome.trials} trials failed: {outcome.common_failure()}; every error is in MLflow "
                   f"and {outcome.directory}", err=True)
        raise typer.Exit(code=1)


def sync(
    sweep_name: str = typer.Option(..., "--sweep", help="Sweep name (its folder under the sweep storage)."),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=SWEEP_STORAGE_HELP),
) -> None:
    """Replay the MLflow writes a sweep journaled while its tracking server did not answer."""
    import json

    from storage import tracking
    from storage.best import SWEEP_FILE, sweep_dir

    directory = sweep_dir(storage, sweep_name)
    if not (directory / SWEEP_FILE).is_file():
        fail(f"no sweep named {sweep_name!r} in {directory.parent} ({SWEEP_FILE} missing)")
    uri = json.loads((directory / SWEEP_FILE).read_text())["tracking_uri"]
    failing = tracking.replay_all(uri, tracking.spool_dir(directory))
    if failing:
        key, error = next(iter(failing.items()))
        fail(f"MLflow tracking at {uri} still does not answer ({key}: {error}); {len(failing)} run(s) still pending")
    typer.echo(f"sweep {sweep_name}: every journaled MLflow write is in {uri}")


def best(
    sweep_name: str = typer.Option(..., "--sweep", help="Sweep name (its folder under the sweep storage)."),
    metric: Optional[str] = typer.Option(None, help="Rank by this reported metric (default: the sweep's)."),
    mode: Optional[str] = typer.Option(None, help="max or min (default: the sweep's, or min for losses)."),
    export: Optional[Path] = typer.Option(None, help="Copy the best trial's best checkpoint here (for `beamtune decode`)."),
    top: int = typer.Option(10, min=1, help="Rows to print."),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=SWEEP_STORAGE_HELP),
) -> None:
    """Rank a sweep's trials by their best checkpointed metric (not their last) and export the best."""
    from storage.best import SweepNotFound, export_checkpoint, sweep_metric, trial_rankings

    if mode is not None and mode not in ("max", "min"):
        fail(f"--mode must be max or min, got {mode!r}")
    try:
        ranking = trial_rankings(storage, sweep_name, metric, mode)
    except SweepNotFound as error:
        fail(str(error))
    from sweeps.launch import note_incomplete

    unfinished = note_incomplete(sweep_name, storage)
    if unfinished:  # the ranking below is of what finished; MLflow now shows the runs as KILLED
        typer.echo(f"warning: sweep {sweep_name} is incomplete: {unfinished}", err=True)
    metric = metric or sweep_metric(storage, sweep_name)[0]
    varied = sorted({k for t in ranking for k, v in t.params.items() if any(o.params.get(k) != v for o in ranking)})
    header = ["rank", "trial", metric, "epoch", *varied, "mlflow run"]
    rows = []
    for i, t in enumerate(ranking[:top], 1):
        values = [f"{t.params.get(k):.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k)) for k in varied]
        rows.append([str(i), t.trial_name, f"{t.value:.4f}", str(t.epoch), *values, t.mlflow_run_id or "-"])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if export is not None:
        directory = export_checkpoint(ranking[0], export)
        typer.echo(f"exported {ranking[0].trial_name} (epoch {ranking[0].epoch}) to {directory}; "
                   f"run it: beamtune decode --checkpoint {directory}")
