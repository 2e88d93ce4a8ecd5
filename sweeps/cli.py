"""The `beamtune` command line: train and decode (sweep, best and report join as they land).

Every expected failure (bad data, bad checkpoint, bad option, NaN loss) ends in one line on
stderr, `error: ...`, and exit status 2; never a traceback.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="beamtune: search-aware training of neural sequence taggers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DATA_ROOT_HELP = "Folder laid out like shared/data (also from $BEAMTUNE_DATA). Not needed for --task synthetic."


class Objective(str, Enum):
    ce = "ce"
    dl = "dl"  # soft-beam direct loss (Goyal et al. 2018): core/search/soft_beam.py
    hinge = "hinge"  # soft-beam max-margin
    crf = "crf"  # BLSTM-CRF (Tu & Gimpel 2019): core/structured.py
    crf_plus = "crf+"
    local = "local"
    infnet = "infnet"


class Cost(str, Enum):
    hamming = "hamming"
    hamming_o2 = "hamming-o2"


class Arch(str, Enum):
    cnn13 = "cnn13"
    cnn15 = "cnn15"
    blstm = "blstm"
    seq2seq = "seq2seq"


class Decoder(str, Enum):
    greedy = "greedy"
    beam = "beam"
    soft_beam = "soft-beam"
    viterbi = "viterbi"  # the rest decode "crf" / "infnet" checkpoints (core/structured.py)
    infnet = "infnet"
    gd = "gd"
    tailored = "tailored"
    warm_gd = "warm-gd"


# Default step sizes of `decode`: gradient descent moves the relaxed output (the oracle grid's
# large rates suit it); instance tailoring moves the inference network's weights, which lr 0.1
# already wrecks (twitter_pos dev accuracy 51.7%); 0.01 was chosen on twitter_pos dev.
GD_LR, TAILORING_LR = 100.0, 0.01


class Split(str, Enum):
    dev = "dev"
    test = "test"


class Attention(str, Enum):
    fixed = "fixed"
    dot = "dot"
    general = "general"
    mlp = "mlp"


class Feed(str, Enum):
    gold = "gold"
    predicted = "predicted"


class Optimizer(str, Enum):
    adam = "adam"
    sgd = "sgd"


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def run_guarded(fn, *args, **kwargs):
    """Call fn, turning the errors a user can cause into one clear line."""
    from core.checkpoint import CheckpointError
    from core.data import DataError
    from core.train import TrainingError

    try:
        return fn(*args, **kwargs)
    except (DataError, CheckpointError, TrainingError, ValueError, FileNotFoundError) as error:
        fail(str(error).splitlines()[0] if str(error) else type(error).__name__)


@app.command()
def train(
    task: str = typer.Option(..., help="synthetic, twitter_pos, conll2003_en, conll2003_de, ccgbank, ccgbank400, ud_en_ewt"),
    out: Path = typer.Option(..., help="Directory for the best-on-dev checkpoint and metrics.json."),
    init: Optional[Path] = typer.Option(None, help="dl / hinge: CE checkpoint directory to warm-start from."),
    beam_size: int = typer.Option(3, min=1, help="dl / hinge: soft-beam width k in training."),
    alpha: str = typer.Option("1", help="dl / hinge: soft-beam temperature schedule: 1, linear:1:10:20, exp:1:100:10 or steps:1,2,5."),
    cost: Cost = typer.Option(Cost.hamming, help="dl / hinge: per-position cost; hamming-o2 makes a wrong `O` cost 2 (NER)."),
    objective: Objective = typer.Option(Objective.ce, help="Training objective."),
    data_root: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_DATA", help=DATA_ROOT_HELP),
    embeddings: Optional[Path] = typer.Option(None, help="GloVe text file (.txt or .txt.gz) to initialise word vectors."),
    epochs: int = typer.Option(30, min=1, help="Maximum number of epochs."),
    patience: int = typer.Option(5, min=0, help="Stop after this many epochs without dev improvement (0: never)."),
    batch_size: int = typer.Option(32, min=1),
    optimizer: Optimizer = typer.Option(Optimizer.adam),
    lr: float = typer.Option(1e-3, min=0.0, help="Learning rate."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    clip: float = typer.Option(5.0, min=0.0, help="Gradient-norm clipping (0: off)."),
    feed: Feed = typer.Option(Feed.gold, help="Decoder input in training: gold labels (teacher forcing) or its own predictions."),
    seed: int = typer.Option(0, help="Random seed; one seed gives identical metrics."),
    min_count: int = typer.Option(1, min=1, help="Words seen fewer times in training become <unk>."),
    train_limit: int = typer.Option(0, min=0, help="Train on the first N training sentences only (0: all)."),
    attention: Attention = typer.Option(Attention.fixed, help="fixed (attend to position t), or a learned attention."),
    encoder_hidden: Optional[int] = typer.Option(
        None, min=1, help="BiLSTM hidden size per direction (default: 128 for ce/dl/hinge; the paper's H = 100 for crf/local/infnet)."),
    decoder_hidden: int = typer.Option(128, min=1, help="Decoder LSTM hidden size."),
    label_dim: int = typer.Option(32, min=1, help="Label embedding size."),
    word_dim: Optional[int] = typer.Option(
        None, min=1, help="Word embedding size, ignored with --embeddings (default: 50 for ce/dl/hinge, 100 for crf/local/infnet)."),
    char_filters: int = typer.Option(50, min=0, help="Character-CNN filters (0: no character CNN)."),
    dropout: float = typer.Option(0.5, min=0.0, max=0.99),
    eval_beam_size: int = typer.Option(3, min=1, help="Beam size of the final beam-search scores."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    threads: int = typer.Option(0, min=0, help="CPU threads for torch (0: torch's default; 1 when runs share cores)."),
    arch: Arch = typer.Option(Arch.blstm, help="local / infnet: inference-network architecture."),
    energy: Optional[Path] = typer.Option(None, help="infnet: the trained CRF checkpoint whose energy it learns to minimise."),
    lam: float = typer.Option(1.0, min=0.0, help="infnet: weight of the token loss."),
    lam_anneal: bool = typer.Option(False, "--lam-anneal", help="infnet: lambda = LAM * exp(-0.01 epoch)."),
    layers: int = typer.Option(1, min=1, max=2, help="BLSTM infnet layers."),
    plus: bool = typer.Option(False, "--plus", help="local / infnet: char CNN + dropout 0.5 (the '+' models)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a seq2seq tagger, a BLSTM-CRF(+), a local baseline or an inference network; keep the
    best-on-dev checkpoint in OUT and write OUT/metrics.json. For crf/local/infnet, --encoder-hidden
    is the paper's H and --dropout is implied (0, or 0.5 for crf+ / --plus)."""
    from core.train import STRUCTURED_OBJECTIVES, TrainConfig, train as run_training

    if objective.value in STRUCTURED_OBJECTIVES:
        # The structured models' sizes: the paper's H, the word dimension, char-CNN filters ("+" only).
        model = {"hidden": encoder_hidden, "word_dim": word_dim, "char_filters": char_filters or 50}
    else:
        model = {"attention": attention.value, "encoder_hidden": encoder_hidden, "decoder_hidden": decoder_hidden,
                 "label_dim": label_dim, "word_dim": word_dim, "char_filters": char_filters, "dropout": dropout}
    # Sizes left out take the model's own defaults, the same ones a sweep spec without them gets.
    model = {name: value for name, value in model.items() if value is not None}
    config = run_guarded(
        TrainConfig,
        task=task, out=str(out), data_root=str(data_root) if data_root else None,
        embeddings=str(embeddings) if embeddings else None, objective=objective.value, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer.value, lr=lr, momentum=momentum, clip=clip, patience=patience,
        feed=feed.value, seed=seed, min_count=min_count, train_limit=train_limit, eval_beam_size=eval_beam_size, device=device, threads=threads,
        progress=not quiet, model=model, init=str(init) if init else None, beam_size=beam_size, alpha=alpha,
        cost=cost.value, arch=arch.value, energy=str(energy) if energy else None, lam=lam, lam_anneal=lam_anneal,
        plus=plus, layers=layers,
    )
    final = run_guarded(run_training, config)
    typer.echo(f"best epoch {final['best_epoch']}; checkpoint and metrics.json in {out}")
    if objective.value in STRUCTURED_OBJECTIVES:
        for split in ("dev", "test"):
            for name, result in final[split].items():
                energies = f"   energy {result['energy']:.3f} (Viterbi {result['viterbi_energy']:.3f})" if "energy" in result else ""
                typer.echo(f"{split:5s} {name} {result['score']:.4f}{energies}   ({final['metric']})")
        return
    k = eval_beam_size
    soft = f"soft_beam{k}"
    for split in ("dev", "test"):
        line = f"{split:5s} greedy {final[split]['greedy']['score']:.4f}   beam{k} {final[split][f'beam{k}']['score']:.4f}"
        if soft in final[split]:
            line += f"   soft-beam{k} {final[split][soft]['score']:.4f} (alpha {final['soft_beam_alpha']:g})"
        typer.echo(f"{line}   ({final['metric']})")


@app.command()
def decode(
    checkpoint: Path = typer.Option(..., help="Checkpoint directory (a `beamtune train --out` folder)."),
    decoder: Decoder = typer.Option(Decoder.greedy),
    beam_size: int = typer.Option(3, min=1, help="Beam size for --decoder beam or soft-beam."),
    alpha: float = typer.Option(1.0, min=0.0, help="Temperature for --decoder soft-beam (large: hard beam search)."),
    split: Split = typer.Option(Split.test),
    data_root: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_DATA", help=DATA_ROOT_HELP),
    predictions: Optional[Path] = typer.Option(None, help="Write `token gold predicted` lines (conlleval input)."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    steps: int = typer.Option(20, min=0, help="gd / warm-gd / tailored: number of gradient steps N."),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Step size, the same for every sentence. Default: 100 for gd / "
                                       "warm-gd (steps on the relaxed output), 0.01 for tailored (steps on the network's weights)."),
    energy: Optional[Path] = typer.Option(None, help="infnet checkpoints: the CRF energy (default: the one it was trained with)."),
    threads: int = typer.Option(0, min=0, help="CPU threads for torch (0: torch's default; 1 when runs share cores)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Decode a split with a trained checkpoint and print its metrics."""
    import torch

    from core.checkpoint import atomic_write
    from core.data import load_task
    from core.metrics import evaluate
    from core.train import load_tagger, predict

    if threads:
        torch.set_num_threads(threads)
    seq2seq_decoders = ("greedy", "beam", "soft-beam")
    k = 1 if decoder == Decoder.greedy else beam_size
    if decoder.value in seq2seq_decoders:
        model, vocabs, meta = run_guarded(load_tagger, checkpoint, device)
    else:
        from core.structured import load_for_decoding, score_decoder

        crf, infnet, vocabs, meta = run_guarded(load_for_decoding, checkpoint, energy, device)
    task = run_guarded(load_task, meta["task"]["name"], str(data_root) if data_root else None)
    sentences = task.dev if split == Split.dev else task.test
    if decoder.value in seq2seq_decoders:
        pred = run_guarded(predict, model, sentences, vocabs, decoder.value, k, progress=not quiet, alpha=alpha)
        metrics = evaluate([s.tags for s in sentences], pred, task.metric)
    else:
        metrics = run_guarded(score_decoder, sentences, vocabs, task.metric, decoder.value, crf=crf, infnet=infnet,
                              steps=steps, lr=lr if lr is not None else TAILORING_LR if decoder == Decoder.tailored else GD_LR,
                              progress=not quiet)
        pred = metrics.pop("_pred")
    if predictions:
        lines = []
        for sentence, tags in zip(sentences, pred):
            lines += [f"{w} {g} {p}" for w, g, p in zip(sentence.words, sentence.tags, tags)] + [""]
        atomic_write(predictions, "\n".join(lines).encode())
    result = {"task": task.name, "split": split.value, "decoder": decoder.value, "beam_size": k, **metrics}
    if decoder == Decoder.soft_beam:
        result["alpha"] = alpha
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo("  ".join(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in result.items()))


@app.command("gd-oracle")
def gd_oracle(
    checkpoint: Path = typer.Option(..., help="A 'crf' checkpoint, or an 'infnet' one (its energy; with --warm-start its logits)."),
    out: Path = typer.Option(..., help="Parquet file: one row per sentence (id, length, chosen N and lr, metric, energies)."),
    split: Split = typer.Option(Split.test),
    data_root: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_DATA", help=DATA_ROOT_HELP),
    energy: Optional[Path] = typer.Option(None, help="infnet checkpoints: the CRF energy (default: the one it was trained with)."),
    warm_start: bool = typer.Option(False, "--warm-start", help="Start GD from the inference network's logits."),
    steps: str = typer.Option("5,10,20,30,40,50,100,500,1000", help="Step counts N (every N is a prefix of one trajectory)."),
    lrs: str = typer.Option("1e4,5e3,1e3,500,100,50,10,5,1", help="Learning rates (one batched trajectory each)."),
    batch_size: int = typer.Option(256, min=1),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    threads: int = typer.Option(0, min=0, help="CPU threads for torch (0: torch's default)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Per-instance oracle-tuned gradient-descent inference (Tu & Gimpel 2019, Table 6): writes the
    per-sentence table to OUT and prints the per-N averages (OUT with .json: the summary)."""
    from core.structured import OracleConfig, run_oracle
    from storage.tables import write_oracle_table

    try:
        step_list = [int(v) for v in steps.split(",")]
        lr_list = [float(v) for v in lrs.split(",")]
    except ValueError:
        fail(f"--steps and --lrs take comma-separated numbers, got {steps!r} and {lrs!r}")
    config = run_guarded(OracleConfig, checkpoint=str(checkpoint), split=split.value,
                         data_root=str(data_root) if data_root else None, energy=str(energy) if energy else None,
                         warm_start=warm_start, steps=step_list, lrs=lr_list, batch_size=batch_size, device=device,
                         threads=threads, progress=not quiet)
    result = run_guarded(run_oracle, config)
    write_oracle_table(out, result)
    typer.echo(f"{'N':>6s} {'score':>8s} {'energy':>10s}   ({result['metric']}, {result['task']} {split.value})")
    for row in result["table6"]:
        typer.echo(f"{row['steps']:6d} {row['score']:8.4f} {row['energy']:10.3f}")
    typer.echo(f"oracle {result['oracle']['score']:8.4f} {result['oracle']['energy']:10.3f}")
    typer.echo(f"Viterbi {result['viterbi']['score']:7.4f} {result['viterbi']['energy']:10.3f}")
    cost = result["cost"]
    typer.echo(f"{cost['optimizer_steps']} optimizer steps in {cost['seconds']:.1f}s; rows in {out}")


# ==============================================================================================
# Sweeps: `beamtune sweep` and `beamtune best` (Ray Tune + MLflow; imported only when used).

SWEEP_STORAGE_HELP = "Folder of sweeps (also $BEAMTUNE_SWEEPS; default ./runs/sweeps). On a cluster: a path every node shares."


def _spec_errors(error) -> None:
    for problem in error.problems:
        typer.echo(f"error: {problem}", err=True)
    raise typer.Exit(code=2)


@app.command()
def sweep(
    spec: Optional[Path] = typer.Argument(None, help="Sweep spec (YAML), e.g. sweeps/specs/quickstart.yaml."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the killed sweep NAME instead (no SPEC)."),
    address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="Ray cluster to join (default: start a local Ray)."),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=SWEEP_STORAGE_HELP),
    tracking_uri: Optional[str] = typer.Option(None, envvar="MLFLOW_TRACKING_URI",
                                               help="MLflow tracking URI (default: sqlite:///mlflow.db here)."),
    num_cpus: Optional[int] = typer.Option(None, min=1, help="CPUs of the local Ray (default: all)."),
    quiet: bool = typer.Option(False, "--quiet", help="No live progress tables."),
) -> None:
    """Run a hyperparameter sweep on Ray Tune, logging to MLflow; print the best trial at the end."""
    from sweeps.spec import SpecError, load_spec

    if (spec is None) == (resume is None):
        fail("give a SPEC file, or --resume NAME (not both)")
    try:  # the whole spec is checked before Ray is even imported
        spec_obj = load_spec(spec, storage) if resume is None else None
    except SpecError as error:
        _spec_errors(error)
    from storage.db import TrackingStoreError
    from sweeps.launch import SweepError, load_sweep_spec, run_sweep

    try:
        spec_obj = spec_obj or load_sweep_spec(resume, storage)
        outcome = run_sweep(spec_obj, storage=storage, tracking_uri=tracking_uri, address=address, num_cpus=num_cpus,
                            resume=resume is not None, verbose=0 if quiet else 1)
    except SpecError as error:
        _spec_errors(error)
    except (SweepError, TrackingStoreError) as error:
        fail(str(error))
    from storage.tracking import ui_command

    typer.echo(f"\nsweep {outcome.name}: {outcome.trials} trials ({outcome.errors} failed) in {outcome.seconds:.0f} s")
    if outcome.best is not None:
        best = outcome.best
        typer.echo(f"best trial {best.trial_name}: {spec_obj.metric} {best.value:.4f} at epoch {best.epoch}")
        typer.echo(f"checkpoint {best.checkpoint}")
        typer.echo(f"export it: beamtune best --sweep {outcome.name} --export runs/{outcome.name}-best")
    typer.echo(f"MLflow: parent run {outcome.parent_run_id} (experiment {outcome.experiment_id}) at {outcome.tracking_uri}")
    typer.echo(f"MLflow UI: {ui_command(outcome.tracking_uri)}")


@app.command()
def sync(
    sweep_name: str = typer.Option(..., "--sweep", help="Sweep name (its folder under the sweep storage)."),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=SWEEP_STORAGE_HELP),
) -> None:
    """Replay the MLflow writes a sweep journaled while its tracking server did not answer."""
    from storage import tracking
    from storage.best import SWEEP_FILE, sweep_dir

    directory = sweep_dir(storage, sweep_name)
    if not (directory / SWEEP_FILE).is_file():
        fail(f"no sweep named {sweep_name!r} in {directory.parent} ({SWEEP_FILE} missing)")
    uri = json.loads((directory / SWEEP_FILE).read_text())["tracking_uri"]
    failing = tracking.replay_all(uri, tracking.spool_dir(directory))
    if failing:
        key, error = next(iter(failing.items()))
        fail(f"MLflow tracking at {uri} still does not answer ({key}: {error}); {len(failing)} run(s) still pending")
    typer.echo(f"sweep {sweep_name}: every journaled MLflow write is in {uri}")


@app.command()
def best(
    sweep_name: str = typer.Option(..., "--sweep", help="Sweep name (its folder under the sweep storage)."),
    metric: Optional[str] = typer.Option(None, help="Rank by this reported metric (default: the sweep's)."),
    mode: Optional[str] = typer.Option(None, help="max or min (default: the sweep's, or min for losses)."),
    export: Optional[Path] = typer.Option(None, help="Copy the best trial's best checkpoint here (for `beamtune decode`)."),
    top: int = typer.Option(10, min=1, help="Rows to print."),
    storage: Optional[Path] = typer.Option(None, envvar="BEAMTUNE_SWEEPS", help=SWEEP_STORAGE_HELP),
) -> None:
    """Rank a sweep's trials by their best checkpointed metric (not their last) and export the best."""
    from storage.best import SweepNotFound, export_checkpoint, sweep_metric, trial_rankings

    if mode is not None and mode not in ("max", "min"):
        fail(f"--mode must be max or min, got {mode!r}")
    try:
        ranking = trial_rankings(storage, sweep_name, metric, mode)
    except SweepNotFound as error:
        fail(str(error))
    metric = metric or sweep_metric(storage, sweep_name)[0]
    varied = sorted({k for t in ranking for k, v in t.params.items() if any(o.params.get(k) != v for o in ranking)})
    header = ["rank", "trial", metric, "epoch", *varied, "mlflow run"]
    rows = []
    for i, t in enumerate(ranking[:top], 1):
        values = [f"{t.params.get(k):.4g}" if isinstance(t.params.get(k), float) else str(t.params.get(k)) for k in varied]
        rows.append([str(i), t.trial_name, f"{t.value:.4f}", str(t.epoch), *values, t.mlflow_run_id or "-"])
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if export is not None:
        directory = export_checkpoint(ranking[0], export)
        typer.echo(f"exported {ranking[0].trial_name} (epoch {ranking[0].epoch}) to {directory}; "
                   f"run it: beamtune decode --checkpoint {directory}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
