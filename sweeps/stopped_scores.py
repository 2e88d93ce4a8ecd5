"""Dev and test scores for the trials a sweep's scheduler stopped early.

A trial that trains every epoch scores its best checkpoint on dev and test itself
(sweeps.trainables.log_final). A trial that ASHA stops cannot: Tune ends its training thread at
the report, and often its actor with it. So once Tune returns, while Ray is still up, the driver
scores the best checkpoint of every stopped trial that has no final scores yet, one Ray task per
trial with the trial's own resources (all at once, as the cluster fits them), with
core.train.score_stopped: the same scoring a last epoch ends with. The scores and metrics.json go
to the trial's MLflow run through its journal, as the trial would have logged them. So the winner
always has a test score, whatever the scheduler did, and a report can show every trial.

What it costs: one final evaluation (dev and test, every decoder) per stopped trial, run in
parallel; no training. A trial whose scoring fails keeps its run as it is, and the driver says so
in one line.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from core.checkpoint import MANIFEST
from storage import tracking
from storage.best import BEST_SUBDIR


def unscored(trials: list, journals: Path) -> list:
    """Trials Ray ended well (TERMINATED) with a best checkpoint but no final scores in their
    journal: the early-stopped ones (a trial that ran every epoch logged its own)."""
    def has_best(trial) -> bool:
        return trial.checkpoint is not None and (Path(trial.checkpoint.path) / BEST_SUBDIR / MANIFEST).is_file()

    return [t for t in trials if t.status == "TERMINATED" and has_best(t)
            and not tracking.has_final_scores(journals, t.trial_id)]


def score_checkpoint(checkpoint: str, config: dict[str, Any], context: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(A Ray task.) Score the best checkpoint inside a trial's reported `checkpoint` (its layout:
    sweeps.trainables._pack) on dev and test, with the trial's own config; returns (core.train's
    final dict, the text of its metrics.json)."""
    from core.train import score_stopped
    from sweeps.trainables import _unpack, build_train_config

    with tempfile.TemporaryDirectory(prefix="beamtune-score-") as tmp:
        out = Path(tmp) / "run"
        _unpack(Path(checkpoint), out)
        final = score_stopped(build_train_config(config, context, out, out / "last"))
        return final, (out / "metrics.json").read_text()


def score_stopped_trials(trials: list, resources: dict[str, float], context: dict[str, Any], journals: Path,
                         say: Callable[[str], None]) -> int:
    """Score every unscored stopped trial's best checkpoint (Ray tasks; Ray must be up) and journal
    the scores to its run; returns how many were scored."""
    import ray

    todo = unscored(trials, journals)
    if not todo:
        return 0
    say(f"scoring the best checkpoint of {len(todo)} early-stopped trial(s) on dev and test")
    custom = {k: v for k, v in resources.items() if k not in ("cpu", "gpu")}
    task = ray.remote(score_checkpoint).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"],
                                                resources=custom or None, max_retries=1)
    pending = {t.trial_id: task.remote(t.checkpoint.path, t.config, context) for t in todo}
    scored = 0
    for trial in todo:
        try:
            final, metrics_json = ray.get(pending[trial.trial_id])
        except ray.exceptions.RayError as error:
            last = (str(error).strip().splitlines() or ["unknown error"])[-1][:300]
            say(f"could not score the best checkpoint of stopped trial {trial}: {last}")
            continue
        log_scores(trial, final, metrics_json, context, journals)
        scored += 1
    return scored


def log_scores(trial, final: dict[str, Any], metrics_json: str, context: dict[str, Any], journals: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="beamtune-score-") as tmp:
        path = Path(tmp) / "metrics.json"
        path.write_text(metrics_json)
        tracking.log_stopped_scores(context["tracking_uri"], journals, context["experiment_id"],
                                    context["parent_run_id"], trial.trial_id, str(trial), final, path)
