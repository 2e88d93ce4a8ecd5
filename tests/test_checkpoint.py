"""Checkpoints: round trip, atomic replacement, and clear errors for every kind of damage."""
from __future__ import annotations

import json

import pytest
import torch

from core.checkpoint import MANIFEST, CheckpointError, load_checkpoint, load_weights, save_checkpoint
from helpers import tiny_tagger


def _save(directory, model=None, **meta):
    model = model or tiny_tagger()
    save_checkpoint(directory, model, {"kind": "seq2seq", "epoch": 1, **meta}, {"epoch": 1, "lr": 0.1})
    return model


class TestSaveLoad:
    def test_round_trip(self, tmp_path):
        model = _save(tmp_path, note="hello")
        checkpoint = load_checkpoint(tmp_path, kind="seq2seq")
        assert checkpoint.meta["note"] == "hello"
        assert checkpoint.training_state == {"epoch": 1, "lr": 0.1}
        fresh = tiny_tagger(seed=99)
        load_weights(fresh, checkpoint)
        for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), name

    def test_resave_replaces_old_files(self, tmp_path):
        _save(tmp_path)
        _save(tmp_path, model=tiny_tagger(seed=1))
        assert len(list(tmp_path.glob("weights-*.pt"))) == 1
        assert len(list(tmp_path.glob("state-*.pt"))) == 1
        assert not list(tmp_path.glob(".*tmp"))

    def test_meta_needs_kind(self, tmp_path):
        with pytest.raises(ValueError, match="kind"):
            save_checkpoint(tmp_path, tiny_tagger(), {})


class TestLoadErrors:
    def test_missing_directory(self, tmp_path):
        with pytest.raises(CheckpointError, match="no such directory"):
            load_checkpoint(tmp_path / "nope")

    def test_missing_manifest(self, tmp_path):
        with pytest.raises(CheckpointError, match=f"no {MANIFEST}"):
            load_checkpoint(tmp_path)

    def test_garbled_manifest(self, tmp_path):
        _save(tmp_path)
        (tmp_path / MANIFEST).write_text("{not json")
        with pytest.raises(CheckpointError, match="not valid JSON"):
            load_checkpoint(tmp_path)

    def test_truncated_weights(self, tmp_path):
        _save(tmp_path)
        weights = next(tmp_path.glob("weights-*.pt"))
        weights.write_bytes(weights.read_bytes()[:100])
        with pytest.raises(CheckpointError, match="corrupt"):
            load_checkpoint(tmp_path)

    def test_missing_weights(self, tmp_path):
        _save(tmp_path)
        next(tmp_path.glob("weights-*.pt")).unlink()
        with pytest.raises(CheckpointError, match="missing"):
            load_checkpoint(tmp_path)

    def test_wrong_kind(self, tmp_path):
        _save(tmp_path)
        with pytest.raises(CheckpointError, match="expected 'crf'"):
            load_checkpoint(tmp_path, kind="crf")

    def test_mismatched_config(self, tmp_path):
        _save(tmp_path)
        other = tiny_tagger(n_labels=7)
        with pytest.raises(CheckpointError, match="do not match"):
            load_weights(other, load_checkpoint(tmp_path))

    def test_refuses_pickled_code(self, tmp_path):
        # A file whose checksum is right but which holds an arbitrary pickled object must not load.
        _save(tmp_path)
        weights = next(tmp_path.glob("weights-*.pt"))
        torch.save({"evil": Exploit()}, weights)
        manifest = json.loads((tmp_path / MANIFEST).read_text())
        import hashlib

        data = weights.read_bytes()
        manifest["files"]["weights"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        (tmp_path / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(CheckpointError, match="cannot be loaded safely"):
            load_checkpoint(tmp_path)


class Exploit:
    def __reduce__(self):
        return (print, ("unpickled!",))
