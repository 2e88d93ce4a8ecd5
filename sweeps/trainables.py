"""Ray Tune function trainables: one per stage family, importable by every worker.

`train_trial(config, context)` runs one trial of any stage that `core.train.train` implements
(`oracle_trial`, `table6_trial`, `speed_trial` and `search_error_trial` run the gd-oracle, table6,
speed and search-error stages, which train nothing):
`config` is the trial's flat parameters (the spec's fixed values plus what the searcher sampled),
`context` is what the driver resolved once for the whole sweep (MLflow ids, the journal folder,
stage, task, warm start). Each epoch it logs to the trial's MLflow child run (through its journal,
storage.tracking.TrialRun: tracking never fails nor stalls a trial) and reports to Tune with a checkpoint:

    <checkpoint>/                that epoch's full state (core's OUT/last: weights, optimizer, RNG)
    <checkpoint>/best/           the trial's best-on-dev checkpoint so far (core's OUT)
    <checkpoint>/beamtune_trial.json   trial id, MLflow run id, epoch, metrics, parameters, attempts

so a trial restored on any node (retry, lost node, `beamtune sweep --resume`) continues exactly
where its checkpoint was, in the same MLflow run.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.checkpoint import MANIFEST

FAILED_MARKER = "beamtune_failed.json"


def _copy_model(source: Path, target: Path) -> None:
    from storage.best import model_files

    target.mkdir(parents=True, exist_ok=True)
    for path in model_files(source):
        shutil.copy2(path, target / path.name)


def _pack(target: Path, last: Path, out: Path, info: dict[str, Any]) -> None:
    from storage.best import BEST_SUBDIR, TRIAL_SIDECAR

    _copy_model(last, target)
    if (out / MANIFEST).is_file():
        _copy_model(out, target / BEST_SUBDIR)
    (target / TRIAL_SIDECAR).write_text(json.dumps(info, indent=1, default=str))


def _unpack(source: Path, out: Path) -> dict[str, Any]:
    """Rebuild core's OUT folder (best checkpoint + last/) from a reported checkpoint."""
    from storage.best import BEST_SUBDIR, TRIAL_SIDECAR

    shutil.rmtree(out, ignore_errors=True)
    _copy_model(source, out / "last")
    if (source / BEST_SUBDIR / MANIFEST).is_file():
        _copy_model(source / BEST_SUBDIR, out)
    return json.loads((source / TRIAL_SIDECAR).read_text())


def build_train_config(config: dict[str, Any], context: dict[str, Any], out: Path, resume_from: Path | None):
    from core.train import TrainConfig
    from sweeps.spec import STAGES, split_params

    top, model = split_params(config, context["objective"])
    top.setdefault("threads", context.get("threads", 1))
    extra = {}
    stage = STAGES[context["stage"]]
    if context.get("warm_start") and (resume_from is None or not stage.warm_start_is_start):
        extra[stage.warm_field] = context["warm_start"]
    return TrainConfig(task=context["task"], data_root=context.get("data_root"), out=str(out),
                       objective=context["objective"], epochs=context["epochs"], progress=False, model=model,
                       resume_from=str(resume_from) if resume_from else None, **top, **extra)


def open_trial_run(config: dict[str, Any], context: dict[str, Any], trial_id: str, trial_name: str,
                   run_id: str | None):
    """The trial's MLflow child run (reopened by id after a retry), tagged and with its parameters."""
    from storage import tracking

    run = tracking.TrialRun.open(
        context["tracking_uri"], context["experiment_id"], context["parent_run_id"], trial_id,
        tracking.trial_label(context["stage"], config, context.get("searched", [])), run_id,
        tags={tracking.SWEEP_TAG: context["sweep"], "beamtune.stage": context["stage"], "beamtune.task": context["task"],
              "beamtune.seed": str(config.get("seed", 0)), "beamtune.ray_trial": trial_name,
              "mlflow.source.git.commit": context.get("git_commit") or "unknown"},
        spool_directory=context["spool_dir"])
    run.log_params(config)
    return run


def evaluation_trial(config: dict[str, Any], context: dict[str, Any],
                     evaluate: Callable[[dict[str, Any], dict[str, Any], Path], tuple[dict[str, float], list[Path]]]) -> None:
    """A trial of a stage that evaluates a checkpoint instead of training (gd-oracle, table6): one
    report (step 1). `evaluate(config, context, folder)` runs it and returns its metrics and the
    table files it wrote into `folder`; those go to the trial's MLflow run (artifacts under
    "tables"), and the folder, with the sidecar `beamtune best` reads, is the trial's checkpoint."""
    from ray import tune

    from storage.best import TRIAL_SIDECAR

    tune_context = tune.get_context()
    run = open_trial_run(config, context, tune_context.get_trial_id(), tune_context.get_trial_name(), None)
    try:
        with tempfile.TemporaryDirectory(prefix="beamtune-eval-") as tmp:
            metrics, tables = evaluate(config, context, Path(tmp))
            run.log_metrics(metrics, step=1)
            run.log_files(tables, "tables")
            sidecar = {"trial_id": tune_context.get_trial_id(), "trial_name": tune_context.get_trial_name(),
                       "mlflow_run_id": run.run_id, "epoch": 1, "metrics": metrics, "params": config}
            (Path(tmp) / TRIAL_SIDECAR).write_text(json.dumps(sidecar, indent=1, default=str))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
    except BaseException as error:
        run.finish("FAILED", f"{type(error).__name__}: {error}")
        raise
    run.finish("FINISHED")


def oracle_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The gd-oracle stage: the GD oracle grid (Tu & Gimpel 2019, Table 6) over a split with the
    warm-start CRF. Metrics: the oracle score as dev_score, Viterbi's score, the score and energy at
    every N; tables: the per-sentence Parquet table and its JSON summary."""
    evaluation_trial(config, context, _oracle)


def _oracle(config: dict[str, Any], context: dict[str, Any], folder: Path) -> tuple[dict[str, float], list[Path]]:
    from core.oracle import OracleConfig, run_oracle
    from storage.tables import write_result_table

    oracle = OracleConfig(checkpoint=context["warm_start"], data_root=context.get("data_root"), **config)
    summary = run_oracle(oracle)
    metrics = {"dev_score": summary["oracle"]["score"], "best_dev_score": summary["oracle"]["score"],
               "viterbi_score": summary["viterbi"]["score"], "viterbi_energy": summary["viterbi"]["energy"],
               "optimizer_steps": summary["cost"]["optimizer_steps"],
               **{f"score_n{row['steps']}": row["score"] for row in summary["table6"]},
               **{f"energy_n{row['steps']}": row["energy"] for row in summary["table6"]}}
    parquet, _ = write_result_table(folder / f"oracle_{oracle.split}.parquet", summary)
    return metrics, [parquet, parquet.with_suffix(".json")]


def table6_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The table6 stage: every row of Tu & Gimpel's Table 6 (core.table6) with the warm-start
    inference network and its CRF energy (the sweep's copy, sweeps.launch.resolve_warm_energy).
    Metrics: core.table6.flat_metrics (gd_n10_score, infnet_energy, tailored_n3_lr, ...), and the
    network's own score on the split as dev_score; tables: one Parquet row per Table 6 row + JSON."""
    evaluation_trial(config, context, _table6)


def _table6(config: dict[str, Any], context: dict[str, Any], folder: Path) -> tuple[dict[str, float], list[Path]]:
    from core.table6 import Table6Config, run_table6
    from storage.tables import write_result_table

    table6 = Table6Config(checkpoint=context["warm_start"], data_root=context.get("data_root"),
                          energy=context.get("warm_start_energy"), **{"threads": context.get("threads", 1), **config})
    summary = run_table6(table6)
    score = summary["metrics"]["infnet_score"]
    metrics = {"dev_score": score, "best_dev_score": score, **summary["metrics"], "seconds": summary["cost"]["seconds"]}
    parquet, _ = write_result_table(folder / f"table6_{table6.split}.parquet", summary)
    return metrics, [parquet, parquet.with_suffix(".json")]


def _warm_manifest(context: dict[str, Any]) -> dict[str, Any]:
    """The manifest of the checkpoint an evaluation stage evaluates (its warm start): what the
    network is (architecture, "+", its dev score), logged beside the evaluation's own parameters."""
    return json.loads((Path(context["warm_start"]) / MANIFEST).read_text(encoding="utf-8"))


def speed_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The speed stage: Tu & Gimpel's Table 3 (examples/s of the warm-start inference network,
    Viterbi and GD on its CRF energy, per batch size) and each method's score (core.speed).
    Metrics: core.speed.flat_metrics (infnet_b10_eps, gd_b256_sps, viterbi_score, ...), the
    network's score as dev_score; the network's architecture is logged as the parameter
    core.speed.ARCH_PARAM (the report's Table 3 column) and whether it is a "+" network as
    core.speed.PLUS_PARAM (its row); tables: one Parquet row per method and batch size + JSON."""
    from core.speed import ARCH_PARAM, PLUS_PARAM

    manifest = _warm_manifest(context)
    arch = manifest.get("model_config", {}).get("arch", "")
    plus = bool(manifest.get("train_config", {}).get("plus", False))
    # The threads are logged with the parameters: examples/s mean little without them.
    evaluation_trial({"threads": context.get("threads", 1), **config, ARCH_PARAM: arch, PLUS_PARAM: plus}, context, _speed)


def _speed(config: dict[str, Any], context: dict[str, Any], folder: Path) -> tuple[dict[str, float], list[Path]]:
    from core.speed import ARCH_PARAM, PLUS_PARAM, SpeedConfig, run_speed
    from storage.tables import write_result_table

    fields = {k: v for k, v in config.items() if k not in (ARCH_PARAM, PLUS_PARAM)}
    speed = SpeedConfig(checkpoint=context["warm_start"], data_root=context.get("data_root"),
                        energy=context.get("warm_start_energy"), **fields)
    summary = run_speed(speed)
    score = summary["scores"]["infnet"]
    metrics = {"dev_score": score, "best_dev_score": score, **summary["metrics"]}
    parquet, _ = write_result_table(folder / f"speed_{speed.split}.parquet", summary)
    return metrics, [parquet, parquet.with_suffix(".json")]


def search_error_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The search-error stage: Tu & Gimpel's §6.2 for the warm-start inference network and GD on its
    CRF energy (core.search_correlation). Metrics: its flat_metrics (infnet_rho_word_perplexity,
    gd_mean_search_error, ...) and, as dev_score, the network's own dev score from its checkpoint
    (what the stage's trials rank by: the network evaluated); the network's architecture as the
    parameter core.speed.ARCH_PARAM; tables: the result as JSON."""
    from core.speed import ARCH_PARAM

    manifest = _warm_manifest(context)
    arch = manifest.get("model_config", {}).get("arch", "")
    context = {**context, "network_dev_score": manifest.get("dev", {}).get("score", float("nan"))}
    evaluation_trial({"threads": context.get("threads", 1), **config, ARCH_PARAM: arch}, context, _search_error)


def _search_error(config: dict[str, Any], context: dict[str, Any], folder: Path) -> tuple[dict[str, float], list[Path]]:
    from core.search_correlation import SearchErrorConfig, flat_metrics, run_search_error
    from core.speed import ARCH_PARAM

    fields = {k: v for k, v in config.items() if k != ARCH_PARAM}
    result = run_search_error(SearchErrorConfig(checkpoint=context["warm_start"], data_root=context.get("data_root"),
                                                energy=context.get("warm_start_energy"), **fields))
    metrics = flat_metrics(result)
    metrics.update(dev_score=context["network_dev_score"], best_dev_score=context["network_dev_score"])
    path = folder / f"search_error_{result['split']}.json"
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")  # a fresh temporary folder: no reader yet
    return metrics, [path]


@dataclass
class TrialAttempt:
    """One start of a trial on a worker: its scratch folders, the checkpoint Ray restored (if any)
    and the attempts so far (where each ran and which epoch it started from)."""

    trial_id: str
    trial_name: str
    work: Path  # scratch space outside Ray's trial folder (which the driver snapshots while trials write)
    out: Path  # core's OUT folder: the best checkpoint, last/ and metrics.json
    restored: bool  # Ray handed this attempt a checkpoint to continue from
    info: dict[str, Any]  # the restored checkpoint's sidecar ({} when starting from scratch)
    attempts: list[dict[str, Any]]

    @property
    def start_epoch(self) -> int:
        return int(self.info.get("epoch", 0))

    @property
    def failed_marker(self) -> Path:
        return self.work / FAILED_MARKER

    @property
    def resume_from(self) -> Path | None:
        return self.out / "last" if self.restored else None


def start_attempt(context: dict[str, Any]) -> TrialAttempt:
    """Rebuild core's OUT folder from the checkpoint Ray restored (or start it empty) and record
    this attempt: the node it runs on and the epoch it starts from."""
    import ray
    from ray import tune

    tune_context = tune.get_context()
    trial_id = tune_context.get_trial_id()
    work = Path(tempfile.gettempdir()) / "beamtune-trials" / f"{context['parent_run_id'][:12]}-{trial_id}"
    work.mkdir(parents=True, exist_ok=True)
    out = work / "run"
    info: dict[str, Any] = {}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            info = _unpack(Path(directory), out)
    else:
        shutil.rmtree(out, ignore_errors=True)
    attempt = TrialAttempt(trial_id, tune_context.get_trial_name(), work, out, checkpoint is not None, info,
                           list(info.get("attempts", [])))
    attempt.attempts.append({"node_id": ray.get_runtime_context().get_node_id(), "start_epoch": attempt.start_epoch,
                             "time": time.time()})
    return attempt


def refuse_repeated_failure(attempt: TrialAttempt, run) -> None:
    """A NaN loss is deterministic given the checkpoint: a retry from the same checkpoint would hit
    it again, so it fails at once with the first attempt's message."""
    from core.config import TrainingError

    if attempt.failed_marker.is_file():
        failed = json.loads(attempt.failed_marker.read_text())
        if failed.get("start_epoch") == attempt.start_epoch:
            run.finish("FAILED", failed["message"])
            raise TrainingError(failed["message"])


class EpochReporter:
    """core.train's `report` callback: logs an epoch to MLflow (once) and reports it to Tune with a
    checkpoint (_pack's layout). Epochs the run already logged are not logged again: an attempt
    killed after logging an epoch but before Ray registered its checkpoint repeats that epoch,
    exactly (core resumes exactly)."""

    def __init__(self, attempt: TrialAttempt, run, config: dict[str, Any]):
        self.attempt, self.run, self.config = attempt, run, config
        self.logged = run.logged_steps("epoch")  # from the trial's journal, which survives retries on any node

    def __call__(self, epoch: int, metrics: dict[str, float], last: Path | None) -> None:
        from ray import tune

        if epoch not in self.logged:
            self.run.log_metrics(metrics, step=epoch)
        a = self.attempt
        sidecar = {"trial_id": a.trial_id, "trial_name": a.trial_name, "mlflow_run_id": self.run.run_id, "epoch": epoch,
                   "metrics": metrics, "params": self.config, "attempts": a.attempts}
        with tempfile.TemporaryDirectory(dir=a.work, prefix="checkpoint-") as tmp:
            _pack(Path(tmp), Path(last), a.out, sidecar)
            tune.report(dict(metrics), checkpoint=tune.Checkpoint.from_directory(tmp))


def log_final(run, final: dict[str, Any], out: Path) -> None:
    """The best checkpoint's dev and test scores (metrics `final.<split>.<decoder>.<metric>`, at the
    best epoch's step), its files and metrics.json, and the per-sentence tables if any."""
    from storage import tracking
    from storage.best import model_files

    run.log_metrics(tracking.final_metrics(final), step=final["best_epoch"])
    run.log_files(model_files(out) + [out / "metrics.json"], tracking.CHECKPOINT_ARTIFACT)
    tables = sorted(out.glob("*.parquet"))
    if tables:
        run.log_files(tables, "tables")


def end_stopped(attempt: TrialAttempt, run) -> None:
    """The scheduler stopped this trial (tune.report exits the training thread): tagged, its best
    checkpoint kept. Its dev and test scores come from the driver (sweeps.stopped_scores)."""
    from storage import tracking
    from storage.best import model_files

    run.set_tags({tracking.STOPPED_TAG: "true"})
    if (attempt.out / MANIFEST).is_file():
        run.log_files(model_files(attempt.out), tracking.CHECKPOINT_ARTIFACT)
    run.finish("FINISHED")
    shutil.rmtree(attempt.work, ignore_errors=True)


def train_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """The trainable of every stage that core.train.train runs (ce, dl, hinge, crf, crf+, local, infnet)."""
    from core.config import TrainingError
    from core.train import train

    attempt = start_attempt(context)
    run = open_trial_run(config, context, attempt.trial_id, attempt.trial_name, attempt.info.get("mlflow_run_id"))
    # Starts are counted by the driver (every start Ray makes: tracking.record_start).
    run.set_tags({"beamtune.resumed_from_epoch": attempt.start_epoch})
    refuse_repeated_failure(attempt, run)
    try:
        final = train(build_train_config(config, context, attempt.out, attempt.resume_from), EpochReporter(attempt, run, config))
    except SystemExit:
        end_stopped(attempt, run)
        raise
    except TrainingError as error:
        attempt.failed_marker.write_text(json.dumps({"start_epoch": attempt.start_epoch, "message": str(error)}))
        run.finish("FAILED", str(error))
        raise
    except BaseException as error:
        run.finish("FAILED", f"{type(error).__name__}: {error}")
        raise
    log_final(run, final, attempt.out)
    run.finish("FINISHED")
    shutil.rmtree(attempt.work, ignore_errors=True)  # everything worth keeping is in Ray's storage and MLflow


# Stage family -> trainable (sweeps.spec.SweepStage.family).
FAMILIES: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "train": train_trial, "gd-oracle": oracle_trial, "table6": table6_trial, "speed": speed_trial,
    "search-error": search_error_trial}
