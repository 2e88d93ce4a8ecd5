"""What every training stage shares, below both the epoch loop (core.train) and the stages
(core.stages): the shared `TrainConfig` fields and their checks, `ConfigError`, the device, the
seed, vocabularies with their pretrained vectors, and the task metadata a checkpoint records.

A stage's own fields (the soft beam's alpha, the inference network's lambda, ...) live with the
stage (`core.stages.seq2seq.Seq2SeqFields`, `core.stages.infnet.InfnetFields`); `core.stages`
puts them together into the one flat `TrainConfig` a run, the CLI and a sweep spec all build.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from core.device import resolve_device  # noqa: F401 - one definition; config users import it from here
from core.data import DataError, TaskData, Vocabs, build_vocabs, data_root
from core.embeddings import glove_words, load_glove

OPTIMIZERS = ("adam", "sgd")

# A check is (field, ok, message): `ok` False raises ConfigError(field, message).
Check = tuple[str, bool, str]


class ConfigError(ValueError):
    """A config field has a bad value. `field` names it (what a sweep spec reports the problem
    under); str() is "<Config>: <message>", the one line the CLI prints."""

    def __init__(self, owner: str, field: str, message: str):
        self.owner, self.field, self.message = owner, field, message
        super().__init__(f"{owner}: {message}")

    def __reduce__(self):
        # Pickle and copy.copy rebuild an exception as cls(*self.args), and args holds the one
        # formatted line; Ray copies a trial's exception, so without this it became a TypeError.
        return type(self), (self.owner, self.field, self.message)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where."""


def raise_first(owner: str, checks: Iterable[Check]) -> None:
    """Raise ConfigError for the first failed check, in order."""
    for name, ok, message in checks:
        if not ok:
            raise ConfigError(owner, name, message)


LOSS_PER = ("token", "sentence")  # SharedConfig.loss_per

# A bound far above any useful rate that keeps torch's optimizers clear of float32's 3.4e38 (Adam
# divides lr by 1 - beta1): past it they fail with a raw "cannot be converted to type float without
# overflow". A rate this large still diverges, as a diverging trial should (tests/test_sweep_local.py).
MAX_LR = 3e37  # Adam: 3e37 / (1 - 0.9) = 3e38 < 3.4e38

@dataclass
class SharedConfig:
    """The fields of a training run that every stage reads (the epoch loop, data, vocabularies)."""

    task: str
    out: str
    data_root: str | None = None
    embeddings: str | None = None  # GloVe text file; sets the word dimension
    objective: str = "ce"  # a key of core.stages.STAGES
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float | None = None  # None: core.stages.default_lr(objective, optimizer)
    momentum: float = 0.9  # SGD only
    clip: float = 5.0  # max gradient norm; 0 turns clipping off
    # "token": the stage's loss averaged over the batch's tokens; "sentence": summed over each
    # sentence's tokens and averaged over the batch's sentences, as Tu & Gimpel's code does (its
    # gradients are ~mean-length times larger, so the appendix's SGD rates mean there what they
    # meant in the paper; RESULTS, session 7).
    loss_per: str = "token"
    # L2: the optimizer adds weight_decay * w to every trained weight's gradient (Tu & Gimpel's code
    # adds L2 * ||w||^2 to the loss: weight_decay = 2 * L2).
    weight_decay: float = 0.0
    patience: int = 5  # epochs without dev improvement before stopping; 0 never stops early
    seed: int = 0
    min_count: int = 1
    lowercase: bool = True
    train_limit: int = 0  # train on the first N training sentences only (0: all); a stated reduction
    max_train_length: int = 0  # train on sentences of at most N tokens only (0: all); Tu & Gimpel's CCG CRFs: 49
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default. Use 1 when runs share cores:
    # oversubscribed OpenMP threads made backward ~100x slower here (2 runs x 2 threads, 2 cores).
    progress: bool = True
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the stage's model config
    resume_from: str | None = None  # a checkpoint with training state (e.g. OUT/last) to continue from

    def shared_checks(self) -> list[Check]:
        return [
            ("optimizer", self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            ("epochs", self.epochs >= 1, "epochs must be >= 1"),
            ("batch_size", self.batch_size >= 1, "batch_size must be >= 1"),
            ("lr", 0 < self.lr <= MAX_LR, f"lr must be in (0, {MAX_LR:g}], got {self.lr}"),
            ("momentum", 0 <= self.momentum <= 1, f"momentum must be in [0, 1], got {self.momentum}"),
            ("clip", self.clip >= 0, "clip must be >= 0"),
            ("loss_per", self.loss_per in LOSS_PER, f"loss_per must be one of {LOSS_PER}, got {self.loss_per!r}"),
            ("weight_decay", self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            ("patience", self.patience >= 0, "patience must be >= 0"),
            ("threads", self.threads >= 0, "threads must be >= 0"),
            ("train_limit", self.train_limit >= 0, "train_limit must be >= 0"),
            ("max_train_length", self.max_train_length >= 0, "max_train_length must be >= 0"),
        ]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def task_meta(task: TaskData) -> dict[str, str]:
    return {"name": task.name, "metric": task.metric, "scheme": task.scheme}


def build_vocabs_and_vectors(config: SharedConfig, task: TaskData) -> tuple[Vocabs, torch.Tensor | None]:
    """Vocabularies from the training split plus the pretrained words that occur in dev/test (so
    they keep their vectors), and the GloVe matrix (len(words), d) when `config.embeddings` is set."""
    extra: set[str] = set()
    path = embeddings_path(config.embeddings, config.data_root) if config.embeddings else None
    if path:
        extra = {w.lower() for s in task.dev + task.test for w in s.words} & glove_words(path)
    vocabs = build_vocabs(task.train, min_count=config.min_count, lowercase=config.lowercase, extra_words=sorted(extra))
    vectors = load_glove(path, vocabs.words)[0] if path else None
    return vocabs, vectors


def embeddings_path(embeddings: str, root: str | None = None) -> str:
    """The GloVe file `embeddings` names: as given when that file exists (absolute, or relative to
    the working directory), else relative to the data root, so a shipped study can say
    `embeddings: embeddings/glove.6B.50d.txt.gz` and run on any machine's data root."""
    if os.path.isabs(embeddings) or os.path.exists(embeddings):
        return embeddings
    try:
        under_root = data_root(root) / embeddings
    except DataError:  # no data root: report the path as given (load_glove names it)
        return embeddings
    return str(under_root) if under_root.exists() else embeddings
