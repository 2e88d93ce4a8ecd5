"""Trials that ASHA stops before their last epoch still get their best checkpoint scored on dev and
test (sweeps.stopped_scores): the same `final.*` metrics and metrics.json in their MLflow run as a
trial that ran every epoch, so the winner always has a test score. A real local Ray sweep, one
trial at a time, where the weak trials (a learning rate too small to learn anything) are cut at
the first rung."""
from __future__ import annotations

import json

import pytest

from storage import tracking
from sweeps.spec import validate

pytestmark = pytest.mark.slow  # starts Ray and MLflow

TINY = {"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4, "batch_size": 32,
        "patience": 0, "train_limit": 300}
EPOCHS = 3


def test_early_stopped_trials_get_final_scores(ray_local, tmp_path):
    from sweeps.launch import run_sweep

    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db"
    # One at a time, in grid order: the two good trials fill the first rung before the weak ones reach it.
    spec = validate({"name": "cut", "task": "synthetic", "stage": "ce", "epochs": EPOCHS, "fixed": TINY,
                     "space": {"lr": {"grid": [3e-2, 2e-2, 1e-7, 2e-7]}}, "search": {"algorithm": "grid"},
                     "num_samples": 1, "max_concurrent": 1, "resources": {"cpu": 1},
                     "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}}, storage=storage)
    outcome = run_sweep(spec, storage=storage, tracking_uri=uri, verbose=0)
    assert outcome.trials == 4 and outcome.errors == 0

    client = tracking.client(uri)
    runs = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    assert len(runs) == 4
    stopped = 0
    for run in runs:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "dev_score"))
        was_stopped = len(history) < EPOCHS
        assert was_stopped == (run.data.tags.get(tracking.STOPPED_TAG) == "true"), (history, run.data.tags)
        stopped += was_stopped
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert "final.test.greedy.score" in metrics and "final.dev.beam3.score" in metrics, (history, sorted(metrics))
        # The best checkpoint was scored: its epoch is the best dev epoch, its greedy dev score the
        # dev score reported then.
        best_step, best_value = max(history, key=lambda sv: (sv[1], -sv[0]))
        assert metrics["final.best_epoch"] == best_step
        assert metrics["final.dev.greedy.score"] == pytest.approx(best_value, abs=1e-9)
        local = client.download_artifacts(run.info.run_id, f"{tracking.CHECKPOINT_ARTIFACT}/metrics.json", str(tmp_path))
        written = json.loads(open(local).read())
        assert written["best_epoch"] == best_step
        assert written["test"]["greedy"]["score"] == pytest.approx(metrics["final.test.greedy.score"])
    assert stopped >= 1, "ASHA stopped no trial: the test tested nothing"

    winner = client.get_run(outcome.best.mlflow_run_id)
    assert "final.test.greedy.score" in winner.data.metrics


def test_stopped_inference_networks_are_scored_with_their_energy(ray_local, tmp_path):
    """An inference network's warm start is its fixed CRF energy, which scoring (and resuming) its
    last state still needs: the energy stays in the config of a trial rebuilt from its checkpoint."""
    from core.train import TrainConfig, train
    from sweeps.launch import run_sweep

    crf = tmp_path / "crf"
    train(TrainConfig(task="synthetic", objective="crf", out=str(crf), epochs=1, threads=1, progress=False,
                      model={"hidden": 8, "word_dim": 8}))
    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/mlflow.db"
    fixed = {"arch": "cnn13", "hidden": 8, "batch_size": 32, "patience": 0, "train_limit": 300}
    spec = validate({"name": "cut", "task": "synthetic", "stage": "infnet", "epochs": EPOCHS, "fixed": fixed,
                     "space": {"lr": {"grid": [3e-2, 2e-2, 1e-7, 2e-7]}}, "search": {"algorithm": "grid"},
                     "warm_start": {"checkpoint": str(crf)}, "num_samples": 1, "max_concurrent": 1,
                     "resources": {"cpu": 1}, "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}},
                    storage=storage)
    outcome = run_sweep(spec, storage=storage, tracking_uri=uri, verbose=0)
    assert outcome.trials == 4 and outcome.errors == 0

    runs = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    stopped = [r for r in runs if r.data.tags.get(tracking.STOPPED_TAG) == "true"]
    assert stopped, "ASHA stopped no trial: the test tested nothing"
    for run in runs:
        assert "final.test.infnet.score" in run.data.metrics, sorted(run.data.metrics)
