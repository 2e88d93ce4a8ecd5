"""Training stages: what differs between objectives, behind one interface, and the registry from
objective name to stage. core.train's epoch loop sees only `Stage`.

    objective        stage                                 checkpoint kind
    ce, dl, hinge    core.stages.seq2seq.Seq2SeqStage      seq2seq   (Goyal et al. 2018)
    crf, crf+        core.stages.crf.CRFStage              crf       (Tu & Gimpel 2019)
    local, infnet    core.stages.infnet.InfnetStage        infnet    (Tu & Gimpel 2019)

A config value reaches its stage's loss in a few named hops: the soft-beam temperature alpha in six
(listed in core/stages/seq2seq.py), the inference network's lambda in four of the same shape
(core/stages/infnet.py); both are schedules parsed by core.schedules.from_config.

Adding a stage: a module with the stage class (and a `...Fields` dataclass for its own config
fields, mixed into `TrainConfig` below), and one line in `STAGES`. The CLI's `--objective`
choices, a sweep spec's stages and `TrainConfig`'s check all read `STAGES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from core.config import ConfigError, SharedConfig, raise_first
from core.data import Batch, TaskData, Vocabs
from core.stages.crf import CRFStage
from core.stages.infnet import InfnetFields, InfnetStage
from core.stages.seq2seq import Seq2SeqFields, Seq2SeqStage


class Stage(Protocol):
    """What the shared epoch loop (core.train.train) needs from an objective."""

    kind: str  # the checkpoint kind its model is saved as (core.loading)
    model: torch.nn.Module
    vocabs: Vocabs
    scores_epoch_zero: bool  # an initialised model is scored (and kept) as epoch 0

    def loss(self, batch: Batch, epoch: int) -> torch.Tensor:
        """() the training loss of a batch, per token."""

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        """Extra values reported each epoch (the annealed alpha or lambda)."""

    def dev_score(self) -> dict[str, Any]:
        """The dev metrics model selection uses ("score")."""

    def meta(self) -> dict[str, Any]:
        """Checkpoint metadata: kind, model config, vocabularies, task, train config."""

    def final_scores(self, best: Path, epochs_trained: int) -> dict[str, Any]:
        """Dev and test scores of the best checkpoint (in `best`), per decoder."""


STAGES: dict[str, type] = {
    "ce": Seq2SeqStage, "dl": Seq2SeqStage, "hinge": Seq2SeqStage,
    "crf": CRFStage, "crf+": CRFStage,
    "local": InfnetStage, "infnet": InfnetStage,
}
OBJECTIVES = tuple(STAGES)
STRUCTURED_OBJECTIVES = tuple(name for name, stage in STAGES.items() if stage is not Seq2SeqStage)


def default_lr(objective: str, optimizer: str) -> float:
    """The learning rate a run gets when none is given: 1e-2 for the structured objectives under
    Adam, 1e-3 otherwise.

    Why 1e-2: at Adam 1e-3 the BLSTM-CRF+ learned so slowly that every Tu & Gimpel run was
    under-trained (issue 14, benchmarks/RESULTS.md: after 3 epochs on 3,000 CoNLL-2003 sentences
    test F1 50.5 at 1e-3, 78.2 at 1e-2, 67.7 at 3e-2; the Table 1 BLSTM-CRF on Twitter POS 69.2 %
    at 1e-3 after 10 epochs and 73.5 % at convergence, 77.5 % at 1e-2 after 10). The loss is per
    token, so its gradient norm (~0.2-2.4) never reaches the default clip of 5 either.
    """
    if optimizer == "adam" and objective in STRUCTURED_OBJECTIVES:
        return 1e-2
    return 1e-3


@dataclass
class TrainConfig(InfnetFields, Seq2SeqFields, SharedConfig):  # fields in the order SharedConfig, Seq2Seq, Infnet
    """One training run: the shared fields (core.config.SharedConfig) and every stage's own fields
    (Seq2SeqFields, InfnetFields), flat, so that the CLI and sweep specs set any of them by name.
    `model` holds overrides of the stage's model config: TaggerConfig for ce, dl and hinge (hidden
    sizes, attention, ...), CRFConfig or InfnetConfig for the structured objectives."""

    def __post_init__(self) -> None:
        if self.objective not in STAGES:
            raise ConfigError("TrainConfig", "objective", f"objective must be one of {OBJECTIVES}")
        if self.lr is None:
            self.lr = default_lr(self.objective, self.optimizer)
        raise_first("TrainConfig", self.shared_checks() + self.seq2seq_checks() + self.infnet_checks())
        self.parse_alpha()
        self.parse_lam()


def make_stage(config: TrainConfig, task: TaskData, device: torch.device) -> Stage:
    """The stage object for `config.objective`."""
    return STAGES[config.objective](config, task, device)
