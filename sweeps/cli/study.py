"""`beamtune study run | status` and `beamtune report`: experiments as code, results from MLflow."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, NoReturn, Optional

import typer

study_app = typer.Typer(help="Run a whole experiment (a study file of stages) and see where it stands.",
                        no_args_is_help=True)

from sweeps.cli.sweep import SWEEP_STORAGE_HELP as STORAGE_HELP
TRACKING_HELP = "MLflow tracking URI (default: sqlite:///mlflow.db here)."
SET_HELP = "Override a spec field: KEY=VALUE for every stage (epochs=3), stages.NAME.FIELD=VALUE for one."


def _fail(lines: list[str]) -> NoReturn:
    """One `error: FIELD: ...` line per problem, exit 2 (as sweeps.cli.common.spec_errors)."""
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code=2)


def _load(file: Path, overrides: list[str], need_data: bool = True):
    from sweeps.study import StudyError, load_study

    try:
        return load_study(file, overrides, need_data)
    except StudyError as error:
        _fail(error.problems)


@study_app.command("run")
def study_run(
    file: Path = typer.Argument(..., help="Study file (YAML), e.g. sweeps/studies/quickstart.yaml."),
    resume: bool = typer.Option(False, "--resume", help="Same as running it again: finished stages are skipped."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Also run the failed trials of the stages to run "
                                      "again, each from its last checkpoint (after fixing their cause)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    stages: Optional[str] = typer.Option(None, "--stages", help="Run only these stages (comma-separated) and the stages "
                                         "they warm-start from; the whole study is still validated."),
    address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="Ray cluster to join (default: local Ray)."),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=STORAGE_HELP),
    tracking_uri: Optional[str] = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
    num_cpus: Optional[int] = typer.Option(None, min=1, help="CPUs of the local Ray (default: all)."),
    out: Optional[Path] = typer.Option(None, help="Report folder (default: STORAGE/.studies/NAME/report)."),
    verbose: bool = typer.Option(False, "--verbose", help="Ray's own progress tables instead of the compact view."),
    parallel: bool = typer.Option(False, "--parallel", help="Start each stage as soon as the stage it warm-starts "
                                  "from has finished, in its own driver process, all on one Ray (default: one stage "
                                  "at a time)."),
) -> None:
    """Run the study's stages in dependency order (resuming what was interrupted), then its report."""
    from storage.best import resolve_storage
    from storage.db import TrackingStoreError
    from sweeps.launch import SweepError
    from sweeps.spec import SpecError
    from sweeps.study import StudyError, select_stages
    from sweeps.study_run import run_study

    study = _load(file, set_)
    del resume  # running a study always resumes: the flag is there for people who expect it
    try:
        chosen = select_stages(study, [s.strip() for s in stages.split(",")]) if stages is not None else None
        _preflight(study, chosen)
        statuses = run_study(study, storage=storage, tracking_uri=tracking_uri, address=address, num_cpus=num_cpus,
                             verbose=1 if verbose else 0, say=lambda line: typer.echo(line, err=True), stages=chosen,
                             retry_failed=retry_failed, parallel=parallel)
    except (StudyError, SpecError) as error:
        _fail(error.problems)
    except (SweepError, TrackingStoreError) as error:
        _fail([str(error)])
    except KeyboardInterrupt:
        typer.echo(f"error: interrupted; finished stages and trials are kept: run `beamtune study run {file}` with the "
                   f"same settings again to continue", err=True)
        raise typer.Exit(code=130) from None
    for name, status in statuses.items():
        typer.echo(status.line(name, study.stages[name].spec.metric))
    _report(study, storage, tracking_uri, out or resolve_storage(storage) / ".studies" / study.name / "report", chosen)


def _preflight(study, chosen: list[str] | None) -> None:
    """The files the stages to run name that are cheap to check (embeddings), before Ray starts."""
    from sweeps.preflight import embeddings_problems

    problems = [f"stages.{name}.spec.{problem}" for name in chosen or study.stages
                for problem in embeddings_problems(study.stages[name].spec)]
    if problems:
        _fail(problems)


def _report(study, storage: Optional[Path], tracking_uri: Optional[str], out: Path, chosen: list[str] | None = None) -> None:
    from storage.db import TrackingStoreError
    from storage.report import build_report
    from storage.tracking import answering, resolve_tracking_uri
    from sweeps.study_run import study_run_id

    uri = resolve_tracking_uri(tracking_uri)
    header = [study.title]
    if study.reduced:
        header.append(f"REDUCED run: {' '.join('--set ' + repr(o) for o in study.overrides)}")
    if chosen is not None and len(chosen) < len(study.stages):
        header.append(f"stages run (--stages): {', '.join(chosen)}")
    run_id = study_run_id(study, storage, uri)
    try:
        with answering(uri):
            report = build_report(uri, [study.sweep_name(s) for s in study.stages], out, refs=study.references,
                                  header=header, also_log_to=[run_id] if run_id else [], not_started_ok=True)
    except TrackingStoreError as error:
        _fail([str(error)])
    typer.echo(report.files["md"].read_text().split("\n\n", 1)[-1])
    typer.echo(f"report: {report.files['html']}")


@study_app.command("status")
def study_status(
    file: Path = typer.Argument(..., help="Study file (YAML)."),
    set_: List[str] = typer.Option([], "--set", help=SET_HELP),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=STORAGE_HELP),
) -> None:
    """Each stage: pending, running, interrupted, finished (best trial and score) or failed."""
    from sweeps.study_status import stage_status

    from sweeps.launch import note_incomplete

    study = _load(file, set_)
    for name, status in stage_status(study, storage).items():
        typer.echo(status.line(name, study.stages[name].spec.metric))
        if status.state == "interrupted":  # its driver is gone: MLflow shows it KILLED, not running
            note_incomplete(study.sweep_name(name), storage)


def report(
    sweep: List[str] = typer.Option([], "--sweep", help="A sweep to report (repeat for several)."),
    study: Optional[Path] = typer.Option(None, "--study", help="A study file: every stage's sweep."),
    tracking_uri: Optional[str] = typer.Option(None, envvar="MLFLOW_TRACKING_URI", help=TRACKING_HELP),
    out: Path = typer.Option(Path("runs/report"), help="Folder for report.md, report.csv, report.html, plots/."),
    refs: Optional[Path] = typer.Option(None, help="Paper values (YAML: row -> {column: value}) shown beside ours."),
    ui_url: str = typer.Option("http://127.0.0.1:5000", help="MLflow UI address the HTML cells link to."),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=STORAGE_HELP),
) -> None:
    """Tables (Goyal et al. layout) and plots from MLflow, written to OUT and logged to the runs."""
    from storage.db import TrackingStoreError
    from storage.runs import SweepNotTracked
    from storage.tracking import answering, resolve_tracking_uri

    if bool(sweep) == bool(study):
        _fail(["give --study FILE or one or more --sweep NAME"])

    uri = resolve_tracking_uri(tracking_uri)
    try:
        with answering(uri):
            built = _build(study, sweep, storage, uri, out, refs, ui_url)
    except (SweepNotTracked, TrackingStoreError) as error:
        _fail([str(error)])
    typer.echo(built.files["md"].read_text())
    typer.echo(f"report: {built.files['html']}", file=sys.stderr)


def _build(study: Optional[Path], sweep: list[str], storage: Optional[Path], uri: str, out: Path, refs: Optional[Path],
           ui_url: str):
    """`beamtune report`'s report: a study's header (its overrides, from its MLflow run) and tables."""
    from storage.report import build_report
    from storage.tracking import run_tag
    from sweeps.study_run import study_run_id

    header, names, also = [], list(sweep), []
    if study is not None:
        loaded = _load(study, [], need_data=False)  # the report reads MLflow only: no data root needed
        names, refs = [loaded.sweep_name(s) for s in loaded.stages], refs or loaded.references
        header = [loaded.title]
        also = [r for r in [study_run_id(loaded, storage, uri)] if r]
        overrides = run_tag(uri, also[0], "beamtune.overrides", "none") if also else "none"
        if overrides != "none":  # the study ran reduced: its report says so in its header
            header.append(f"REDUCED run, --set overrides: {overrides}")
        previous = run_tag(uri, also[0], "beamtune.overrides.previous", "") if also else ""
        if previous:  # stages finished before the latest invocation ran under these
            header.append(f"(an earlier invocation, whose finished stages were kept, had: {previous})")
    return build_report(uri, names, out, refs=refs, header=header, ui_url=ui_url, also_log_to=also,
                        not_started_ok=study is not None)
