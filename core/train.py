"""The epoch loop: `train(config, report)`.

Builds data, vocabularies and the tagger from a `TrainConfig`, trains with cross-entropy, decodes
dev greedily after every epoch, keeps the best-on-dev checkpoint in `config.out`, stops early when
dev has not improved for `patience` epochs, and finally scores the best checkpoint on dev and test
with greedy and beam search into `out/metrics.json`.

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

from core.checkpoint import CheckpointError, atomic_write, load_checkpoint, load_weights, save_checkpoint
from core.data import Batch, Sentence, TaskData, Vocabs, build_vocabs, load_task, make_batches
from core.embeddings import glove_words, load_glove
from core.metrics import evaluate
from core.objectives import cross_entropy_loss
from core.search.beam import beam_search, greedy_decode
from core.seq2seq import FEEDS, Seq2SeqTagger, TaggerConfig

Report = Callable[[int, dict[str, float], Path | None], None]
OBJECTIVES = ("ce",)
OPTIMIZERS = ("adam", "sgd")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where."""


@dataclass
class TrainConfig:
    """One training run. `model` holds TaggerConfig overrides (hidden sizes, attention, ...)."""

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
    eval_beam_size: int = 3
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default. Use 1 when runs share cores:
    # oversubscribed OpenMP threads made backward ~100x slower here (2 runs x 2 threads, 2 cores).
    progress: bool = True
    model: dict[str, Any] = field(default_factory=dict)
    resume_from: str | None = None  # a checkpoint with training state (e.g. OUT/last) to continue from

    def __post_init__(self) -> None:
        checks = [
            (self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}"),
            (self.feed in FEEDS, f"feed must be one of {FEEDS}"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.clip >= 0, "clip must be >= 0"),
            (self.patience >= 0, "patience must be >= 0"),
            (self.eval_beam_size >= 1, "eval_beam_size must be >= 1"),
            (self.threads >= 0, "threads must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")


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
) -> list[list[str]]:
    """Decode `sentences` and return predicted tag strings, in input order."""
    if decoder not in ("greedy", "beam"):
        raise ValueError(f"decoder must be 'greedy' or 'beam', got {decoder!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[list[str] | None] = [None] * len(sentences)
    batches = make_batches(sentences, vocabs, batch_size, shuffle=False)
    for batch in tqdm(batches, desc=f"decode {decoder}", disable=not progress, leave=False):
        batch = batch.to(device)
        memory = model.encode(batch.words, batch.chars, batch.lengths)
        result = greedy_decode(model, memory) if decoder == "greedy" else beam_search(model, memory, beam_size)
        labels = result.labels.cpu().tolist()
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
) -> dict[str, float]:
    """Decode a split and evaluate it against its gold tags."""
    start = time.perf_counter()
    pred = predict(model, sentences, vocabs, decoder, beam_size, progress=progress)
    seconds = time.perf_counter() - start
    result = evaluate([s.tags for s in sentences], pred, metric)
    result["sentences_per_second"] = len(sentences) / seconds
    return result


def build_model(config: TrainConfig, task: TaskData) -> tuple[Seq2SeqTagger, Vocabs]:
    """Vocabularies from the training split (+ pretrained words seen in dev/test) and a fresh tagger,
    its word embeddings initialised from GloVe when `config.embeddings` is given."""
    extra: set[str] = set()
    if config.embeddings:
        known = glove_words(config.embeddings)
        extra = {w.lower() for s in task.dev + task.test for w in s.words} & known
    vocabs = build_vocabs(task.train, min_count=config.min_count, lowercase=config.lowercase, extra_words=sorted(extra))
    overrides = dict(config.model)
    pretrained = None
    if config.embeddings:
        pretrained, _found = load_glove(config.embeddings, vocabs.words)
        overrides["word_dim"] = pretrained.shape[1]
    tagger_config = TaggerConfig(n_words=len(vocabs.words), n_chars=len(vocabs.chars), n_labels=len(vocabs.labels), **overrides)
    model = Seq2SeqTagger(tagger_config)
    if pretrained is not None:
        model.encoder.word_embedding.weight.data.copy_(pretrained)
    return model, vocabs


def checkpoint_meta(config: TrainConfig, model: Seq2SeqTagger, vocabs: Vocabs, task: TaskData, extra: dict) -> dict:
    return {
        "kind": "seq2seq",
        "model_config": model.config.to_dict(),
        "vocabs": vocabs.to_dict(),
        "task": {"name": task.name, "metric": task.metric, "scheme": task.scheme},
        "train_config": asdict(config),
        **extra,
    }


def load_tagger(directory: str | Path, device: str = "cpu") -> tuple[Seq2SeqTagger, Vocabs, dict]:
    """Rebuild a trained tagger from its checkpoint directory: (model in eval mode, vocabs, meta)."""
    checkpoint = load_checkpoint(directory, kind="seq2seq")
    try:
        model = Seq2SeqTagger(TaggerConfig.from_dict(checkpoint.meta["model_config"]))
        vocabs = Vocabs.from_dict(checkpoint.meta["vocabs"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {directory}: bad model config or vocabularies: {error}") from None
    load_weights(model, checkpoint)
    return model.to(resolve_device(device)).eval(), vocabs, checkpoint.meta


def run_epoch(
    model: Seq2SeqTagger,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    config: TrainConfig,
    epoch: int,
    device: torch.device,
) -> float:
    """One pass of cross-entropy training over `batches`; returns the mean loss per token.
    Raises TrainingError, naming the epoch and batch, as soon as a loss is not finite."""
    model.train()
    total_loss, total_tokens = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
    for step, batch in enumerate(bar):
        batch = batch.to(device)
        memory = model.encode(batch.words, batch.chars, batch.lengths)
        loss = cross_entropy_loss(model, memory, batch.labels, feed=config.feed)
        if not torch.isfinite(loss):
            raise TrainingError(f"epoch {epoch}, batch {step}: loss is {loss.item()} (try a lower --lr or clipping)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        tokens = int(batch.lengths.sum())
        total_loss += loss.item() * tokens
        total_tokens += tokens
        bar.set_postfix(loss=f"{total_loss / total_tokens:.4f}")
    return total_loss / total_tokens


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)


def train(config: TrainConfig, report: Report | None = None) -> dict[str, Any]:
    """Train a tagger as `config` says; returns the final metrics (also in out/metrics.json).

    Every epoch's full state (weights, optimizer, counters, RNG) goes to `out/last/`, which is what
    `report` receives and what `config.resume_from` continues from; the best-on-dev checkpoint is
    kept in `out/` itself.
    """
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(config.task, config.data_root)
    # Counters that a resumed run continues from.
    progress: dict[str, Any] = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0,
                                "train_seconds": 0.0, "train_sentences": 0}
    if config.resume_from:
        model, vocabs, _ = load_tagger(config.resume_from, device=str(device))
        state = load_checkpoint(config.resume_from).training_state or {}
        if "progress" not in state:
            raise CheckpointError(f"checkpoint {config.resume_from}: has no training state to resume from")
        optimizer = make_optimizer(config, model)
        optimizer.load_state_dict(state["optimizer"])
        progress.update(state["progress"])
        torch.set_rng_state(state["torch_rng"])
    else:
        model, vocabs = build_model(config, task)
        model.to(device)
        optimizer = make_optimizer(config, model)

    for epoch in range(progress["epoch"] + 1, config.epochs + 1):
        if config.patience and progress["bad_epochs"] >= config.patience:
            break
        batches = make_batches(task.train, vocabs, config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch)
        start = time.perf_counter()
        train_loss = run_epoch(model, optimizer, batches, config, epoch, device)
        progress["train_seconds"] += time.perf_counter() - start
        progress["train_sentences"] += len(task.train)

        dev = score_split(model, task.dev, vocabs, task.metric, "greedy")
        improved = dev["score"] > progress["best_score"]
        if improved:
            progress.update(best_score=dev["score"], best_epoch=epoch, bad_epochs=0)
        else:
            progress["bad_epochs"] += 1
        progress["epoch"] = epoch
        meta = checkpoint_meta(config, model, vocabs, task, {"epoch": epoch, "dev": dev})
        state = {"optimizer": optimizer.state_dict(), "progress": dict(progress), "torch_rng": torch.get_rng_state()}
        save_checkpoint(out / "last", model, meta, state)
        if improved:
            save_checkpoint(out, model, meta, state)
        metrics = {"epoch": epoch, "train_loss": train_loss, "dev_score": dev["score"],
                   "best_dev_score": progress["best_score"],
                   "train_sentences_per_second": progress["train_sentences"] / progress["train_seconds"]}
        if config.progress:
            tqdm.write(f"epoch {epoch}: loss {train_loss:.4f}  dev {dev['score']:.4f}" + ("  *" if improved else ""))
        if report is not None:
            report(epoch, metrics, out / "last")

    # Score the best checkpoint, not the last epoch's weights.
    model, vocabs, _ = load_tagger(out, device=str(device))
    k = config.eval_beam_size
    final: dict[str, Any] = {"task": task.name, "metric": task.metric, "best_epoch": progress["best_epoch"],
                             "train_sentences_per_second": progress["train_sentences"] / max(progress["train_seconds"], 1e-9)}
    for split, sentences in (("dev", task.dev), ("test", task.test)):
        final[split] = {
            "greedy": score_split(model, sentences, vocabs, task.metric, "greedy", progress=config.progress),
            f"beam{k}": score_split(model, sentences, vocabs, task.metric, "beam", k, progress=config.progress),
        }
    atomic_write(out / "metrics.json", json.dumps(final, indent=2).encode())
    return final
