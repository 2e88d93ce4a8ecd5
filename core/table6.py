"""Tu & Gimpel (2019) Table 6 (§7.1): approximate inference with one BLSTM-CRF+ energy, by method
and iteration count N, each with its score and mean energy on a split (test by default):

    gold standard                  score 1, E(x, y_gold)
    Viterbi                        the exact minimum of the energy
    gradient descent, N            lr tuned per sentence (oracle), relaxed output's energy
    infnet+                        the network's relaxed output A_Psi(x): its energy
    discretized infnet+            argmax of A_Psi(x): its energy (same score)
    instance-tailored infnet+, N   core.tailoring; one lr per N tuned on dev
    infnet+ warm-starts GD, N      core.infnet_gd; one lr per N tuned on dev
    (warm-started GD, N, oracle)   extra rows: lr per sentence, from the same trajectories

"Energy" is the relaxed output's where a method has one (GD, infnet, tailoring, warm start) and the
discrete output's otherwise, as in the paper; every row also carries its discrete energy. Dev
tuning picks, for each N, the lr with the best corpus metric (core.oracle.one_lr_per_step).

    Table6Config, run_table6(config)   the `table6` sweep stage: an "infnet" checkpoint, its energy

Limits (tests/test_table6.py): at N = 0 the tailored network is the trained one and warm-started
GD starts at the network's relaxed output (its argmax: the discretized row); every discrete energy
is at least Viterbi's, sentence by sentence.

Shapes: B sentences, T positions, L labels.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from core.checkpoint import CheckpointError
from core.config import ConfigError, raise_first, resolve_device
from core.data import UNSEEN_LABEL, load_task, make_batches
from core.decoding import scatter_tags, score_decoder
from core.loading import load_for_decoding
from core.metrics import evaluate
from core.oracle import SPLITS, one_lr_per_step, run_oracle_grid
from core.search.gradient import GRID_LRS, check_grid
from core.tailoring import tailor_trace

# Table 6's step counts: gradient descent (its rows), instance tailoring and warm starts.
GD_STEPS = (10, 20, 30, 40, 50, 100, 500, 1000)
REFINE_STEPS = (3, 5, 10)
# Tailoring moves the network's weights, not the relaxed output: the GD grid's rates would wreck it
# (lr 0.1 already gives 51.7 % on twitter_pos dev, RESULTS "Tables 4 and 6"). The paper names no grid.
TAILOR_LRS = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class Table6Config:
    """One Table 6 over a split: the parameters a `table6` sweep stage may fix or search."""

    checkpoint: str  # an "infnet" checkpoint (infnet+); its CRF energy is the one it was trained against
    split: str = "test"
    data_root: str | None = None
    energy: str | None = None  # the CRF energy (default: the one recorded in the infnet checkpoint)
    gd_steps: tuple[int, ...] = GD_STEPS
    gd_lrs: tuple[float, ...] = GRID_LRS
    tailor_steps: tuple[int, ...] = REFINE_STEPS
    tailor_lrs: tuple[float, ...] = TAILOR_LRS
    warm_steps: tuple[int, ...] = REFINE_STEPS
    warm_lrs: tuple[float, ...] = GRID_LRS
    momentum: float = 0.9
    batch_size: int = 256  # GD trajectories (every lr of a batch is one tensor program)
    tailor_batch_size: int = 32  # a copy of the network per sentence; 64 and 128 no faster (RESULTS, sessions 3, 14)
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        raise_first("Table6Config", [
            ("split", self.split in SPLITS, "split must be 'dev' or 'test'"),
            ("momentum", 0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            ("batch_size", self.batch_size >= 1, "batch_size must be >= 1"),
            ("tailor_batch_size", self.tailor_batch_size >= 1, "tailor_batch_size must be >= 1"),
            ("threads", self.threads >= 0, "threads must be >= 0"),
        ])
        for steps, lrs in (("gd_steps", "gd_lrs"), ("tailor_steps", "tailor_lrs"), ("warm_steps", "warm_lrs")):
            try:
                checked = check_grid(getattr(self, steps), getattr(self, lrs))
            except ValueError as error:
                raise ConfigError("Table6Config", steps if "steps" in str(error) else lrs, str(error)) from None
            setattr(self, steps, checked[0])
            setattr(self, lrs, checked[1])


def row(method: str, score: float, energy: float, discrete_energy: float, steps: int | None = None,
        lr: float | None = None) -> dict[str, Any]:
    """One Table 6 row; `steps` and `lr` None where the method has none."""
    return {"method": method, "steps": steps, "lr": lr, "score": float(score), "energy": float(energy),
            "discrete_energy": float(discrete_energy)}


@torch.no_grad()
def gold_energy(crf, sentences, vocabs, batch_size: int = 256) -> tuple[float, int]:
    """Mean E(x, y_gold) over the sentences whose gold tags the CRF knows, and how many those are
    (a dev/test tag never seen in training, UNSEEN_LABEL, has no energy)."""
    device = next(crf.parameters()).device
    total, counted = 0.0, 0
    for batch in make_batches(sentences, vocabs, batch_size):
        batch = batch.to(device)
        known = ~((batch.labels == UNSEEN_LABEL) & batch.mask).any(dim=1)  # (B,)
        unary = crf.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
        energy = crf.energy(unary, batch.labels.clamp(min=0), batch.mask)  # (B,)
        total += float(energy[known].sum())
        counted += int(known.sum())
    return (total / counted if counted else math.nan), counted


def gd_rows(crf, sentences, vocabs, metric: str, config: Table6Config) -> list[dict]:
    """Viterbi and GD at every N with the lr tuned per sentence (core.oracle's Table-6 summary)."""
    grid = run_oracle_grid(crf, sentences, vocabs, metric, config.gd_steps, config.gd_lrs, config.momentum,
                           config.batch_size, config.seed, progress=config.progress)
    viterbi = grid["viterbi"]
    rows = [row("Viterbi", viterbi["score"], viterbi["energy"], viterbi["energy"])]
    rows += [row("gradient descent", r["score"], r["energy"], r["discrete_energy"], r["steps"]) for r in grid["table6"]]
    return rows


def infnet_rows(crf, infnet, sentences, vocabs, metric: str, config: Table6Config) -> list[dict]:
    """The network's relaxed output and its argmax: one decode, two energies, one score."""
    out = score_decoder(sentences, vocabs, metric, "infnet", crf=crf, infnet=infnet, batch_size=config.tailor_batch_size)
    return [row("infnet", out["score"], out["relaxed_energy"], out["energy"]),
            row("discretized infnet", out["score"], out["energy"], out["energy"])]


@torch.no_grad()
def tailored_grid(crf, infnet, sentences, vocabs, metric: str, steps: Sequence[int], lrs: Sequence[float],
                  momentum: float, batch_size: int) -> list[dict[str, Any]]:
    """Instance tailoring at every (N, lr), one trajectory per lr recording every N
    (core.tailoring.tailor_trace): entries as run_oracle_grid's "grid" (corpus metric, mean relaxed
    and discrete energy)."""
    device = next(crf.parameters()).device
    n = len(sentences)
    pred: dict[tuple[int, float], list[Any]] = {(k, lr): [None] * n for k in steps for lr in lrs}
    relaxed = {key: 0.0 for key in pred}
    discrete = {key: 0.0 for key in pred}
    for batch in make_batches(sentences, vocabs, batch_size):
        batch = batch.to(device)
        unary = crf.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
        for lr in lrs:
            trace = tailor_trace(infnet, crf.crf, batch.words, batch.chars, batch.lengths, unary, steps, lr, momentum)
            for k, out in zip(steps, trace):
                scatter_tags(pred[(k, lr)], out.labels, batch, sentences, vocabs.labels.itos)
                relaxed[(k, lr)] += float(crf.energy(unary, out.probs, batch.mask).sum())  # probs (B, T, L)
                discrete[(k, lr)] += float(crf.energy(unary, out.labels, batch.mask).sum())  # labels (B, T)
    gold = [s.tags for s in sentences]
    return [{"steps": k, "lr": lr, "score": evaluate(gold, pred[(k, lr)], metric)["score"],
             "energy": relaxed[(k, lr)] / n, "discrete_energy": discrete[(k, lr)] / n} for (k, lr) in pred]


def tailored_rows(crf, infnet, dev, sentences, vocabs, metric: str, config: Table6Config) -> list[dict]:
    """Instance tailoring at each N with the lr chosen on dev; on the split, one trajectory per
    chosen lr."""

    def grid(split_sentences, lrs) -> list[dict[str, Any]]:
        return tailored_grid(crf, infnet, split_sentences, vocabs, metric, config.tailor_steps, lrs, config.momentum,
                             config.tailor_batch_size)

    chosen = one_lr_per_step(grid(dev, config.tailor_lrs))
    at = {(e["steps"], e["lr"]): e for e in grid(sentences, sorted({e["lr"] for e in chosen.values()}))}
    rows = []
    for n, best in sorted(chosen.items()):
        e = at[(n, best["lr"])]
        rows.append(row("instance-tailored infnet", e["score"], e["energy"], e["discrete_energy"], n, best["lr"]))
    return rows


def warm_rows(crf, infnet, dev, sentences, vocabs, metric: str, config: Table6Config) -> list[dict]:
    """GD from the network's logits at each N: lr chosen on dev, and the per-sentence oracle (extra
    rows). One batched trajectory per split gives every (N, lr)."""

    def grid(split_sentences) -> dict[str, Any]:
        return run_oracle_grid(crf, split_sentences, vocabs, metric, config.warm_steps, config.warm_lrs,
                               config.momentum, config.batch_size, config.seed, infnet=infnet)

    chosen = one_lr_per_step(grid(dev)["grid"])
    result = grid(sentences)
    at = {(e["steps"], e["lr"]): e for e in result["grid"]}
    rows = []
    for n, best in sorted(chosen.items()):
        e = at[(n, best["lr"])]
        rows.append(row("infnet warm-starts GD", e["score"], e["energy"], e["discrete_energy"], n, best["lr"]))
    rows += [row("infnet warm-starts GD (oracle lr per sentence)", r["score"], r["energy"], r["discrete_energy"], r["steps"])
             for r in result["table6"]]
    return rows


METRIC_PREFIX = {"gold standard": "gold", "Viterbi": "viterbi", "gradient descent": "gd", "infnet": "infnet",
                 "discretized infnet": "infnet_discrete", "instance-tailored infnet": "tailored",
                 "infnet warm-starts GD": "warmgd", "infnet warm-starts GD (oracle lr per sentence)": "warmgd_oracle"}


# Methods whose output is discrete: their energy is the discrete energy, logged once.
DISCRETE = ("gold standard", "Viterbi", "discretized infnet")


def flat_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Rows -> MLflow metrics: PREFIX[_nN]_{score,energy[,discrete_energy][,lr]}, e.g. gd_n10_score,
    infnet_energy, infnet_discrete_energy, tailored_n3_lr (PREFIX: METRIC_PREFIX). The infnet row's
    discrete energy and the discretized row's energy share a name: they are the same number."""
    metrics = {}
    for r in rows:
        name = METRIC_PREFIX[r["method"]] + (f"_n{r['steps']}" if r["steps"] is not None else "")
        metrics.update({f"{name}_score": r["score"], f"{name}_energy": r["energy"]})
        if r["method"] not in DISCRETE:
            metrics[f"{name}_discrete_energy"] = r["discrete_energy"]
        if r["lr"] is not None:
            metrics[f"{name}_lr"] = r["lr"]
    return metrics


def run_table6(config: Table6Config) -> dict[str, Any]:
    """Every Table 6 row on `config.split`: {"rows", "metrics" (flat_metrics), "gold_sentences",
    "cost" (wall seconds per part, their sum, and CPU seconds), "task", "split", "metric"}."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = str(resolve_device(config.device))
    crf, infnet, vocabs, meta = load_for_decoding(config.checkpoint, config.energy, device)
    if infnet is None:
        raise CheckpointError(f"checkpoint {config.checkpoint}: Table 6 needs an inference-network checkpoint")
    if crf is None:
        raise CheckpointError(f"checkpoint {config.checkpoint}: no CRF energy recorded; give its energy")
    task = load_task(meta["task"]["name"], config.data_root)
    sentences = task.dev if config.split == "dev" else task.test
    cost, start, cpu = {}, time.perf_counter(), time.process_time()

    def timed(part: str, value):
        nonlocal start
        now = time.perf_counter()
        cost[part], start = now - start, now
        return value

    energy, counted = timed("gold", gold_energy(crf, sentences, vocabs, config.batch_size))
    rows = [row("gold standard", 1.0, energy, energy)]
    rows += timed("gd", gd_rows(crf, sentences, vocabs, task.metric, config))
    rows += timed("infnet", infnet_rows(crf, infnet, sentences, vocabs, task.metric, config))
    rows += timed("tailored", tailored_rows(crf, infnet, task.dev, sentences, vocabs, task.metric, config))
    rows += timed("warmgd", warm_rows(crf, infnet, task.dev, sentences, vocabs, task.metric, config))
    cost["seconds"] = sum(cost.values())
    cost["cpu_seconds"] = time.process_time() - cpu  # this process's CPU time: what a loaded machine does not inflate
    return {"rows": rows, "metrics": flat_metrics(rows), "gold_sentences": counted, "sentences": len(sentences),
            "cost": cost, "task": task.name, "split": config.split, "metric": task.metric}
