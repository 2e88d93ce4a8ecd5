"""The `beamtune` command line, one module per command family over a thin shared layer:

    sweeps/cli/common.py   one-line errors (exit 2), choices and defaults taken from core
    sweeps/cli/train.py    train              (core only)
    sweeps/cli/decode.py   decode, gd-oracle, search-error  (core only)
    sweeps/cli/sweep.py    sweep, best, sync  (Ray Tune + MLflow, imported when run)
    sweeps/cli/study.py    study run | status, report   (studies, and tables and plots from MLflow)
"""
from __future__ import annotations

import typer

from sweeps.cli import decode, study, sweep, train

app = typer.Typer(
    help="beamtune: search-aware training of neural sequence taggers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(train.train)
app.command()(decode.decode)
app.command("gd-oracle")(decode.gd_oracle)
app.command("search-error")(decode.search_error)
app.command()(sweep.sweep)
app.command()(sweep.best)
app.command()(sweep.sync)
app.add_typer(study.study_app, name="study")
app.command()(study.report)


def main() -> None:  # pragma: no cover - console entry point
    app()
