"""The epoch loop: `train(config, report)`, for every objective.

Builds data and the stage (`core.stages`: model, vocabularies, loss, dev score, final scores)
from a `TrainConfig`, trains, scores dev after every epoch, keeps the best-on-dev checkpoint in
`config.out` (and every epoch's state in `out/last`), stops early when dev has not improved for
`patience` epochs, and finally scores the best checkpoint on dev and test into
`out/metrics.json`. Nothing here depends on the objective: `run_epoch` and `train` see a `Stage`.

`report(epoch, metrics, checkpoint_dir)` is called after every epoch; the sweep layer passes one
that forwards to Ray Tune, the CLI passes none.

Where to start reading: core/stages/__init__.py (the registry and `TrainConfig`), then the stage of
the objective at hand; its module docstring traces the path from a config value (alpha, lambda) to
the search or loss it drives.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from core.checkpoint import CheckpointError, atomic_write, load_checkpoint, output_directory, save_checkpoint
from core.config import TrainingError, resolve_device, seed_everything
from core.data import Batch, load_task, make_batches
from core.stages import Stage, TrainConfig, make_stage

__all__ = ["Report", "TrainConfig", "TrainingError", "make_optimizer", "run_epoch", "score_stopped", "train"]

Report = Callable[[int, dict[str, float], Path | None], None]


def run_epoch(
    stage: Stage,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Batch],
    config: TrainConfig,
    epoch: int,
    device: torch.device,
) -> float:
    """One pass of training on the stage's objective over `batches`; returns the mean loss per
    token, whatever `config.loss_per` the gradient steps on. Raises TrainingError, naming the epoch
    and batch, as soon as a loss is not finite."""
    stage.model.train()
    params = [p for p in stage.model.parameters() if p.requires_grad]
    total_loss, total_tokens = 0.0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", disable=not config.progress, leave=False)
    for step, batch in enumerate(bar):
        batch = batch.to(device)
        loss = stage.loss(batch, epoch)  # () per token
        if not torch.isfinite(loss):
            raise TrainingError(f"epoch {epoch}, batch {step}: loss is {loss.item()} (try a lower --lr or clipping)")
        optimizer.zero_grad(set_to_none=True)
        tokens = int(batch.lengths.sum())
        scale = tokens / len(batch.lengths) if config.loss_per == "sentence" else 1.0  # per sentence: sum / B
        (loss * scale).backward()
        if config.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.clip)
        optimizer.step()
        total_loss += loss.item() * tokens
        total_tokens += tokens
        bar.set_postfix(loss=f"{total_loss / total_tokens:.4f}")
    return total_loss / total_tokens


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]  # a fixed CRF energy has none
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


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
    if config.max_train_length:  # before train_limit: "the first N" counts the sentences kept
        task.train = [s for s in task.train if len(s.words) <= config.max_train_length]
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

    if stage.scores_epoch_zero:
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
                   # 1 on the epoch after which early stopping ends the run: a sweep's view tells this
                   # end from a scheduler's stop
                   "patience_exhausted": float(bool(config.patience and progress["bad_epochs"] >= config.patience
                                                    and epoch < config.epochs)),
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


def score_stopped(config: TrainConfig) -> dict[str, Any]:
    """The final scores of a run stopped before its last epoch (a sweep trial its scheduler cut):
    `config.out` holds its best checkpoint and `config.resume_from` its last state (e.g. OUT/last).
    That state is continued for no further epoch, so `train` scores the best checkpoint on dev and
    test exactly as after a last epoch, into out/metrics.json, and returns the same dict."""
    if not config.resume_from:
        raise CheckpointError("score_stopped needs resume_from: the stopped run's last state")
    state = load_checkpoint(config.resume_from).training_state or {}
    if "progress" not in state:
        raise CheckpointError(f"checkpoint {config.resume_from}: has no training state to resume from")
    epochs = int(state["progress"]["epoch"])
    if epochs < 1:  # `epochs` 1 would train one, not score
        raise CheckpointError(f"checkpoint {config.resume_from}: trained no epoch, nothing to score")
    return train(dataclasses.replace(config, epochs=epochs))
