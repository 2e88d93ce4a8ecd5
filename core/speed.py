"""Tu & Gimpel (2019) Table 3 and Fig. 2: test-time inference speed (examples/s) of an inference
network, Viterbi and gradient descent on the network's CRF energy, and each method's score.

    round_robin(fns, repeats, device)   median wall seconds of each fn, rounds in turn after a warm-up
    structured_methods(crf, infnet,...) method name -> one batch -> labels (B, T): the timed work
    time_methods(methods, ...)          examples/s per method and batch size (round-robin), and tags
    SpeedConfig, run_speed(config)      the `speed` sweep stage: an "infnet" checkpoint and its energy

What is timed is the model's forward work for the whole split, batches pre-built (bucketed by length,
as `beamtune decode` does), so corpus reading and vocab lookup are excluded:
  - infnet:  A_Psi(x) -> argmax labels;
  - viterbi: BLSTM features (unary) + batched Viterbi;
  - gd:      BLSTM features + N momentum steps on E(x, softmax(y)) at one lr (one trajectory from
             core.search.gradient's random start), then argmax.
The scores come from the tags of the last timed run at the first batch size, so they are the scores
of exactly the work timed; they equal core.decoding.score_decoder's at that batch size
(tests/test_speed.py). The paper times on a GPU at batch 10; here the device and threads are stated
with every result.

Shapes: B sentences, T positions, L labels.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from core.checkpoint import CheckpointError
from core.config import raise_first, resolve_device
from core.data import Batch, load_task, make_batches
from core.decoding import DEFAULT_LR, scatter_tags, structured_labels
from core.loading import load_for_decoding
from core.metrics import evaluate
from core.oracle import SPLITS

METHODS = ("infnet", "viterbi", "gd")  # metric prefixes, in Table 3's column order (networks first)
BATCH_SIZES = (10, 256)  # the paper's minibatch (10) and one large batch
# The parameter a speed trial logs its network's architecture under (not a SpeedConfig field: it is
# read from the checkpoint), so a report puts the network in its Table 3 column.
ARCH_PARAM = "infnet_arch"
# Likewise whether the network is a "+" one (char CNN; its energy the BLSTM-CRF+): Table 3 is the
# BLSTM-CRF's (Table 1's networks), so a report keeps "+" networks' timings in rows of their own.
PLUS_PARAM = "infnet_plus"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def round_robin(fns: dict[Any, Callable[[], Any]], repeats: int, device: torch.device) -> dict[Any, float]:
    """Median wall seconds of each `fn()` over `repeats` rounds, after one untimed warm-up round;
    each round runs every fn once, in turn, so a change in the machine's load falls on all of them
    alike (the shared-machine rule of benchmarks/)."""
    for fn in fns.values():  # warm-up: allocator, lazy initialisation, caches
        fn()
        sync(device)
    times: dict[Any, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def structured_methods(crf, infnet, gd_steps: int, gd_lr: float, momentum: float = 0.9,
                       seed: int = 0) -> dict[str, Callable[[Batch], torch.Tensor]]:
    """Method name -> (batch -> labels (B, T)), the forward work Table 3 times: the decoders of
    `beamtune decode` (core.decoding.structured_labels), with the BLSTM feature pass for Viterbi and
    GD. `infnet` is left out when None (a CRF alone times Viterbi and GD)."""
    def method(decoder: str) -> Callable[[Batch], torch.Tensor]:
        def labels(batch: Batch) -> torch.Tensor:
            unary = None if decoder == "infnet" else crf.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
            return structured_labels(decoder, batch, unary, crf, infnet, gd_steps, gd_lr, momentum, seed)[0]  # (B, T)
        return labels

    return {name: method(name) for name in (["infnet"] if infnet is not None else []) + ["viterbi", "gd"]}


def time_methods(methods: dict[str, Callable[[Batch], torch.Tensor]], sentences, vocabs, batch_sizes: Sequence[int],
                 repeats: int, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, list]]:
    """Each method at each batch size, timed round-robin: rows {"method", "batch_size", "seconds"
    (median for the split), "examples_per_second", "seconds_per_sentence"}, and each method's tags
    (input order) from its last timed run at the first batch size."""
    batches = {size: [batch.to(device) for batch in make_batches(sentences, vocabs, size)] for size in batch_sizes}
    outputs: dict[tuple[str, int], list[torch.Tensor]] = {(name, size): [] for name in methods for size in batch_sizes}

    def cell(name: str, size: int) -> Callable[[], None]:
        fn, out = methods[name], outputs[(name, size)]

        def run() -> None:
            out.clear()
            with torch.no_grad():
                for batch in batches[size]:
                    out.append(fn(batch))  # (B, T) each; kept on the device until after timing
        return run

    seconds = round_robin({key: cell(*key) for key in outputs}, repeats, device)
    n = len(sentences)
    rows = [{"method": name, "batch_size": size, "seconds": seconds[(name, size)],
             "examples_per_second": n / seconds[(name, size)], "seconds_per_sentence": seconds[(name, size)] / n}
            for name, size in outputs]
    tags = {}
    for name in methods:
        pred: list[Any] = [None] * n
        for batch, labels in zip(batches[batch_sizes[0]], outputs[(name, batch_sizes[0])]):
            scatter_tags(pred, labels, batch, sentences, vocabs.labels.itos)
        tags[name] = pred
    return rows, tags


@dataclass
class SpeedConfig:
    """One Table 3 measurement over a split: the parameters a `speed` sweep stage may fix or search."""

    checkpoint: str  # an "infnet" checkpoint; its CRF energy gives Viterbi and GD
    split: str = "test"
    data_root: str | None = None
    energy: str | None = None  # the CRF energy (default: the one recorded in the infnet checkpoint)
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    gd_steps: int = 20  # N: the paper's Table 3 GD
    gd_lr: float = DEFAULT_LR["gd"]  # the gd decoder's default step size
    momentum: float = 0.9
    repeats: int = 3  # timed runs per cell (after one warm-up); the cell is their median
    seed: int = 0  # GD's random start
    device: str = "cpu"
    threads: int = 1  # one thread by default: comparable across loaded machines and with the paper's one device

    def __post_init__(self) -> None:
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        raise_first("SpeedConfig", [
            ("split", self.split in SPLITS, "split must be 'dev' or 'test'"),
            ("batch_sizes", len(self.batch_sizes) > 0 and all(b >= 1 for b in self.batch_sizes),
             "batch_sizes must be a non-empty list of sizes >= 1"),
            ("batch_sizes", len(set(self.batch_sizes)) == len(self.batch_sizes), "batch_sizes must not repeat a size"),
            ("gd_steps", self.gd_steps >= 1, "gd_steps must be >= 1"),
            ("gd_lr", self.gd_lr > 0, "gd_lr must be > 0"),
            ("momentum", 0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            ("repeats", self.repeats >= 1, "repeats must be >= 1"),
            ("threads", self.threads >= 0, "threads must be >= 0"),
        ])


def flat_metrics(rows: Sequence[dict[str, Any]], scores: dict[str, float]) -> dict[str, float]:
    """MLflow metrics: {method}_b{B}_eps (examples/s), {method}_b{B}_sps (seconds per sentence),
    {method}_score, e.g. infnet_b10_eps, viterbi_b256_sps, gd_score."""
    metrics = {f"{name}_score": score for name, score in scores.items()}
    for r in rows:
        metrics[f"{r['method']}_b{r['batch_size']}_eps"] = r["examples_per_second"]
        metrics[f"{r['method']}_b{r['batch_size']}_sps"] = r["seconds_per_sentence"]
    return metrics


def run_speed(config: SpeedConfig) -> dict[str, Any]:
    """Table 3 on `config.split`: {"rows" (time_methods'), "scores" (method -> score), "metrics"
    (flat_metrics), "arch" (the network's), "task", "split", "metric", "sentences", "threads",
    "device", "torch"}."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    crf, infnet, vocabs, meta = load_for_decoding(config.checkpoint, config.energy, str(device))
    if infnet is None:
        raise CheckpointError(f"checkpoint {config.checkpoint}: the speed stage needs an inference-network checkpoint")
    if crf is None:
        raise CheckpointError(f"checkpoint {config.checkpoint}: no CRF energy recorded; give its energy")
    crf.eval()
    infnet.eval()
    task = load_task(meta["task"]["name"], config.data_root)
    sentences = task.dev if config.split == "dev" else task.test
    methods = structured_methods(crf, infnet, config.gd_steps, config.gd_lr, config.momentum, config.seed)
    rows, tags = time_methods(methods, sentences, vocabs, config.batch_sizes, config.repeats, torch.device(device))
    gold = [s.tags for s in sentences]
    scores = {name: evaluate(gold, pred, task.metric)["score"] for name, pred in tags.items()}
    return {"rows": rows, "scores": scores, "metrics": flat_metrics(rows, scores),
            "arch": meta.get("model_config", {}).get("arch", ""), "task": task.name, "split": config.split,
            "metric": task.metric, "sentences": len(sentences), "threads": torch.get_num_threads(),
            "device": str(device), "torch": torch.__version__}
