"""The per-instance GD oracle (Tu & Gimpel 2019, §5.2, Table 6): gradient-descent inference run
over a grid of step counts N and learning rates, the best (N, lr) chosen per sentence by its own
metric, and the Table-6 summaries.

    oracle_choice / per_step_choice    per-instance choice of (N, lr), or of lr for each fixed N
    one_lr_per_step(grid)              one lr for all sentences per N, by the corpus metric (dev tuning)
    run_oracle_grid(model, sentences)  the whole grid over a split: one row per sentence + Table 6
    OracleConfig, run_oracle(config)   the `gd-oracle` command and sweep stage: a checkpoint, a split

Ties go to the lower energy, then the smaller N, then the earlier learning rate. GD itself is
core.search.gradient; starting it from an inference network's logits is core.infnet_gd.

Shapes: B sentences, T positions, L labels, R learning rates, K recorded step counts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from core.checkpoint import CheckpointError
from core.config import ConfigError, raise_first, resolve_device
from core.data import load_task, make_batches
from core.decoding import scatter_tags
from core.loading import load_for_decoding
from core.metrics import evaluate, instance_scores, search_errors
from core.search.gradient import GRID_LRS, GRID_STEPS, check_grid, gradient_descent

# ---------------------------------------------------------------------------------------------
# Oracle tuning
# ---------------------------------------------------------------------------------------------


def _best_index(scores: torch.Tensor, energies: torch.Tensor) -> torch.Tensor:
    """scores, energies (C, B) over C candidates -> (B,) index of the highest score, ties broken by
    the lowest energy, then by the first candidate."""
    best = scores.max(dim=0, keepdim=True).values  # (1, B)
    candidates = scores >= best  # (C, B)
    masked = torch.where(candidates, energies, torch.full_like(energies, float("inf")))  # (C, B)
    low = masked.min(dim=0, keepdim=True).values  # (1, B)
    first = (candidates & (masked <= low)).to(torch.int8).argmax(dim=0)  # (B,): first True
    return first


def oracle_choice(scores: torch.Tensor, energies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per instance, the (N, lr) pair with the best metric. scores, energies: (K, R, B) ->
    (k (B,), r (B,)) indices into the step and learning-rate grids (ties: lower energy, then the
    smaller N, then the earlier learning rate)."""
    K, R, B = scores.shape
    flat = _best_index(scores.reshape(K * R, B), energies.reshape(K * R, B))  # (B,)
    return flat // R, flat % R


def one_lr_per_step(grid: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """For each N, the `grid` entry ({"steps", "lr", "score", "discrete_energy", ...}, as
    run_oracle_grid returns) with the best corpus metric: one learning rate for every sentence, as
    Tu & Gimpel tune instance tailoring and warm starts on dev (ties: the lower mean discrete
    energy, then the earlier learning rate)."""
    by_steps: dict[int, list[dict[str, Any]]] = {}
    for entry in grid:
        by_steps.setdefault(int(entry["steps"]), []).append(entry)
    chosen = {}
    for n, entries in by_steps.items():
        scores = torch.tensor([[e["score"]] for e in entries], dtype=torch.float64)  # (R, 1)
        energies = torch.tensor([[e["discrete_energy"]] for e in entries], dtype=torch.float64)  # (R, 1)
        chosen[n] = entries[int(_best_index(scores, energies)[0])]
    return chosen


def per_step_choice(scores: torch.Tensor, energies: torch.Tensor) -> torch.Tensor:
    """For each fixed N, the per-instance best learning rate (Table 6): (K, R, B) -> r (K, B)."""
    return torch.stack([_best_index(scores[k], energies[k]) for k in range(scores.shape[0])])


# ---------------------------------------------------------------------------------------------
# The oracle grid over a split
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _grid_pass(model, sentences, vocabs, steps, lrs, momentum, batch_size, seed, infnet, progress):
    """One pass of GD over every (N, lr) and Viterbi, batched: per sentence its label ids for every
    (N, lr) as a (K, R, n) tensor, the relaxed and discretized energies (K, R, n_sent), Viterbi's
    tags and energies (n_sent,), and the pass's wall seconds."""
    model.eval()
    device = next(model.parameters()).device
    itos = vocabs.labels.itos
    n_sent = len(sentences)
    K, R = len(steps), len(lrs)
    all_labels: list[Any] = [None] * n_sent
    all_energy = torch.zeros(K, R, n_sent)
    all_discrete = torch.zeros(K, R, n_sent)
    viterbi_labels: list[Any] = [None] * n_sent
    viterbi_energy = torch.zeros(n_sent)
    start = time.perf_counter()
    for host in tqdm(make_batches(sentences, vocabs, batch_size), desc="gd grid", disable=not progress, leave=False):
        batch = host.to(device)
        unary = model.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
        init = infnet(batch.words, batch.chars, batch.lengths).logits if infnet is not None else None
        trace = gradient_descent(model.crf, unary, batch.mask, steps, lrs, momentum, init=init, seed=seed)
        vit = model.viterbi(unary, batch.mask)
        # One copy to the host per output and batch (not one per sentence), indices from the host batch.
        trace_labels = trace.labels.cpu()  # (K, R, B, T)
        for row, i in enumerate(host.index.tolist()):
            all_labels[i] = trace_labels[:, :, row, :len(sentences[i].words)]  # (K, R, n)
        scatter_tags(viterbi_labels, vit.labels, host, sentences, itos)
        all_energy[:, :, host.index] = trace.energy.cpu()  # (K, R, B)
        all_discrete[:, :, host.index] = trace.discrete_energy.cpu()  # (K, R, B)
        viterbi_energy[host.index] = -vit.scores.cpu()  # (B,)
    return all_labels, all_energy, all_discrete, viterbi_labels, viterbi_energy, time.perf_counter() - start


def run_oracle_grid(
    model,
    sentences,
    vocabs,
    metric: str,
    steps: Sequence[int] = GRID_STEPS,
    lrs: Sequence[float] = GRID_LRS,
    momentum: float = 0.9,
    batch_size: int = 256,
    seed: int = 0,
    infnet=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the GD grid on every sentence of a split with a trained BLSTMCRF `model` (random
    starts, or starts from `infnet`'s logits). Returns

      rows:    one dict per sentence (id, length, chosen N and lr, metric, energies, Viterbi energy)
      table6:  per N: corpus metric and mean energy with the per-instance best lr
      grid:    per (N, lr): corpus metric and mean energies with that one lr for every sentence
      oracle:  corpus metric with the per-instance best (N, lr); viterbi: its corpus metric
      cost:    optimizer steps and wall seconds."""
    steps, lrs = check_grid(steps, lrs)
    itos = vocabs.labels.itos
    gold = [list(s.tags) for s in sentences]
    n_sent = len(sentences)
    K, R = len(steps), len(lrs)
    all_labels, all_energy, all_discrete, viterbi_labels, viterbi_energy, seconds = _grid_pass(
        model, sentences, vocabs, steps, lrs, momentum, batch_size, seed, infnet, progress)

    def tags(ids) -> list[str]:
        return [itos[y] for y in ids]

    scores = torch.zeros(K, R, n_sent)
    grid = []  # per (N, lr), the same for every sentence: corpus metric and mean energies
    for k in range(K):
        for r in range(R):
            pred = [tags(all_labels[i][k, r].tolist()) for i in range(n_sent)]
            scores[k, r] = torch.tensor(instance_scores(gold, pred, metric))
            grid.append({"steps": steps[k], "lr": lrs[r], "score": evaluate(gold, pred, metric)["score"],
                         "energy": float(all_energy[k, r].mean()), "discrete_energy": float(all_discrete[k, r].mean())})
    best_k, best_r = oracle_choice(scores, all_discrete)  # (n,), (n,)
    per_n = per_step_choice(scores, all_discrete)  # (K, n)
    columns = torch.arange(n_sent)
    table6 = []
    for k, n_steps in enumerate(steps):
        pred = [tags(all_labels[i][k, int(per_n[k, i])].tolist()) for i in range(n_sent)]
        table6.append({
            "steps": n_steps,
            "score": evaluate(gold, pred, metric)["score"],
            "energy": float(all_energy[k, per_n[k], columns].mean()),
            "discrete_energy": float(all_discrete[k, per_n[k], columns].mean()),
        })
    oracle_pred = [tags(all_labels[i][int(best_k[i]), int(best_r[i])].tolist()) for i in range(n_sent)]
    viterbi_pred = viterbi_labels
    viterbi_scores = instance_scores(gold, viterbi_pred, metric)
    rows = []
    for i, s in enumerate(sentences):
        k, r = int(best_k[i]), int(best_r[i])
        rows.append({
            "sentence": i, "length": len(s.words), "steps": steps[k], "lr": lrs[r],
            "metric": float(scores[k, r, i]), "energy": float(all_energy[k, r, i]),
            "discrete_energy": float(all_discrete[k, r, i]), "viterbi_energy": float(viterbi_energy[i]),
            "viterbi_metric": viterbi_scores[i],
        })
    chosen_discrete = all_discrete[best_k, best_r, columns]  # (n,)
    lengths = torch.tensor([len(s.words) for s in sentences])
    return {
        "rows": rows,
        "table6": table6,
        "grid": grid,
        "oracle": {"score": evaluate(gold, oracle_pred, metric)["score"], "energy": float(all_energy[best_k, best_r, columns].mean()),
                   "discrete_energy": float(chosen_discrete.mean())},
        "viterbi": {"score": evaluate(gold, viterbi_pred, metric)["score"], "energy": float(viterbi_energy.mean())},
        "search_error": {k: v for k, v in search_errors(chosen_discrete, viterbi_energy, lengths).items() if k != "errors"},
        "cost": {"optimizer_steps": max(steps) * n_sent * R, "trajectories": R, "seconds": seconds,
                 "sentences": n_sent, "infnet_start": infnet is not None},
    }


# ---------------------------------------------------------------------------------------------
# The `gd-oracle` command and sweep stage
# ---------------------------------------------------------------------------------------------


SPLITS = ("dev", "test")


@dataclass
class OracleConfig:
    """One run of the GD oracle grid (Tu & Gimpel 2019, Table 6) over a split: the `gd-oracle`
    command's options, and the parameters a `gd-oracle` sweep stage may fix or search."""

    checkpoint: str  # a "crf" checkpoint, or an "infnet" one (its energy; infnet_start uses its logits)
    split: str = "test"
    data_root: str | None = None
    energy: str | None = None  # infnet checkpoints: the CRF energy (default: the one it was trained with)
    infnet_start: bool = False  # start GD from the inference network's logits instead of near 0
    steps: tuple[int, ...] = GRID_STEPS
    lrs: tuple[float, ...] = GRID_LRS
    momentum: float = 0.9
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        self.steps, self.lrs = tuple(self.steps), tuple(self.lrs)
        raise_first("OracleConfig", [
            ("split", self.split in SPLITS, "split must be 'dev' or 'test'"),
            ("momentum", 0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            ("batch_size", self.batch_size >= 1, "batch_size must be >= 1"),
            ("threads", self.threads >= 0, "threads must be >= 0"),
        ])
        try:
            check_grid(self.steps, self.lrs)
        except ValueError as error:
            raise ConfigError("OracleConfig", "steps" if "steps" in str(error) else "lrs", str(error)) from None


def oracle_grid(checkpoint, split: str = "test", data_root=None, energy=None, infnet_start: bool = False,
                steps: Sequence[int] | None = None, lrs: Sequence[float] | None = None, device: str = "cpu",
                batch_size: int = 256, progress: bool = False, momentum: float = 0.9, seed: int = 0) -> dict[str, Any]:
    """Run the GD oracle grid with a "crf" checkpoint (or an infnet's energy; `infnet_start` starts
    GD from the infnet's logits) on a split."""
    crf, infnet, vocabs, meta = load_for_decoding(checkpoint, energy, device)
    if crf is None:
        raise CheckpointError(f"checkpoint {checkpoint}: no CRF energy to run gradient descent on (pass --energy)")
    if infnet_start and infnet is None:
        raise ValueError("--infnet-start needs an inference-network checkpoint")
    task = load_task(meta["task"]["name"], data_root)
    sentences = task.dev if split == "dev" else task.test
    result = run_oracle_grid(crf, sentences, vocabs, task.metric, steps or GRID_STEPS, lrs or GRID_LRS,
                             momentum=momentum, batch_size=batch_size, seed=seed,
                             infnet=infnet if infnet_start else None, progress=progress)
    result["task"], result["split"], result["metric"] = task.name, split, task.metric
    return result


def run_oracle(config: OracleConfig) -> dict[str, Any]:
    """The oracle grid as `config` says: rows (one per sentence), table6, oracle, viterbi, cost."""
    if config.threads:
        torch.set_num_threads(config.threads)
    return oracle_grid(config.checkpoint, config.split, config.data_root, config.energy, config.infnet_start,
                       config.steps, config.lrs, str(resolve_device(config.device)), config.batch_size,
                       config.progress, config.momentum, config.seed)
