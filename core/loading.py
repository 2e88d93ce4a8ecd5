"""Rebuilding trained models from their checkpoint directories, one function per checkpoint kind:

    load_tagger(dir)     kind "seq2seq": the Goyal et al. tagger (ce / dl / hinge)
    load_crf(dir)        kind "crf": BLSTM-CRF(+) (crf / crf+)
    load_infnet(dir)     kind "infnet": an inference network or local baseline (local / infnet)
    load_for_decoding    a "crf" or "infnet" checkpoint with the CRF energy it is decoded against

Each returns (model in eval mode, vocabularies, meta); a checkpoint of another kind is a
CheckpointError naming both kinds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.checkpoint import MANIFEST, CheckpointError, load_checkpoint, load_model
from core.config import resolve_device
from core.crf import BLSTMCRF, CRFConfig
from core.data import Vocabs
from core.infnets import InferenceNetwork, InfnetConfig
from core.seq2seq import Seq2SeqTagger, TaggerConfig


def load_tagger(directory: str | Path, device: str = "cpu") -> tuple[Seq2SeqTagger, Vocabs, dict]:
    """Rebuild a trained tagger from its checkpoint directory: (model in eval mode, vocabs, meta)."""
    return load_model(directory, "seq2seq", TaggerConfig, Seq2SeqTagger, resolve_device(device))


def load_crf(directory: str | Path, device: str = "cpu") -> tuple[BLSTMCRF, Vocabs, dict]:
    return load_model(directory, "crf", CRFConfig, BLSTMCRF, resolve_device(device))


def load_infnet(directory: str | Path, device: str = "cpu") -> tuple[InferenceNetwork, Vocabs, dict]:
    return load_model(directory, "infnet", InfnetConfig, InferenceNetwork, resolve_device(device))


def check_same_labels(infnet_vocabs: Vocabs, crf_vocabs: Vocabs, infnet_dir: Any, crf_dir: Any) -> None:
    """An infnet and its energy must share word and label ids; else one clear error."""
    if infnet_vocabs.labels.itos != crf_vocabs.labels.itos:
        raise CheckpointError(
            f"label sets differ: inference network {infnet_dir} has {len(infnet_vocabs.labels)} labels, "
            f"CRF {crf_dir} has {len(crf_vocabs.labels)} (or a different order); train the infnet with --energy {crf_dir}"
        )
    if infnet_vocabs.words.itos != crf_vocabs.words.itos:
        raise CheckpointError(f"word vocabularies differ between inference network {infnet_dir} and CRF {crf_dir}")


def checkpoint_kind(directory: str | Path) -> str | None:
    """The `kind` a checkpoint's manifest names (None if it has none); errors as load_checkpoint."""
    manifest = Path(directory) / MANIFEST
    if not manifest.is_file():
        load_checkpoint(directory)  # raises the usual clear error
    try:
        return json.loads(manifest.read_text()).get("kind")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        load_checkpoint(directory)
        return None


def load_for_decoding(checkpoint: str | Path, energy: str | Path | None, device: str = "cpu"):
    """(crf or None, infnet or None, vocabs, meta) for a "crf" or "infnet" checkpoint; an infnet's
    energy comes from `energy` or from the path recorded when it was trained."""
    kind = checkpoint_kind(checkpoint)
    if kind == "crf":
        crf, vocabs, meta = load_crf(checkpoint, device)
        return crf, None, vocabs, meta
    if kind == "infnet":
        infnet, vocabs, meta = load_infnet(checkpoint, device)
        energy = energy or meta.get("energy")
        crf = None
        if energy:
            crf, crf_vocabs, _ = load_crf(energy, device)
            check_same_labels(vocabs, crf_vocabs, checkpoint, energy)
        return crf, infnet, vocabs, meta
    raise CheckpointError(f"checkpoint {checkpoint}: holds a {kind!r} model, expected 'crf' or 'infnet'")
