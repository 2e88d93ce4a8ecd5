"""Best-checkpoint selection and export, read straight from a sweep's storage folder.

A sweep lives in `STORAGE/NAME/` (Ray Tune's experiment folder). beamtune adds:

    STORAGE/NAME/beamtune_sweep.json          the MLflow ids of the sweep (storage.tracking)
    STORAGE/NAME/spec.yaml                    the validated spec (what --resume NAME reruns)
    STORAGE/NAME/beamtune_trials.json         the sweep's trials when it last ended (a folder of a
                                              trial that a killed driver never recorded is ignored)
    STORAGE/NAME/<trial>/checkpoint_*/        one per kept epoch (Ray keeps the best ones by the
        checkpoint.json, weights-*.pt, ...    spec's metric, and the latest): that epoch's model
        best/                                 and training state, the trial's best-on-dev so far,
        beamtune_trial.json                   and this sidecar: trial id, MLflow run id, epoch,
                                              that epoch's metrics, the trial's parameters

A trial is ranked by its *best* checkpointed value of the metric (not its last), and what is
exported is the model of exactly that epoch, so `beamtune decode --checkpoint DIR` runs it.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.checkpoint import MANIFEST

TRIAL_SIDECAR = "beamtune_trial.json"
SWEEP_FILE = "beamtune_sweep.json"
TRIALS_FILE = "beamtune_trials.json"  # trial id -> Ray status, written when a sweep (or resume) ends
SPEC_FILE = "spec.yaml"
BEST_SUBDIR = "best"
DEFAULT_STORAGE = "runs/sweeps"


class SweepNotFound(LookupError):
    """No such sweep, or it has no checkpointed trial yet."""


def resolve_storage(storage: str | os.PathLike | None = None) -> Path:
    """Sweep storage root: the flag, else $BEAMTUNE_SWEEPS, else ./runs/sweeps (absolute)."""
    value = storage or os.environ.get("BEAMTUNE_SWEEPS") or DEFAULT_STORAGE
    return Path(value).expanduser().absolute()


def sweep_dir(storage: str | os.PathLike | None, name: str) -> Path:
    return resolve_storage(storage) / name


@dataclass
class TrialBest:
    trial_id: str
    trial_name: str
    value: float
    epoch: int
    checkpoint: Path
    mlflow_run_id: str | None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


DRIVER_LOCK = ".driver.lock"  # held (flock) by the process driving the sweep, released when it dies


def driver_alive(directory: Path) -> bool:
    """Whether some process holds the sweep's driver lock (sweeps.launch takes it for a run)."""
    import fcntl

    path = directory / DRIVER_LOCK
    if not path.is_file():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def incomplete(storage: str | os.PathLike | None, name: str) -> str | None:
    """Why a sweep that no driver is running is not complete (None when it is complete, or running):
    its driver stopped before the end (no trial statuses), or trials did not end."""
    directory = sweep_dir(storage, name)
    if not (directory / SWEEP_FILE).is_file() or driver_alive(directory):
        return None
    trials_file = directory / TRIALS_FILE
    if not trials_file.is_file():
        return "its driver stopped before the sweep ended"
    statuses = json.loads(trials_file.read_text())
    unfinished = sum(status not in ("TERMINATED", "ERROR") for status in statuses.values())
    return f"{unfinished} of {len(statuses)} trials did not end" if unfinished else None


def sweep_metric(storage: str | os.PathLike | None, name: str) -> tuple[str, str]:
    """(metric, mode) of a sweep, from its saved spec."""
    import yaml

    path = sweep_dir(storage, name) / SPEC_FILE
    if not path.is_file():
        return "dev_score", "max"
    data = yaml.safe_load(path.read_text()) or {}
    return data.get("metric", "dev_score"), data.get("mode", "max")


def default_mode(metric: str) -> str:
    return "min" if "loss" in metric else "max"


def matches(params: dict[str, Any], where: dict[str, Any] | None) -> bool:
    """Whether a trial's parameters hold every `where` value. Values compare as text, so a spec's
    `where: {hidden: 200}` matches the trial parameter 200 and a grid's "cnn13" matches cnn13."""
    return all(name in params and str(params[name]) == str(value) for name, value in (where or {}).items())


def trial_rankings(storage: str | os.PathLike | None, name: str, metric: str | None = None,
                   mode: str | None = None, where: dict[str, Any] | None = None) -> list[TrialBest]:
    """Every trial of sweep `name` (those whose parameters match `where`, when given), each at its
    best checkpointed `metric`, best first."""
    root = sweep_dir(storage, name)
    if not root.is_dir():
        raise SweepNotFound(f"no sweep named {name!r} under {root.parent}")
    spec_metric, spec_mode = sweep_metric(storage, name)
    metric = metric or spec_metric
    mode = mode or (spec_mode if metric == spec_metric else default_mode(metric))
    sign = 1.0 if mode == "max" else -1.0
    known = json.loads((root / TRIALS_FILE).read_text()) if (root / TRIALS_FILE).is_file() else None
    best: dict[str, TrialBest] = {}
    for sidecar in root.glob(f"*/checkpoint_*/{TRIAL_SIDECAR}"):
        try:
            info = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a checkpoint being written or deleted right now
        if known is not None and info["trial_id"] not in known:
            continue
        if not matches(info.get("params", {}), where):
            continue
        value = info.get("metrics", {}).get(metric)
        if not isinstance(value, (int, float)) or math.isnan(value):
            continue
        candidate = TrialBest(info["trial_id"], info.get("trial_name", info["trial_id"]), float(value), int(info["epoch"]),
                              sidecar.parent, info.get("mlflow_run_id"), info.get("params", {}), info.get("metrics", {}))
        current = best.get(candidate.trial_id)
        # Ties go to the earlier epoch (the first time the trial reached that value).
        if current is None or sign * candidate.value > sign * current.value or (
                candidate.value == current.value and candidate.epoch < current.epoch):
            best[candidate.trial_id] = candidate
    if not best:
        among = f" among the trials with {where}" if where else ""
        raise SweepNotFound(f"sweep {name!r} under {root.parent} has no checkpointed trial with metric {metric!r}{among}")
    return sorted(best.values(), key=lambda t: (-sign * t.value, t.trial_name))


def best_checkpoint(storage: str | os.PathLike | None, name: str, metric: str | None = None,
                    mode: str | None = None, where: dict[str, Any] | None = None) -> TrialBest:
    return trial_rankings(storage, name, metric, mode, where)[0]


def model_files(checkpoint: Path) -> list[Path]:
    """The files that make up the model checkpoint at `checkpoint` (manifest + tensor files)."""
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    return [checkpoint / MANIFEST] + [checkpoint / entry["file"] for entry in manifest.get("files", {}).values()]


def export_checkpoint(trial: TrialBest, directory: str | os.PathLike) -> Path:
    """Copy the model of `trial`'s best epoch into `directory` (a plain beamtune checkpoint that
    `beamtune decode --checkpoint` and warm starts read), with a provenance file beside it."""
    provenance = {"trial_id": trial.trial_id, "trial_name": trial.trial_name, "epoch": trial.epoch,
                  "value": trial.value, "mlflow_run_id": trial.mlflow_run_id, "source": str(trial.checkpoint),
                  "params": trial.params, "metrics": trial.metrics}
    return copy_model(trial.checkpoint, directory, {"beamtune_export.json": json.dumps(provenance, indent=2)})


def copy_model(source: Path, directory: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Replace `directory` with a copy of the model checkpoint at `source` (and `extra` text files),
    written beside it first, so it is never half there."""
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in model_files(source):
        shutil.copy2(path, tmp / path.name)
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text)
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


ENERGY_SUBDIR = "warm_start_energy"  # a sweep's copy of its warm start's CRF energy (export_energy)


def find_energy(infnet_checkpoint: str | os.PathLike, root: str | os.PathLike) -> Path:
    """The CRF energy an "infnet" checkpoint was trained against. The checkpoint records the
    energy's absolute path at training time (core.stages.infnet, meta "energy"); when the sweeps
    have moved since (another machine or mount point, another --storage), that path is looked for
    under `root` instead: its last two parts are the infnet sweep's folder and "warm_start", where
    that sweep kept its copy of the CRF. A copy found there must have the recorded weights
    (meta "energy_weights_sha256", when the checkpoint has it). Raises SweepNotFound naming both places."""
    from core.checkpoint import load_checkpoint, weights_digest

    meta = load_checkpoint(infnet_checkpoint, kind="infnet").meta
    if not meta.get("energy"):
        raise SweepNotFound(f"inference network {infnet_checkpoint} records no CRF energy (a local baseline?)")
    recorded = Path(meta["energy"])
    moved = resolve_storage(root) / recorded.parent.name / recorded.name
    digest = meta.get("energy_weights_sha256")
    for candidate in (recorded, moved):
        if (candidate / MANIFEST).is_file() and (digest is None or weights_digest(candidate) == digest):
            return candidate
    raise SweepNotFound(f"the CRF energy of inference network {infnet_checkpoint} is neither at {recorded} (recorded "
                        f"when it was trained) nor at {moved}" + (" with the recorded weights" if digest else ""))


def export_energy(infnet_checkpoint: str | os.PathLike, root: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Copy the CRF energy of an "infnet" checkpoint (find_energy) into `directory`, as a warm start
    is copied, so a sweep that evaluates the network holds everything it reads."""
    return copy_model(find_energy(infnet_checkpoint, root), directory)
