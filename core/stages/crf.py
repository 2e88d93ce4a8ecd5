"""The CRF stage (Tu & Gimpel 2019): objectives crf and crf+, a BLSTM-CRF(+) trained on the CRF
negative log-likelihood and decoded by Viterbi; its checkpoints (kind "crf") are the energies
inference networks are trained and decoded against.

`config.model` may override the model config's hidden, word_dim, char_filters and char_dim;
crf+ switches on the char CNN and dropout 0.5 (`paper_options`).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.config import build_vocabs_and_vectors, task_meta
from core.crf import BLSTMCRF, CRFConfig
from core.data import Batch, TaskData
from core.decoding import score_decoder
from core.loading import load_crf

if TYPE_CHECKING:
    from core.stages import TrainConfig

OBJECTIVES = ("crf", "crf+")


def paper_options(config: TrainConfig, plus: bool, word_dim: int | None) -> dict[str, Any]:
    """The paper's model settings, then the run's overrides: H = 100, word dimension 100 unless
    pretrained vectors (or the CRF's) set it; "+" means char CNN (50 filters) and dropout 0.5."""
    options: dict[str, Any] = {"hidden": 100, "word_dim": 100, "char_filters": 50 if plus else 0,
                               "dropout": 0.5 if plus else 0.0, **config.model}
    if not plus:
        options["char_filters"] = 0
    if word_dim is not None:
        options["word_dim"] = word_dim
    return options


class CRFStage:
    """The `Stage` (core.stages) of the objectives crf and crf+."""

    kind = "crf"
    decoder = "viterbi"
    scores_epoch_zero = False

    def __init__(self, config: TrainConfig, task: TaskData, device: torch.device):
        self.config, self.task = config, task
        if config.resume_from:
            self.model, self.vocabs, _ = load_crf(config.resume_from, str(device))
            return
        self.vocabs, vectors = build_vocabs_and_vectors(config, task)
        plus = config.objective == "crf+"
        options = paper_options(config, plus, vectors.shape[1] if vectors is not None else None)
        options.setdefault("finetune_embeddings", plus or vectors is None)
        sizes = dict(n_words=len(self.vocabs.words), n_chars=len(self.vocabs.chars), n_labels=len(self.vocabs.labels))
        self.model = BLSTMCRF(CRFConfig(**sizes, **options))
        if vectors is not None:
            self.model.encoder.word_embedding.weight.data.copy_(vectors)
        self.model.to(device)

    def loss(self, batch: Batch, epoch: int) -> torch.Tensor:
        unary = self.model.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
        losses = self.model.nll(unary, batch.labels, batch.mask)  # (B,)
        return losses.sum() / batch.lengths.sum()

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        return {}

    def _score(self, sentences) -> dict[str, Any]:
        result = score_decoder(sentences, self.vocabs, self.task.metric, self.decoder, crf=self.model)
        result.pop("_pred")
        return result

    def dev_score(self) -> dict[str, Any]:
        return self._score(self.task.dev)

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "objective": self.config.objective, "model_config": self.model.config.to_dict(),
                "vocabs": self.vocabs.to_dict(), "task": task_meta(self.task), "train_config": asdict(self.config),
                "energy": None}

    def final_scores(self, best: Path, epochs_trained: int) -> dict[str, Any]:
        """Viterbi scores, with energies and search error, of the checkpoint in `best` on dev and test."""
        self.model, _, _ = load_crf(best, str(next(self.model.parameters()).device))
        return {split: {self.decoder: self._score(sentences)} for split, sentences in (("dev", self.task.dev), ("test", self.task.test))}
