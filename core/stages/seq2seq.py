"""The seq2seq stage (Goyal et al. 2018): objectives ce, dl and hinge on the BiLSTM-encoder,
LSTM-decoder tagger, decoded greedily, by hard beam search or by soft beam search.

The alpha path, from a spec or `--alpha` to the soft beam, in six hops:

    1 sweeps.trainables.build_train_config (or the CLI): TrainConfig(alpha="exp:1:100:10")
    2 Seq2SeqFields.parse_alpha: core.schedules.from_config -> TrainConfig.alpha_schedule
    3 Seq2SeqStage.loss(batch, epoch): alpha_schedule.at(epoch)
    4 batch_loss: the objective
    5 core.objectives.direct_loss / soft_hinge_loss
    6 core.search.soft_beam.soft_beam_search(model, memory, k, alpha)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.config import Check, ConfigError, build_vocabs_and_vectors, task_meta
from core.data import Batch, TaskData, Vocabs
from core.decoding import score_split
from core.loading import load_tagger
from core.objectives import Cost, cross_entropy_loss, direct_loss, hamming_cost, hamming_o2_cost, soft_hinge_loss
from core.schedules import from_config
from core.seq2seq import FEEDS, Seq2SeqTagger, TaggerConfig

if TYPE_CHECKING:
    from core.stages import TrainConfig

OBJECTIVES = ("ce", "dl", "hinge")
COSTS = ("hamming", "hamming-o2")


@dataclass(kw_only=True)
class Seq2SeqFields:
    """TrainConfig fields of the seq2seq stage. dl and hinge train through a soft beam, initialised
    from a CE checkpoint (`init`, as the paper always does)."""

    feed: str = "gold"  # decoder input while training: gold labels or its own predictions
    eval_beam_size: int = 3  # beam size of the dev and final beam-search scores
    init: str | None = None  # CE checkpoint directory to initialise dl / hinge from
    beam_size: int = 3  # k of the soft beam in training
    alpha: Any = 1.0  # alpha schedule: a number, "exp:1:100:10"-style string, or a dict (core.schedules)
    cost: str = "hamming"  # per-position cost d(w): hamming, or hamming-o2 (wrong `O` costs 2, for NER)

    def seq2seq_checks(self) -> list[Check]:
        return [
            ("feed", self.feed in FEEDS, f"feed must be one of {FEEDS}"),
            ("eval_beam_size", self.eval_beam_size >= 1, "eval_beam_size must be >= 1"),
            ("beam_size", self.beam_size >= 1, "beam_size must be >= 1"),
            ("cost", self.cost in COSTS, f"cost must be one of {COSTS}"),
            ("init", self.objective not in ("dl", "hinge") or self.init or self.resume_from,  # type: ignore[attr-defined]
             f"objective {self.objective!r} needs init (a CE checkpoint to start from)"),  # type: ignore[attr-defined]
        ]

    def parse_alpha(self) -> None:
        try:
            self.alpha_schedule = from_config(self.alpha)
        except ValueError as error:
            raise ConfigError("TrainConfig", "alpha", f"alpha: {error}") from None


def build_model(config: TrainConfig, task: TaskData) -> tuple[Seq2SeqTagger, Vocabs]:
    """Vocabularies from the training split (+ pretrained words seen in dev/test) and a fresh tagger,
    its word embeddings initialised from GloVe when `config.embeddings` is given."""
    vocabs, pretrained = build_vocabs_and_vectors(config, task)
    overrides = dict(config.model)
    if pretrained is not None:
        overrides["word_dim"] = pretrained.shape[1]
    model = Seq2SeqTagger(TaggerConfig(n_words=len(vocabs.words), n_chars=len(vocabs.chars), n_labels=len(vocabs.labels), **overrides))
    if pretrained is not None:
        model.encoder.word_embedding.weight.data.copy_(pretrained)
    return model, vocabs


def make_cost(config: TrainConfig, vocabs: Vocabs) -> Cost:
    """The per-position cost d(w) that `config.cost` names, over this label vocabulary."""
    if config.cost == "hamming":
        return hamming_cost
    if "O" not in vocabs.labels.stoi:
        raise ConfigError("TrainConfig", "cost", "cost 'hamming-o2' needs an 'O' label (an NER task)")
    return hamming_o2_cost(vocabs.labels.stoi["O"])


def batch_loss(model: Seq2SeqTagger, batch: Batch, config: TrainConfig, alpha: float, cost: Cost) -> torch.Tensor:
    """The training objective on one batch, per token: CE (teacher forcing or fed predictions),
    the soft-beam direct loss G~_DL,alpha or the soft hinge G~_hinge,alpha (summed over
    sentences, divided by tokens, so learning rates transfer between objectives)."""
    memory = model.encode(batch.words, batch.chars, batch.lengths)
    if config.objective == "ce":
        return cross_entropy_loss(model, memory, batch.labels, feed=config.feed)
    per_sentence = direct_loss if config.objective == "dl" else soft_hinge_loss
    losses = per_sentence(model, memory, batch.labels, config.beam_size, alpha, cost)  # (B,)
    return losses.sum() / batch.lengths.sum()


class Seq2SeqStage:
    """The `Stage` (core.stages) of the objectives ce, dl and hinge."""

    kind = "seq2seq"

    def __init__(self, config: TrainConfig, task: TaskData, device: torch.device):
        self.config, self.task = config, task
        if config.resume_from:
            self.model, self.vocabs, _ = load_tagger(config.resume_from, device=str(device))
        elif config.init:
            self.model, self.vocabs, init_meta = load_tagger(config.init, device=str(device))
            if init_meta["task"]["name"] != task.name:
                raise ValueError(f"init checkpoint {config.init} was trained on {init_meta['task']['name']!r}, not {task.name!r}")
        else:
            self.model, self.vocabs = build_model(config, task)
            self.model.to(device)
        self.cost = make_cost(config, self.vocabs)
        # CE selects on greedy dev scores; the search-aware objectives on the beam they train for.
        self.dev_decoder = ("greedy", 1) if config.objective == "ce" else ("beam", config.eval_beam_size)
        # An initialised run's epoch 0 is its init checkpoint: if no epoch beats it on dev, it stays the best.
        self.scores_epoch_zero = bool(config.init) and not config.resume_from

    def loss(self, batch: Batch, epoch: int) -> torch.Tensor:
        return batch_loss(self.model, batch, self.config, self.config.alpha_schedule.at(epoch), self.cost)

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        return {} if self.config.objective == "ce" else {"alpha": self.config.alpha_schedule.at(epoch)}

    def dev_score(self) -> dict[str, Any]:
        return score_split(self.model, self.task.dev, self.vocabs, self.task.metric, *self.dev_decoder)

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "model_config": self.model.config.to_dict(), "vocabs": self.vocabs.to_dict(),
                "task": task_meta(self.task), "train_config": asdict(self.config)}

    def final_scores(self, best: Path, epochs_trained: int) -> dict[str, Any]:
        """Greedy, beam and soft-beam scores (at the alpha training ended with, §2.4) of the
        checkpoint in `best`, on dev and test."""
        device = next(self.model.parameters()).device
        self.model, self.vocabs, _ = load_tagger(best, device=str(device))
        k, progress = self.config.eval_beam_size, self.config.progress
        alpha = self.config.alpha_schedule.at(max(epochs_trained, 1))
        final: dict[str, Any] = {"soft_beam_alpha": alpha}
        for split, sentences in (("dev", self.task.dev), ("test", self.task.test)):
            args = (self.model, sentences, self.vocabs, self.task.metric)
            final[split] = {"greedy": score_split(*args, "greedy", progress=progress),
                            f"beam{k}": score_split(*args, "beam", k, progress=progress)}
            if k <= self.model.n_labels:
                final[split][f"soft_beam{k}"] = score_split(*args, "soft-beam", k, progress=progress, alpha=alpha)
        return final
