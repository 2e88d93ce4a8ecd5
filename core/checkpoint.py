"""Checkpoints: a directory with a JSON manifest and weights-only tensor files.

    DIR/checkpoint.json          format, kind, model config, vocabularies, training metadata,
                                 and the SHA-256 of each tensor file it points to
    DIR/weights-<sha12>.pt       model state_dict        (torch.save, read with weights_only=True)
    DIR/state-<sha12>.pt         optimizer state, epoch   (optional; for resuming)

Writes are atomic without ever leaving a moment with no valid checkpoint: tensor files are
content-addressed and written first (temp file + fsync + rename), then the manifest is replaced
atomically, then files no manifest points to are removed. A crash at any point leaves either the
old or the new checkpoint, whole. Loading never unpickles arbitrary objects, and checks sizes and
checksums so a truncated or corrupted file gives one clear error, that every tensor is finite (naming
the first that is not), and that the vocabularies match the model's sizes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "beamtune-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"


class CheckpointError(ValueError):
    """A missing, corrupt or mismatched checkpoint; the message names the directory."""


class JsonConfig:
    """Mixin for the model-config dataclasses that checkpoints store as JSON."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        missing = {f.name for f in fields(cls) if f.default is MISSING} - set(d)  # type: ignore[arg-type]
        if missing:
            raise ValueError(f"{cls.__name__}: missing fields {sorted(missing)}")
        return cls(**d)


@dataclass
class Checkpoint:
    directory: Path
    meta: dict[str, Any]  # everything in checkpoint.json except the file table
    weights: dict[str, torch.Tensor]
    training_state: dict[str, Any] | None


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_directory(path: str | os.PathLike) -> Path:
    """Create (if needed) and return the directory a run writes its checkpoints to; a path that is
    an existing file, or cannot be created, is a CheckpointError naming it, not a traceback."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"output directory {path}: exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"output directory {path}: cannot create it: {error.strerror or error}") from None
    return path


def _tensor_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    meta: dict[str, Any],
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write `model`'s weights, JSON-serialisable `meta` (must include "kind") and an optional
    weights-only-loadable `training_state` to `directory` atomically. Returns the directory."""
    if "kind" not in meta:
        raise ValueError("checkpoint meta must name its 'kind' (e.g. 'seq2seq')")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    blobs = {"weights": model.state_dict()}
    if training_state is not None:
        blobs["state"] = training_state
    for role, obj in blobs.items():
        data = _tensor_bytes(obj)
        digest = hashlib.sha256(data).hexdigest()
        name = f"{role}-{digest[:12]}.pt"
        if not (directory / name).exists():
            atomic_write(directory / name, data)
        files[role] = {"file": name, "sha256": digest, "bytes": len(data)}
    manifest = {"format": FORMAT, "version": VERSION, **meta, "files": files}
    atomic_write(directory / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    # Only now that the new manifest is in place may the previous tensor files go.
    keep = {entry["file"] for entry in files.values()}
    for old in directory.glob("*-????????????.pt"):
        if old.name not in keep and old.name.split("-")[0] in ("weights", "state"):
            old.unlink(missing_ok=True)
    return directory


def _file_entry(directory: Path, role: str, entry: Any) -> dict[str, Any]:
    """The manifest's entry for one tensor file, checked: a plain file name, its SHA-256 and size."""
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int)):
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST}: files.{role} must give file, sha256 and bytes, "
                              f"got {entry!r}")
    if Path(entry["file"]).name != entry["file"] or entry["file"] in ("", ".", ".."):
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST}: files.{role}.file {entry['file']!r} is not a file "
                              "name inside the checkpoint directory")
    return entry


def _non_finite(obj: Any, prefix: str = "") -> tuple[str, int] | None:
    """The first floating-point tensor in a (nested) state dict with NaN or inf values, as
    (dotted name, count of non-finite values); None when every tensor is finite."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            bad = int((~torch.isfinite(obj)).sum())
            if bad:
                return prefix, bad
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found:
            return found
    return None


def _read_tensor_file(directory: Path, role: str, entry: Any) -> Any:
    """Load one tensor file after checking its size and SHA-256, and that every floating-point
    tensor in it is finite: a NaN weight would otherwise decode to garbage without a word."""
    entry = _file_entry(directory, role, entry)
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory}: {entry['file']} is missing")
    data = path.read_bytes()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"checkpoint {directory}: {entry['file']} is corrupt (size or SHA-256 differs from {MANIFEST})")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # a weights-only load refuses pickled code
        raise CheckpointError(f"checkpoint {directory}: {entry['file']} cannot be loaded safely: {error}") from None
    if role == "weights" and not (isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CheckpointError(f"checkpoint {directory}: {entry['file']} is not a state dict of tensors")
    bad = _non_finite(obj)
    if bad:
        raise CheckpointError(f"checkpoint {directory}: tensor {bad[0]} in {entry['file']} has {bad[1]} non-finite "
                              "values (NaN or inf)")
    return obj


def load_checkpoint(directory: str | os.PathLike, kind: str | None = None) -> Checkpoint:
    """Read and verify a checkpoint; with `kind`, refuse a checkpoint of another kind."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory}: no such directory")
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {directory}: no {MANIFEST} (not a beamtune checkpoint, or never completed)")
    try:  # utf-8-sig: a manifest someone opened and saved again may have gained a BOM
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {directory}: format version {manifest.get('version')} is not supported (expected {VERSION})")
    if kind is not None and manifest.get("kind") != kind:
        raise CheckpointError(f"checkpoint {directory}: holds a {manifest.get('kind')!r} model, expected {kind!r}")
    files = manifest.pop("files", {})
    if not isinstance(files, dict) or "weights" not in files:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST}: files lists no weights file")
    weights = _read_tensor_file(directory, "weights", files["weights"])
    state = _read_tensor_file(directory, "state", files["state"]) if "state" in files else None
    return Checkpoint(directory, manifest, weights, state)


def weights_digest(directory: str | os.PathLike) -> str | None:
    """The SHA-256 of a checkpoint's weights file, as its manifest records it (None if it has none):
    names a model's weights wherever the checkpoint has been copied to."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_bytes().decode("utf-8-sig"))
        return manifest["files"]["weights"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_weights(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Load weights into a model built from the checkpoint's config, with a clear error on mismatch."""
    try:
        model.load_state_dict(checkpoint.weights, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0:2]
        raise CheckpointError(f"checkpoint {checkpoint.directory}: weights do not match the model config: {' '.join(first)}") from None


def _check_vocab_sizes(directory, model_config: dict[str, Any], vocabs) -> None:
    """Each vocabulary must have exactly the rows the model was built with: a truncated label list
    would otherwise end in an IndexError at the first prediction of a missing label."""
    for name, field_name in (("words", "n_words"), ("chars", "n_chars"), ("labels", "n_labels")):
        size = len(getattr(vocabs, name))
        if field_name in model_config and model_config[field_name] != size:
            raise CheckpointError(f"checkpoint {directory}: vocabs.{name} has {size} entries but the model was built "
                                  f"with {field_name} = {model_config[field_name]}")


def load_model(directory: str | os.PathLike, kind: str, config_class: type, model_class: type, device: str | torch.device = "cpu"):
    """Rebuild a model of `kind` from its checkpoint: (model in eval mode on `device`, vocabularies,
    meta). A config or vocabulary the code cannot rebuild is a CheckpointError, like a corrupt file."""
    from core.data import Vocabs

    checkpoint = load_checkpoint(directory, kind=kind)
    try:
        model = model_class(config_class.from_dict(checkpoint.meta["model_config"]))
        vocabs = Vocabs.from_dict(checkpoint.meta["vocabs"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {directory}: bad model config or vocabularies: {error}") from None
    _check_vocab_sizes(directory, checkpoint.meta["model_config"], vocabs)
    load_weights(model, checkpoint)
    return model.to(device).eval(), vocabs, checkpoint.meta
