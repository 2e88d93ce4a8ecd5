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
from core.objectives import Cost, cross_entropy_loss, direct_loss, hamming_cost, hamming_o2_cost, soft_hinge_loss
from core.schedules import from_config
from core.search.beam import beam_search, greedy_decode
from core.search.soft_beam import soft_beam_search
from core.seq2seq import FEEDS, Seq2SeqTagger, TaggerConfig

Report = Callable[[int, dict[str, float], Path | None], None]
OBJECTIVES = ("ce", "dl", "hinge")
DECODERS = ("greedy", "beam", "soft-beam")
COSTS = ("hamming", "hamming-o2")
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
    # Soft-beam objectives (dl, hinge), Goyal et al. 2018: warm-started from a CE checkpoint.
    init: str | None = None  # CE checkpoint directory to start from (the papers always warm-start)
    beam_size: int = 3  # k of the soft beam in training
    alpha: Any = 1.0  # alpha schedule: a number, "exp:1:100:10"-style string, or a dict (core.schedules)
    cost: str = "hamming"  # per-position cost d(w): hamming, or hamming-o2 (wrong `O` costs 2, for NER)

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
            (self.beam_size >= 1, "beam_size must be >= 1"),
            (self.cost in COSTS, f"cost must be one of {COSTS}"),
            (self.objective == "ce" or self.init or self.resume_from,
             f"objective {self.objective!r} needs init (a CE checkpoint to warm-start from)"),
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


def run_epoch(
    model: Seq2SeqTagger,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    alpha: float = 1.0,
    cost: Cost = hamming_cost,
) -> float:
    """One pass of training on `config.objective` over `batches`; returns the mean loss per token.
    Raises TrainingError, naming the epoch and batch, as soon as a loss is not finite."""
    model.train()
    total_loss, total_tokens = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
    for step, batch in enumerate(bar):
        batch = batch.to(device)
        loss = batch_loss(model, batch, config, alpha, cost)
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
    elif config.init:
        model, vocabs, init_meta = load_tagger(config.init, device=str(device))
        if init_meta["task"]["name"] != task.name:
            raise ValueError(f"init checkpoint {config.init} was trained on {init_meta['task']['name']!r}, not {task.name!r}")
        optimizer = make_optimizer(config, model)
    else:
        model, vocabs = build_model(config, task)
        model.to(device)
        optimizer = make_optimizer(config, model)
    cost = make_cost(config, vocabs)
    # CE selects on greedy dev scores; the search-aware objectives on the beam they train for.
    dev_decoder = ("greedy", 1) if config.objective == "ce" else ("beam", config.eval_beam_size)

    def save(epoch: int, dev: dict, improved: bool) -> None:
        meta = checkpoint_meta(config, model, vocabs, task, {"epoch": epoch, "dev": dev})
        state = {"optimizer": optimizer.state_dict(), "progress": dict(progress), "torch_rng": torch.get_rng_state()}
        save_checkpoint(out / "last", model, meta, state)
        if improved:
            save_checkpoint(out, model, meta, state)

    if config.init and not config.resume_from:
        # The warm start is epoch 0: if no epoch beats it on dev, it stays the best checkpoint.
        dev = score_split(model, task.dev, vocabs, task.metric, *dev_decoder)
        progress.update(best_score=dev["score"], best_epoch=0)
        save(0, dev, improved=True)

    for epoch in range(progress["epoch"] + 1, config.epochs + 1):
        if config.patience and progress["bad_epochs"] >= config.patience:
            break
        batches = make_batches(task.train, vocabs, config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch)
        start = time.perf_counter()
        alpha = config.alpha_schedule.at(epoch)
        train_loss = run_epoch(model, optimizer, batches, config, epoch, device, alpha, cost)
        progress["train_seconds"] += time.perf_counter() - start
        progress["train_sentences"] += len(task.train)

        dev = score_split(model, task.dev, vocabs, task.metric, *dev_decoder)
        improved = dev["score"] > progress["best_score"]
        if improved:
            progress.update(best_score=dev["score"], best_epoch=epoch, bad_epochs=0)
        else:
            progress["bad_epochs"] += 1
        progress["epoch"] = epoch
        save(epoch, dev, improved)
        metrics = {"epoch": epoch, "train_loss": train_loss, "dev_score": dev["score"],
                   "best_dev_score": progress["best_score"],
                   "train_sentences_per_second": progress["train_sentences"] / progress["train_seconds"]}
        if config.objective != "ce":
            metrics["alpha"] = alpha
        if config.progress:
            tqdm.write(f"epoch {epoch}: loss {train_loss:.4f}  dev {dev['score']:.4f}" + ("  *" if improved else ""))
        if report is not None:
            report(epoch, metrics, out / "last")

    # Score the best checkpoint, not the last epoch's weights.
    model, vocabs, _ = load_tagger(out, device=str(device))
    k = config.eval_beam_size
    final: dict[str, Any] = {"task": task.name, "metric": task.metric, "best_epoch": progress["best_epoch"],
                             "train_sentences_per_second": progress["train_sentences"] / max(progress["train_seconds"], 1e-9)}
    # Soft beam decoding (§2.4) at the temperature training ended with.
    final_alpha = config.alpha_schedule.at(max(progress["epoch"], 1))
    for split, sentences in (("dev", task.dev), ("test", task.test)):
        final[split] = {
            "greedy": score_split(model, sentences, vocabs, task.metric, "greedy", progress=config.progress),
            f"beam{k}": score_split(model, sentences, vocabs, task.metric, "beam", k, progress=config.progress),
        }
        if k <= model.n_labels:
            final[split][f"soft_beam{k}"] = score_split(model, sentences, vocabs, task.metric, "soft-beam", k,
                                                        progress=config.progress, alpha=final_alpha)
    final["soft_beam_alpha"] = final_alpha
    atomic_write(out / "metrics.json", json.dumps(final, indent=2).encode())
    return final
