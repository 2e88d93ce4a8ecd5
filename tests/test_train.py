"""The training loop on the synthetic task: checkpoints, metrics, determinism, early stopping, NaN."""
from __future__ import annotations

import json
import math

import pytest
import torch

from core.data import load_task, make_batches
from core.train import TrainConfig, TrainingError, build_model, load_tagger, run_epoch, train

SMALL = {"encoder_hidden": 16, "decoder_hidden": 16, "label_dim": 8, "word_dim": 16, "char_filters": 8}


def _config(tmp_path, name="run", **overrides):
    options = dict(task="synthetic", out=str(tmp_path / name), epochs=2, progress=False, model=dict(SMALL))
    options.update(overrides)
    return TrainConfig(**options)


def _without_timings(metrics: dict) -> dict:
    """metrics.json minus wall-clock figures, which legitimately differ between runs."""
    return json.loads(json.dumps(metrics), object_hook=lambda d: {k: v for k, v in d.items() if "per_second" not in k})


class TestTrain:
    def test_writes_checkpoint_and_metrics(self, tmp_path):
        reports = []
        final = train(_config(tmp_path), report=lambda epoch, metrics, ckpt: reports.append((epoch, metrics, ckpt)))
        out = tmp_path / "run"
        assert json.loads((out / "metrics.json").read_text()) == final
        for split in ("dev", "test"):
            assert set(final[split]) == {"greedy", "beam3"}
            assert 0.3 < final[split]["greedy"]["accuracy"] <= 1.0
        assert [r[0] for r in reports] == [1, 2]
        assert reports[0][2] == out  # the first epoch always improves on nothing
        model, vocabs, meta = load_tagger(out)
        assert meta["epoch"] == final["best_epoch"] and meta["task"]["name"] == "synthetic"
        assert len(vocabs.labels) == model.n_labels

    def test_learns(self, tmp_path):
        final = train(_config(tmp_path, epochs=4, model={}))
        # Under the true generator the best possible accuracy is about 0.9; chance is far below 0.5.
        assert final["test"]["greedy"]["accuracy"] > 0.8

    def test_same_seed_same_metrics(self, tmp_path):
        first = train(_config(tmp_path, "a", seed=3))
        second = train(_config(tmp_path, "b", seed=3))
        other = train(_config(tmp_path, "c", seed=4))
        assert _without_timings(first) == _without_timings(second)
        assert _without_timings(first) != _without_timings(other)

    def test_early_stopping(self, tmp_path):
        # With a vanishing learning rate, dev never improves after epoch 1.
        reports = []
        train(_config(tmp_path, epochs=10, patience=2, lr=1e-12), report=lambda e, m, c: reports.append(e))
        assert reports == [1, 2, 3]

    def test_feed_predicted_and_sgd(self, tmp_path):
        final = train(_config(tmp_path, feed="predicted", optimizer="sgd", lr=0.1, epochs=1))
        assert final["best_epoch"] == 1

    @pytest.mark.parametrize("field,value", [("objective", "mle"), ("optimizer", "rmsprop"), ("feed", "x"),
                                             ("epochs", 0), ("lr", 0.0), ("lr", math.nan)])
    def test_rejects_bad_config(self, tmp_path, field, value):
        with pytest.raises(ValueError, match=field):
            _config(tmp_path, **{field: value})


class TestRunEpoch:
    def test_nan_loss_is_a_clear_error(self, tmp_path):
        config = _config(tmp_path)
        task = load_task("synthetic")
        model, vocabs = build_model(config, task)
        with torch.no_grad():
            model.output.weight[0, 0] = float("nan")
        optimizer = torch.optim.Adam(model.parameters())
        batches = make_batches(task.train[:64], vocabs, 32)
        with pytest.raises(TrainingError, match="epoch 1, batch 0: loss is nan"):
            run_epoch(model, optimizer, batches, config, 1, torch.device("cpu"))
