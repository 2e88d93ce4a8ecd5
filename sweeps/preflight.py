"""Pre-flight checks of a valid sweep spec against the inputs it names, before Ray starts.

`sweeps.spec` checks the spec itself; these read what it points to, which every trial would
otherwise find broken only after Ray, MLflow and the sweep folder are up: the task's data files
(parsed in full, so a malformed line is reported as `path:line`), the pretrained embeddings file
(as core resolves it: as given, else under the data root), the warm-start checkpoint
(checksums and finite tensors), and whether the local Ray could ever place one trial. Each
problem is one line starting with the spec field it is about, like `SpecError`'s.
"""
from __future__ import annotations

import os
from pathlib import Path

from sweeps.spec import SpecError, SweepSpec


def data_problems(spec: SweepSpec) -> list[str]:
    """The task's train/dev/test files, read as a trial would read them."""
    from core.data import DataError, load_task

    if spec.task == "synthetic":
        return []
    try:
        load_task(spec.task, spec.data_root)
    except DataError as error:
        return [f"data_root: {error}"]
    return []


def embeddings_problems(spec: SweepSpec) -> list[str]:
    """Every `embeddings` file the spec names (fixed, or each value searched) exists, resolved as
    core.config.embeddings_path resolves it for a trial."""
    from core.config import embeddings_path

    named = [("fixed.embeddings", spec.fixed["embeddings"])] if spec.fixed.get("embeddings") else []
    if "embeddings" in spec.space:
        dist = spec.space["embeddings"]
        named += [("space.embeddings", value) for value in (dist.grid or dist.choice or []) if value]
    problems = []
    for field, value in named:
        path = embeddings_path(str(value), spec.data_root)
        if not os.path.isfile(path):
            root = spec.data_root or os.environ.get("BEAMTUNE_DATA")
            problems.append(f"{field}: {value}: no such file (as given, or under the data root {root})")
    return problems


def warm_start_checkpoint_problems(spec: SweepSpec, storage: str | os.PathLike | None) -> list[str]:
    """The warm-start checkpoint loads: manifest, SHA-256 of every tensor file, finite tensors."""
    from core.checkpoint import CheckpointError, load_checkpoint
    from storage.best import SweepNotFound, best_checkpoint

    warm = spec.warm_start
    if warm is None:
        return []
    field = "warm_start.checkpoint" if warm.checkpoint is not None else "warm_start.sweep"
    try:
        path = (Path(warm.checkpoint) if warm.checkpoint is not None
                else best_checkpoint(storage, warm.sweep, warm.metric, where=warm.where).checkpoint)
        load_checkpoint(path)
    except (CheckpointError, SweepNotFound) as error:
        return [f"{field}: {error}"]
    return []


def resource_problems(spec: SweepSpec, address: str | None, num_cpus: int | None) -> list[str]:
    """A trial asking for more CPUs or GPUs than the local Ray has would wait forever. (On a
    cluster the autoscaler may add nodes, so nothing is checked there.)"""
    if (address or os.environ.get("RAY_ADDRESS") or "local") != "local":
        return []
    problems = []
    cpus = num_cpus or os.cpu_count() or 1
    if spec.resources.cpu > cpus:
        problems.append(f"resources.cpu: {spec.resources.cpu:g} CPUs per trial, but the local Ray has {cpus} "
                        "(--num-cpus): no trial could ever start")
    if spec.resources.gpu > 0:
        import torch

        gpus = torch.cuda.device_count()
        if spec.resources.gpu > gpus:
            problems.append(f"resources.gpu: {spec.resources.gpu:g} GPUs per trial, but this machine has {gpus}: "
                            "no trial could ever start")
    return problems


def preflight(spec: SweepSpec, storage: str | os.PathLike | None = None, address: str | None = None,
              num_cpus: int | None = None) -> None:
    """Raise SpecError with every problem found; cheap checks first, the data files last."""
    problems = resource_problems(spec, address, num_cpus) + embeddings_problems(spec)
    problems += warm_start_checkpoint_problems(spec, storage)
    problems += data_problems(spec)
    if problems:
        raise SpecError(problems)
