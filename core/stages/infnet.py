"""The inference-network stage (Tu & Gimpel 2019): objectives local and infnet.

    local    an inference-network architecture (cnn13, cnn15, blstm, seq2seq) trained on the
             token loss alone;
    infnet   the same trained on E_Theta(x, A_Psi(x)) + lambda * token loss against a fixed CRF
             (`energy`, a "crf" checkpoint), whose vocabularies and word vectors it shares.

The lambda path has the alpha path's shape (core.stages.seq2seq), from a spec or `--lam`:

    1 sweeps.trainables.build_train_config (or the CLI): TrainConfig(lam="decay:1:0.01"),
      Tu & Gimpel's annealing lambda = e^{-0.01 t}; a plain number is constant
    2 InfnetFields.parse_lam: core.schedules.from_config -> TrainConfig.lam_schedule
    3 InfnetStage.loss(batch, epoch): lam_schedule.at(epoch)
    4 core.objectives.infnet_loss(crf, unary, logits, labels, mask, lam)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.checkpoint import CheckpointError, weights_digest
from core.config import Check, ConfigError, build_vocabs_and_vectors, task_meta
from core.crf import BLSTMCRF
from core.data import Batch, TaskData
from core.decoding import score_decoder
from core.infnets import ARCHITECTURES, InferenceNetwork, InfnetConfig
from core.loading import load_crf, load_infnet
from core.objectives import infnet_loss, token_loss
from core.schedules import from_config
from core.stages.crf import paper_options

if TYPE_CHECKING:
    from core.stages import TrainConfig

OBJECTIVES = ("local", "infnet")


@dataclass(kw_only=True)
class InfnetFields:
    """TrainConfig fields of the inference-network stage."""

    arch: str = "blstm"  # cnn13, cnn15, blstm, seq2seq
    energy: str | None = None  # infnet: the fixed CRF energy (a "crf" checkpoint directory)
    lam: Any = 1.0  # infnet: weight of the token loss, a schedule like alpha ("decay:1:0.01" anneals it)
    plus: bool = False  # the "+" techniques (char CNN, dropout 0.5)
    layers: int = 1  # BLSTM infnet layers

    def infnet_checks(self) -> list[Check]:
        return [
            ("energy", self.objective != "infnet" or self.energy,  # type: ignore[attr-defined]
             "objective 'infnet' needs energy (a trained CRF checkpoint)"),
            ("arch", self.arch in ARCHITECTURES, f"arch must be one of {ARCHITECTURES}"),
            ("layers", self.layers in (1, 2), "layers must be 1 or 2"),
        ]

    def parse_lam(self) -> None:
        try:
            self.lam_schedule = from_config(self.lam)
        except ValueError as error:
            raise ConfigError("TrainConfig", "lam", f"lam: {error}") from None
        epochs = range(1, max(self.epochs, 1) + 1)  # type: ignore[attr-defined]
        if any(self.lam_schedule.at(epoch) < 0 for epoch in epochs):
            raise ConfigError("TrainConfig", "lam", "lam must be >= 0")


class InfnetStage:
    """The `Stage` (core.stages) of the objectives local and infnet."""

    kind = "infnet"
    decoder = "infnet"
    scores_epoch_zero = False

    def __init__(self, config: TrainConfig, task: TaskData, device: torch.device):
        self.config, self.task = config, task
        self.crf: BLSTMCRF | None = None
        if config.objective == "infnet":
            self.crf, crf_vocabs, crf_meta = load_crf(config.energy, str(device))
            if crf_meta["task"]["name"] != task.name:
                raise CheckpointError(f"energy {config.energy} was trained on task {crf_meta['task']['name']!r}, not {task.name!r}")
            self.crf.requires_grad_(False)
        if config.resume_from:
            self.model, self.vocabs, _ = load_infnet(config.resume_from, str(device))
            return
        if self.crf is not None:
            # The CRF's embedding table already holds the pretrained vectors.
            self.vocabs, vectors, word_dim = crf_vocabs, None, self.crf.config.word_dim
        else:
            self.vocabs, vectors = build_vocabs_and_vectors(config, task)
            word_dim = vectors.shape[1] if vectors is not None else None
        options = paper_options(config, config.plus, word_dim)
        # Tu & Gimpel §2.1: pretrained vectors stay fixed except in the "+" setting, for every model
        # (§7); vectors that are not pretrained (random, or a CRF's own learned ones) are trained.
        pretrained = vectors is not None or (self.crf is not None and not self.crf.config.finetune_embeddings)
        options.setdefault("finetune_embeddings", config.plus or not pretrained)
        sizes = dict(n_words=len(self.vocabs.words), n_chars=len(self.vocabs.chars), n_labels=len(self.vocabs.labels))
        self.model = InferenceNetwork(InfnetConfig(arch=config.arch, **sizes, layers=config.layers, **options))
        embedding = self.model.word_embedding()
        if self.crf is not None:  # start from the CRF's (pretrained) word vectors
            embedding.weight.data.copy_(self.crf.encoder.word_embedding.weight.data)
        if vectors is not None:
            embedding.weight.data.copy_(vectors)
        self.model.to(device)

    def loss(self, batch: Batch, epoch: int) -> torch.Tensor:
        logits = self.model(batch.words, batch.chars, batch.lengths).logits  # (B, T, L)
        if self.config.objective == "local":
            losses = token_loss(logits, batch.labels, batch.mask)  # (B,)
        else:
            with torch.no_grad():
                unary = self.crf.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
            lam = self.config.lam_schedule.at(epoch)
            losses = infnet_loss(self.crf.crf, unary, logits, batch.labels, batch.mask, lam)  # (B,)
        return losses.sum() / batch.lengths.sum()

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        return {"lam": self.config.lam_schedule.at(epoch)} if self.config.objective == "infnet" else {}

    def _score(self, sentences) -> dict[str, Any]:
        result = score_decoder(sentences, self.vocabs, self.task.metric, self.decoder, infnet=self.model, crf=self.crf)
        result.pop("_pred")
        return result

    def dev_score(self) -> dict[str, Any]:
        return self._score(self.task.dev)

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "objective": self.config.objective, "model_config": self.model.config.to_dict(),
                "vocabs": self.vocabs.to_dict(), "task": task_meta(self.task), "train_config": asdict(self.config),
                "energy": str(Path(self.config.energy).resolve()) if self.config.energy else None,
                # The energy's weights by content, so a copy of it can be recognised after the
                # path above has moved (storage.best.export_energy).
                "energy_weights_sha256": weights_digest(self.config.energy) if self.config.energy else None}

    def final_scores(self, best: Path, epochs_trained: int) -> dict[str, Any]:
        """Inference-network scores, with energies against the CRF when there is one, of the
        checkpoint in `best` on dev and test."""
        self.model, _, _ = load_infnet(best, str(next(self.model.parameters()).device))
        return {split: {self.decoder: self._score(sentences)} for split, sentences in (("dev", self.task.dev), ("test", self.task.test))}
