"""The epoch loop: `train(config, report)`, for every objective.

Builds data, vocabularies and the model from a `TrainConfig`, trains, scores dev after every
epoch, keeps the best-on-dev checkpoint in `config.out` (and every epoch's state in `out/last`),
stops early when dev has not improved for `patience` epochs, and finally scores the best
checkpoint on dev and test into `out/metrics.json`. What differs between objectives (the model,
the loss, the decoders) lives in a stage object: `Seq2SeqStage` here for ce / dl / hinge
(Goyal et al. 2018), `core.structured.StructuredStage` for crf / crf+ / local / infnet
(Tu & Gimpel 2019).

`report(epoch, metrics, checkpoint_dir)` is called after every epoch; the sweep layer passes one
that forwards to Ray Tune, the CLI passes none.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from core.checkpoint import CheckpointError, atomic_write, load_checkpoint, load_model, output_directory, save_checkpoint
from core.data import Batch, Sentence, TaskData, Vocabs, build_vocabs, load_task, make_batches
from core.embeddings import glove_words, load_glove
from core.infnets import ARCHITECTURES
from core.metrics import evaluate
from core.objectives import Cost, cross_entropy_loss, direct_loss, hamming_cost, hamming_o2_cost, soft_hinge_loss
from core.schedules import from_config
from core.search.beam import beam_search, greedy_decode
from core.search.soft_beam import soft_beam_search
from core.seq2seq import FEEDS, Seq2SeqTagger, TaggerConfig

Report = Callable[[int, dict[str, float], Path | None], None]
SEQ2SEQ_OBJECTIVES = ("ce", "dl", "hinge")  # Goyal et al. 2018: this module
STRUCTURED_OBJECTIVES = ("crf", "crf+", "local", "infnet")  # Tu & Gimpel 2019: core/structured.py
OBJECTIVES = SEQ2SEQ_OBJECTIVES + STRUCTURED_OBJECTIVES

DECODERS = ("greedy", "beam", "soft-beam")
COSTS = ("hamming", "hamming-o2")
OPTIMIZERS = ("adam", "sgd")
# Above this every loss is NaN within a step anyway; far above it (lr / (1 - beta1) past float32's
# 3.4e38) torch's optimizers fail with a raw "cannot be converted to type float without overflow".
MAX_LR = 1e6


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where."""


@dataclass
class TrainConfig:
    """One training run. `model` holds overrides of the model's config: TaggerConfig for ce, dl and
    hinge (hidden sizes, attention, ...), CRFConfig or InfnetConfig for the structured objectives."""

    task: str
    out: str
    data_root: str | None = None
    embeddings: str | None = None  # GloVe text file; sets the word dimension
    objective: str = "ce"
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    clip: float = 5.0  # max gradient norm; 0 turns clipping off
    patience: int = 5  # epochs without dev improvement before stopping; 0 never stops early
    feed: str = "gold"  # decoder input while training: gold labels or its own predictions
    seed: int = 0
    min_count: int = 1
    lowercase: bool = True
    train_limit: int = 0  # train on the first N training sentences only (0: all); a stated reduction
    eval_beam_size: int = 3
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default. Use 1 when runs share cores:
    # oversubscribed OpenMP threads made backward ~100x slower here (2 runs x 2 threads, 2 cores).
    progress: bool = True
    model: dict[str, Any] = field(default_factory=dict)
    resume_from: str | None = None  # a checkpoint with training state (e.g. OUT/last) to continue from
    # Soft-beam objectives (dl, hinge), Goyal et al. 2018: warm-started from a CE checkpoint.
    init: str | None = None  # CE checkpoint directory to start from (the papers always warm-start)
    beam_size: int = 3  # k of the soft beam in training
    alpha: Any = 1.0  # alpha schedule: a number, "exp:1:100:10"-style string, or a dict (core.schedules)
    cost: str = "hamming"  # per-position cost d(w): hamming, or hamming-o2 (wrong `O` costs 2, for NER)
    # Structured objectives (crf, crf+, local, infnet), Tu & Gimpel 2019.
    arch: str = "blstm"  # local / infnet architecture: cnn13, cnn15, blstm, seq2seq
    energy: str | None = None  # infnet: the fixed CRF energy (a "crf" checkpoint directory)
    lam: float = 1.0  # infnet: weight of the token loss
    lam_anneal: bool = False  # infnet: lambda = lam * exp(-0.01 epoch)
    plus: bool = False  # local / infnet: the "+" techniques (char CNN, dropout 0.5)
    layers: int = 1  # BLSTM infnet layers

    def __post_init__(self) -> None:
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.feed in FEEDS, f"feed must be one of {FEEDS}"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (0 < self.lr <= MAX_LR, f"lr must be in (0, {MAX_LR:g}], got {self.lr}"),
            (0 <= self.momentum <= 1, f"momentum must be in [0, 1], got {self.momentum}"),
            (self.clip >= 0, "clip must be >= 0"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.eval_beam_size >= 1, "eval_beam_size must be >= 1"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.train_limit >= 0, "train_limit must be >= 0"),
            (self.beam_size >= 1, "beam_size must be >= 1"),
            (self.cost in COSTS, f"cost must be one of {COSTS}"),
            (self.objective not in ("dl", "hinge") or self.init or self.resume_from,
             f"objective {self.objective!r} needs init (a CE checkpoint to warm-start from)"),
            (self.objective != "infnet" or self.energy, "objective 'infnet' needs energy (a trained CRF checkpoint)"),
            (self.arch in ARCHITECTURES, f"arch must be one of {ARCHITECTURES}"),
            (self.lam >= 0, "lam must be >= 0"),
            (self.layers in (1, 2), "layers must be 1 or 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")
        try:
            self.alpha_schedule = from_config(self.alpha)
        except ValueError as error:
            raise ValueError(f"TrainConfig: alpha: {error}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def predict(
    model: Seq2SeqTagger,
    sentences: Sequence[Sentence],
    vocabs: Vocabs,
    decoder: str = "greedy",
    beam_size: int = 1,
    batch_size: int = 64,
    progress: bool = False,
    alpha: float = 1.0,
) -> list[list[str]]:
    """Decode `sentences` with greedy, hard beam or soft beam search (at temperature `alpha`)
    and return predicted tag strings, in input order."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[list[str] | None] = [None] * len(sentences)
    batches = make_batches(sentences, vocabs, batch_size, shuffle=False)
    for batch in tqdm(batches, desc=f"decode {decoder}", disable=not progress, leave=False):
        batch = batch.to(device)
        memory = model.encode(batch.words, batch.chars, batch.lengths)
        if decoder == "greedy":
            labels = greedy_decode(model, memory).labels
        elif decoder == "beam":
            labels = beam_search(model, memory, beam_size).labels
        else:
            labels = soft_beam_search(model, memory, beam_size, alpha).labels
        labels = labels.cpu().tolist()
        for row, i in enumerate(batch.index.tolist()):
            n = len(sentences[i].words)
            out[i] = [vocabs.labels.itos[y] for y in labels[row][:n]]
    model.train(was_training)
    return out  # type: ignore[return-value]


def score_split(
    model: Seq2SeqTagger,
    sentences: Sequence[Sentence],
    vocabs: Vocabs,
    metric: str,
    decoder: str = "greedy",
    beam_size: int = 1,
    progress: bool = False,
    alpha: float = 1.0,
) -> dict[str, float]:
    """Decode a split and evaluate it against its gold tags."""
    start = time.perf_counter()
    pred = predict(model, sentences, vocabs, decoder, beam_size, progress=progress, alpha=alpha)
    seconds = time.perf_counter() - start
    result = evaluate([s.tags for s in sentences], pred, metric)
    result["sentences_per_second"] = len(sentences) / seconds
    return result


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


def build_vocabs_and_vectors(config: TrainConfig, task: TaskData) -> tuple[Vocabs, torch.Tensor | None]:
    """Vocabularies from the training split plus the pretrained words that occur in dev/test (so
    they keep their vectors), and the GloVe matrix (len(words), d) when `config.embeddings` is set."""
    extra: set[str] = set()
    if config.embeddings:
        extra = {w.lower() for s in task.dev + task.test for w in s.words} & glove_words(config.embeddings)
    vocabs = build_vocabs(task.train, min_count=config.min_count, lowercase=config.lowercase, extra_words=sorted(extra))
    vectors = load_glove(config.embeddings, vocabs.words)[0] if config.embeddings else None
    return vocabs, vectors


def task_meta(task: TaskData) -> dict[str, str]:
    return {"name": task.name, "metric": task.metric, "scheme": task.scheme}


def load_tagger(directory: str | Path, device: str = "cpu") -> tuple[Seq2SeqTagger, Vocabs, dict]:
    """Rebuild a trained tagger from its checkpoint directory: (model in eval mode, vocabs, meta)."""
    return load_model(directory, "seq2seq", TaggerConfig, Seq2SeqTagger, resolve_device(device))


def make_cost(config: TrainConfig, vocabs: Vocabs) -> Cost:
    """The per-position cost d(w) that `config.cost` names, over this label vocabulary."""
    if config.cost == "hamming":
        return hamming_cost
    if "O" not in vocabs.labels.stoi:
        raise ValueError("TrainConfig: cost 'hamming-o2' needs an 'O' label (an NER task)")
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
    """What `train` needs to know about the seq2seq objectives ce, dl and hinge.

    A stage owns the model and vocabularies and answers five questions for the shared epoch loop:
    the loss of a batch, extra per-epoch metrics, the dev score used for model selection, the
    checkpoint metadata, and the final scores. `core.structured.StructuredStage` answers the same
    ones for the CRF, local and inference-network objectives.
    """

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
        # A warm start is epoch 0: if no epoch beats it on dev, it stays the best checkpoint.
        self.warm_started = bool(config.init) and not config.resume_from

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


def make_stage(config: TrainConfig, task: TaskData, device: torch.device):
    """The stage object for `config.objective` (see Seq2SeqStage)."""
    if config.objective in SEQ2SEQ_OBJECTIVES:
        return Seq2SeqStage(config, task, device)
    from core.structured import StructuredStage

    return StructuredStage(config, task, device)


def run_epoch(
    stage: Any,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    config: TrainConfig,
    epoch: int,
    device: torch.device,
) -> float:
    """One pass of training on the stage's objective over `batches`; returns the mean loss per
    token. Raises TrainingError, naming the epoch and batch, as soon as a loss is not finite."""
    stage.model.train()
    params = [p for p in stage.model.parameters() if p.requires_grad]
    total_loss, total_tokens = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
    for step, batch in enumerate(bar):
        batch = batch.to(device)
        loss = stage.loss(batch, epoch)
        if not torch.isfinite(loss):
            raise TrainingError(f"epoch {epoch}, batch {step}: loss is {loss.item()} (try a lower --lr or clipping)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.clip)
        optimizer.step()
        tokens = int(batch.lengths.sum())
        total_loss += loss.item() * tokens
        total_tokens += tokens
        bar.set_postfix(loss=f"{total_loss / total_tokens:.4f}")
    return total_loss / total_tokens


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # a fixed CRF energy has none
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)


def train(config: TrainConfig, report: Report | None = None) -> dict[str, Any]:
    """Train the model `config.objective` names; returns the final metrics (also in out/metrics.json).

    Every epoch's full state (weights, optimizer, counters, RNG) goes to `out/last/`, which is what
    `report` receives and what `config.resume_from` continues from; the best-on-dev checkpoint is
    kept in `out/` itself.
    """
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out = output_directory(config.out)
    task = load_task(config.task, config.data_root)
    if config.train_limit:
        task.train = task.train[: config.train_limit]
    stage = make_stage(config, task, device)
    optimizer = make_optimizer(config, stage.model)
    # Counters that a resumed run continues from.
    progress: dict[str, Any] = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0,
                                "train_seconds": 0.0, "train_sentences": 0}
    if config.resume_from:
        state = load_checkpoint(config.resume_from).training_state or {}
        if "progress" not in state:
            raise CheckpointError(f"checkpoint {config.resume_from}: has no training state to resume from")
        optimizer.load_state_dict(state["optimizer"])
        progress.update(state["progress"])
        torch.set_rng_state(state["torch_rng"])

    def save(epoch: int, dev: dict, improved: bool) -> None:
        meta = {**stage.meta(), "epoch": epoch, "dev": dev}
        state = {"optimizer": optimizer.state_dict(), "progress": dict(progress), "torch_rng": torch.get_rng_state()}
        save_checkpoint(out / "last", stage.model, meta, state)
        if improved:
            save_checkpoint(out, stage.model, meta, state)

    if stage.warm_started:
        dev = stage.dev_score()
        progress.update(best_score=dev["score"], best_epoch=0)
        save(0, dev, improved=True)

    for epoch in range(progress["epoch"] + 1, config.epochs + 1):
        if config.patience and progress["bad_epochs"] >= config.patience:
            break
        batches = make_batches(task.train, stage.vocabs, config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch)
        start = time.perf_counter()
        train_loss = run_epoch(stage, optimizer, batches, config, epoch, device)
        progress["train_seconds"] += time.perf_counter() - start
        progress["train_sentences"] += len(task.train)

        stage.model.eval()
        dev = stage.dev_score()
        improved = dev["score"] > progress["best_score"]
        if improved:
            progress.update(best_score=dev["score"], best_epoch=epoch, bad_epochs=0)
        else:
            progress["bad_epochs"] += 1
        progress["epoch"] = epoch
        save(epoch, dev, improved)
        metrics = {"epoch": epoch, "train_loss": train_loss, "dev_score": dev["score"],
                   "best_dev_score": progress["best_score"],
                   "train_sentences_per_second": progress["train_sentences"] / progress["train_seconds"],
                   **stage.epoch_metrics(epoch)}
        if config.progress:
            tqdm.write(f"epoch {epoch}: loss {train_loss:.4f}  dev {dev['score']:.4f}" + ("  *" if improved else ""))
        if report is not None:
            report(epoch, metrics, out / "last")

    # Score the best checkpoint, not the last epoch's weights.
    final: dict[str, Any] = {"task": task.name, "metric": task.metric, "objective": config.objective,
                             "best_epoch": progress["best_epoch"],
                             "train_sentences_per_second": progress["train_sentences"] / max(progress["train_seconds"], 1e-9)}
    final.update(stage.final_scores(out, progress["epoch"]))
    atomic_write(out / "metrics.json", json.dumps(final, indent=2).encode())
    return final
