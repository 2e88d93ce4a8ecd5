"""Sweeps on a real local Ray (2 CPUs) with real MLflow: SQLite in-process, and a real
`mlflow server` over HTTP. Tiny models and 2-3 epochs keep each sweep to a few seconds of training."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from storage import tracking
from storage.best import best_checkpoint, trial_rankings
from sweeps.spec import validate

pytestmark = pytest.mark.slow  # starts Ray and MLflow

TINY = {"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4, "batch_size": 64,
        "patience": 0}
BEAMTUNE = Path(sys.executable).with_name("beamtune")


def sweep(tmp_path, uri, **changes):
    from sweeps.launch import run_sweep

    data = {"name": "s", "task": "synthetic", "stage": "ce", "epochs": 3, "fixed": dict(TINY), "num_samples": 4,
            "max_concurrent": 2, "resources": {"cpu": 1}, **changes}
    data["fixed"] = {k: v for k, v in data["fixed"].items() if k not in data.get("space", {})}
    spec = validate(data, storage=tmp_path / "sweeps")
    return spec, run_sweep(spec, storage=tmp_path / "sweeps", tracking_uri=uri, verbose=0)


def histories(uri, run_id, key="dev_score"):
    return [(m.step, m.value) for m in sorted(tracking.client(uri).get_metric_history(run_id, key), key=lambda m: m.step)]


def test_optuna_asha_sweep_mlflow_best_decode(ray_local, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec, outcome = sweep(tmp_path, uri, space={"lr": {"loguniform": [3.0e-3, 3.0e-2]},
                                                "encoder_hidden": {"choice": [8, 16]}},
                          search={"algorithm": "optuna", "seed": 3},
                          scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    assert outcome.trials == 4 and outcome.errors == 0
    assert set(outcome.statuses.values()) == {"TERMINATED"}
    # Phase times add up to no more than the whole call (Ray start and MLflow setup overlap).
    phases = outcome.phases
    assert set(phases) == {"ray_start", "tracking_setup", "tune", "score_stopped", "ray_shutdown", "finish"}
    assert min(phases.values()) >= 0
    assert sum(phases[p] for p in ("ray_start", "tune", "score_stopped", "ray_shutdown", "finish")) <= outcome.seconds

    client = tracking.client(uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "s"
    children = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    assert len(children) == 4 and {c.data.tags[tracking.TRIAL_TAG] for c in children} == set(outcome.statuses)
    rankings = {t.trial_id: t for t in trial_rankings(tmp_path / "sweeps", "s")}
    best_seen = None
    for child in children:
        assert child.info.status == "FINISHED"
        tags, params = child.data.tags, child.data.params
        assert tags["beamtune.stage"] == "ce" and tags["beamtune.task"] == "synthetic"
        assert tags["mlflow.source.git.commit"] != "" and tags["beamtune.seed"] == "0"
        trial = rankings[tags[tracking.TRIAL_TAG]]
        assert float(params["lr"]) == pytest.approx(trial.params["lr"]) and 3e-3 <= trial.params["lr"] <= 3e-2
        assert params["encoder_hidden"] == str(trial.params["encoder_hidden"]) and params["word_dim"] == "8"
        history = histories(uri, child.info.run_id)
        steps = [step for step, _ in history]
        assert steps == list(range(1, len(steps) + 1)) and 1 <= len(steps) <= 3  # one point per epoch, ASHA may cut
        assert [s for s, _ in histories(uri, child.info.run_id, "train_loss")] == steps
        stopped = tags.get(tracking.STOPPED_TAG) == "true"
        assert stopped == (len(steps) < 3)
        artifacts = {Path(a.path).name for a in client.list_artifacts(child.info.run_id, tracking.CHECKPOINT_ARTIFACT)}
        assert "checkpoint.json" in artifacts
        # Ran to the end, or stopped and scored by the driver: its best checkpoint scored on dev and test.
        assert "metrics.json" in artifacts and "final.test.greedy.score" in child.data.metrics
        # The trial's best checkpointed value is the best of its whole history (the best epoch is kept).
        assert trial.value == pytest.approx(max(v for _, v in history))
        best_seen = max(best_seen or trial.value, trial.value)

    best = best_checkpoint(tmp_path / "sweeps", "s")
    assert best.value == pytest.approx(best_seen) and outcome.best.trial_id == best.trial_id
    assert parent.data.tags["beamtune.best_trial"] == best.trial_name

    # `beamtune best --export` then `beamtune decode`: the exported model is that trial's best epoch,
    # so its greedy dev score is exactly the dev_score it reported then.
    export = tmp_path / "best"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    shown = subprocess.run([str(BEAMTUNE), "best", "--sweep", "s", "--storage", str(tmp_path / "sweeps"),
                            "--export", str(export)], capture_output=True, text=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[1].split()[1] == best.trial_name
    decoded = subprocess.run([str(BEAMTUNE), "decode", "--checkpoint", str(export), "--split", "dev", "--json",
                              "--quiet"], capture_output=True, text=True, timeout=120, env=env)
    assert decoded.returncode == 0, decoded.stderr
    assert json.loads(decoded.stdout)["score"] == pytest.approx(best.value, abs=1e-9)
    assert json.loads((export / "beamtune_export.json").read_text())["epoch"] == best.epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
         f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read().strip() == b"OK":
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_http_tracking_and_diverging_trial_fails(ray_local, tmp_path, mlflow_server):
    """Logged to a real tracking server; the trial whose loss stops being finite ends FAILED
    with core's reason (in Ray and in MLflow, in its single run) and the other trial finishes."""
    spec, outcome = sweep(tmp_path, mlflow_server, epochs=2, num_samples=1, max_failures=1,
                          fixed={**TINY, "optimizer": "sgd", "clip": 0.0},
                          space={"lr": {"grid": [0.05, 3.0e37]}}, search={"algorithm": "grid"},
                          scheduler={"type": "fifo"})
    assert outcome.trials == 2 and outcome.errors == 1
    children = tracking.child_runs(mlflow_server, outcome.experiment_id, outcome.parent_run_id)
    assert len(children) == 2  # the retried trial kept its one run
    by_lr = {float(c.data.params["lr"]): c for c in children}
    good, bad = by_lr[0.05], by_lr[3.0e37]  # 3e37: the largest lr a spec accepts (core.config.MAX_LR)
    assert good.info.status == "FINISHED" and [s for s, _ in histories(mlflow_server, good.info.run_id)] == [1, 2]
    assert bad.info.status == "FAILED"
    assert "epoch 1, batch" in bad.data.tags[tracking.ERROR_TAG] and "loss is" in bad.data.tags[tracking.ERROR_TAG]
    assert bad.data.tags["beamtune.attempts"] == "2"  # retried once, failed again at once
    statuses = {tid: s for tid, s in outcome.statuses.items()}
    assert sorted(statuses.values()) == ["ERROR", "TERMINATED"]
    artifacts = tracking.client(mlflow_server).list_artifacts(good.info.run_id, tracking.CHECKPOINT_ARTIFACT)
    assert "best_checkpoint/metrics.json" in {a.path for a in artifacts}
    assert tracking.client(mlflow_server).get_run(outcome.parent_run_id).info.status == "FINISHED"


def test_dl_sweep_over_alpha_schedules_and_beam_sizes(ray_local, tmp_path):
    # The soft-beam stage (Goyal et al.) warm-starts from a CE checkpoint and sweeps its alpha
    # schedule and beam size; every trial logs the alpha it used at each epoch.
    from core.train import TrainConfig, train

    model = {k: TINY[k] for k in ("encoder_hidden", "decoder_hidden", "label_dim", "word_dim", "char_filters")}
    train(TrainConfig(task="synthetic", out=str(tmp_path / "ce"), epochs=1, progress=False, model=model, threads=1))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fixed = {k: v for k, v in TINY.items() if k not in model}  # the model comes from the warm start
    spec, outcome = sweep(tmp_path, uri, name="dl", stage="dl", epochs=2, fixed=fixed, num_samples=1,
                          warm_start={"checkpoint": str(tmp_path / "ce")},
                          space={"alpha": {"grid": ["1", "exp:1:10:2"]}, "beam_size": {"grid": [2, 3]}},
                          search={"algorithm": "grid"}, scheduler={"type": "fifo"})
    assert outcome.trials == 4 and outcome.errors == 0
    children = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    seen = set()
    for child in children:
        params = child.data.params
        seen.add((params["alpha"], params["beam_size"]))
        expected = [1.0, 1.0] if params["alpha"] == "1" else [1.0, 10.0]
        assert [value for _, value in histories(uri, child.info.run_id, "alpha")] == pytest.approx(expected)
        assert child.data.tags["beamtune.stage"] == "dl"
    assert seen == {("1", "2"), ("1", "3"), ("exp:1:10:2", "2"), ("exp:1:10:2", "3")}


def test_gd_oracle_sweep_logs_parquet_tables(ray_local, tmp_path):
    # The gd-oracle stage (Tu & Gimpel's Table 6 grid) runs over a split with a trained CRF; each
    # trial's per-sentence Parquet table lands in its MLflow run.
    import pyarrow.parquet as pq

    from core.train import TrainConfig, train

    train(TrainConfig(task="synthetic", out=str(tmp_path / "crf"), objective="crf", epochs=1, progress=False,
                      model={"hidden": 8, "word_dim": 8}, batch_size=64, threads=1))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec, outcome = sweep(tmp_path, uri, name="oracle", stage="gd-oracle", epochs=1, num_samples=1,
                          fixed={"steps": [5, 20], "lrs": [100.0, 1.0], "split": "dev", "threads": 1},
                          warm_start={"checkpoint": str(tmp_path / "crf")},
                          space={"momentum": {"grid": [0.0, 0.9]}}, search={"algorithm": "grid"},
                          scheduler={"type": "fifo"})
    assert outcome.trials == 2 and outcome.errors == 0
    client = tracking.client(uri)
    for child in tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id):
        assert child.info.status == "FINISHED" and child.data.tags["beamtune.stage"] == "gd-oracle"
        metrics = child.data.metrics
        assert 0 < metrics["dev_score"] <= 1 and {"score_n5", "score_n20", "viterbi_score"} <= set(metrics)
        assert metrics["dev_score"] >= metrics["score_n20"]  # the per-instance oracle is at least any fixed N
        tables = {Path(a.path).name for a in client.list_artifacts(child.info.run_id, "tables")}
        assert tables == {"oracle_dev.parquet", "oracle_dev.json"}
        local = client.download_artifacts(child.info.run_id, "tables/oracle_dev.parquet", str(tmp_path / child.info.run_id))
        assert pq.read_table(local).num_rows == 300  # one row per synthetic dev sentence
    assert best_checkpoint(tmp_path / "sweeps", "oracle").trial_id in outcome.statuses
