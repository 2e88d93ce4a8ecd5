"""The thin layer every `beamtune` command shares: one-line errors (exit 2), choice enums built
from core's own tuples, defaults read from core's config dataclasses, and the common options.

Every expected failure (bad data, bad checkpoint, bad option, NaN loss) ends in one line on
stderr, `error: ...`, and exit status 2; never a traceback.
"""
from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

import typer

DATA_ROOT_HELP = "Folder laid out like shared/data (also from $BEAMTUNE_DATA). Not needed for --task synthetic."
DEVICE_HELP = "auto, cpu, cuda or cuda:N."
THREADS_HELP = "CPU threads for torch (0: torch's default; 1 when runs share cores)."


def choices(name: str, values: Sequence[str]) -> type[Enum]:
    """A str Enum for typer whose members are exactly core's `values` (one source of truth)."""
    return Enum(name, {value.replace("-", "_").replace("+", "_plus"): value for value in values}, type=str)


def default(config_class: type, name: str) -> Any:
    """The default of `config_class.name` as the dataclass states it."""
    field = next(f for f in dataclasses.fields(config_class) if f.name == name)
    return field.default if field.default is not dataclasses.MISSING else field.default_factory()


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def spec_errors(error) -> NoReturn:
    """A SpecError: one `error: FIELD: ...` line per problem."""
    for problem in error.problems:
        typer.echo(f"error: {problem}", err=True)
    raise typer.Exit(code=2)


def run_guarded(fn, *args, **kwargs):
    """Call fn, turning the errors a user can cause into one clear line."""
    from core.checkpoint import CheckpointError
    from core.config import TrainingError
    from core.data import DataError

    try:
        return fn(*args, **kwargs)
    except (DataError, CheckpointError, TrainingError, ValueError, FileNotFoundError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)


def path_or_none(path: Optional[Path]) -> str | None:
    return str(path) if path else None


def data_root_option():
    return typer.Option(None, envvar="BEAMTUNE_DATA", help=DATA_ROOT_HELP)


def quiet_option():
    return typer.Option(False, "--quiet", help="No progress bars.")
