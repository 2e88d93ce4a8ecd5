"""`beamtune decode`, `beamtune gd-oracle` and `beamtune search-error`: inference with a trained
checkpoint (core only).

Decoder names, splits and the GD grid come from core (core.decoding, core.oracle).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from core.decoding import DECODERS, STRUCTURED_DECODERS
from core.lm import LMConfig
from core.oracle import SPLITS, OracleConfig
from sweeps.cli.common import DEVICE_HELP, THREADS_HELP, choices, data_root_option, default, fail, path_or_none, \
    quiet_option, run_guarded

Decoder = choices("Decoder", DECODERS + STRUCTURED_DECODERS)
Split = choices("Split", SPLITS)


def _csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def decode(
    checkpoint: Path = typer.Option(..., help="Checkpoint directory (a `beamtune train --out` folder)."),
    decoder: Decoder = typer.Option(DECODERS[0]),
    beam_size: int = typer.Option(3, min=1, help="Beam size for --decoder beam or soft-beam."),
    alpha: float = typer.Option(1.0, min=0.0, help="Temperature for --decoder soft-beam (large: hard beam search)."),
    split: Split = typer.Option("test"),
    data_root: Optional[Path] = data_root_option(),
    predictions: Optional[Path] = typer.Option(None, help="Write `token gold predicted` lines (conlleval input; NER tags "
                                               "in the data's own scheme, IOB1 for CoNLL-2003)."),
    search_error: bool = typer.Option(False, "--search-error", help="seq2seq checkpoints: also the model scores of the "
                                      "greedy, beam (--beam-size) and gold sequences: mean beam - greedy, and the shares "
                                      "where gold outscores the beam's output (search error) or not (model error)."),
    by_coverage: bool = typer.Option(False, "--by-coverage", help="Also token accuracy by what the word table knew: "
                                     "in the pretrained vectors and/or the training split (core.coverage)."),
    as_json: bool = typer.Option(False, "--json", help="Print metrics as JSON."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    steps: int = typer.Option(20, min=0, help="gd / infnet-gd / tailored: number of gradient steps N."),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Step size, the same for every sentence. Default: 100 for gd / "
                                       "infnet-gd (steps on the relaxed output), 0.01 for tailored (steps on the network's weights)."),
    energy: Optional[Path] = typer.Option(None, help="infnet checkpoints: the CRF energy (default: the one it was trained with)."),
    threads: int = typer.Option(0, min=0, help=THREADS_HELP),
    quiet: bool = quiet_option(),
) -> None:
    """Decode a split with a trained checkpoint and print its metrics."""
    import torch

    from core.checkpoint import atomic_write
    from core.data import load_task
    from core.decoding import predict, score_decoder
    from core.loading import load_for_decoding, load_tagger
    from core.metrics import evaluate

    if threads:
        torch.set_num_threads(threads)
    if predictions:
        check_output_file(predictions, "--predictions")  # before the decoding it would lose
    if search_error and decoder.value not in DECODERS:
        fail(f"--search-error needs a seq2seq checkpoint and decoder ({', '.join(DECODERS)}), not {decoder.value}")
    k = 1 if decoder.value == "greedy" else beam_size
    if decoder.value in DECODERS:
        model, vocabs, meta = run_guarded(load_tagger, checkpoint, device)
    else:
        crf, infnet, vocabs, meta = run_guarded(load_for_decoding, checkpoint, energy, device)
    task = run_guarded(load_task, meta["task"]["name"], path_or_none(data_root))
    sentences = task.dev if split.value == "dev" else task.test
    if decoder.value in DECODERS:
        pred = run_guarded(predict, model, sentences, vocabs, decoder.value, k, progress=not quiet, alpha=alpha)
        metrics = evaluate([s.tags for s in sentences], pred, task.metric)
    else:
        metrics = run_guarded(score_decoder, sentences, vocabs, task.metric, decoder.value, crf=crf, infnet=infnet,
                              steps=steps, lr=lr, progress=not quiet)
        pred = metrics.pop("_pred")
    if predictions:
        atomic_write(predictions, prediction_lines(task, sentences, pred).encode())
    result = {"task": task.name, "split": split.value, "decoder": decoder.value, "beam_size": k, **metrics}
    if decoder.value == "soft-beam":
        result["alpha"] = alpha
    if search_error:
        from core.decoding import sequence_scores
        from core.metrics import beam_search_errors

        scores = run_guarded(sequence_scores, model, sentences, vocabs, beam_size, progress=not quiet)
        errors = beam_search_errors(scores["greedy"], scores["beam"], scores["gold"])
        result["search.beam_size"] = beam_size
        result.update({f"search.{key}": value for key, value in errors.items()})
    if by_coverage:
        result.update(run_guarded(coverage_metrics, task, sentences, pred, vocabs, meta, data_root))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo("  ".join(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in result.items()))


def coverage_metrics(task, sentences, pred, vocabs, meta: dict, data_root: Optional[Path]) -> dict[str, float]:
    from core.config import embeddings_path
    from core.coverage import flat_metrics, split_coverage

    embeddings = meta.get("train_config", {}).get("embeddings")
    path = embeddings_path(embeddings, path_or_none(data_root)) if embeddings else None
    return flat_metrics(split_coverage(sentences, pred, task.train, vocabs.words, path))


def check_output_file(path: Path, option: str) -> None:
    if path.is_dir():
        fail(f"{option} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        fail(f"{option} {path}: folder {path.parent} does not exist")


def prediction_lines(task, sentences, pred) -> str:
    """`token gold predicted` lines, a blank line after each sentence: conlleval input. NER tags go
    back into the data's own scheme (IOB1 for CoNLL-2003), since conlleval cannot read BIOES: it
    would merge adjacent same-type entities. Both columns keep exactly the chunks span F1 counts
    (for an IOB1 task too: an invalid predicted `B-X` after `O` is rewritten `I-X`, the same chunk)."""
    from core.data import FILE_SCHEMES
    from core.metrics import file_tags

    lines = []
    for sentence, tags in zip(sentences, pred):
        gold = sentence.tags
        if task.scheme in ("bioes", "iob1"):
            scheme = FILE_SCHEMES.get(task.name, "iob2")
            gold, tags = file_tags(gold, scheme), file_tags(tags, scheme)
        lines += [f"{w} {g} {p}" for w, g, p in zip(sentence.words, gold, tags)] + [""]
    return "\n".join(lines)


def gd_oracle(
    checkpoint: Path = typer.Option(..., help="A 'crf' checkpoint, or an 'infnet' one (its energy; with --infnet-start its logits)."),
    out: Path = typer.Option(..., help="Parquet file: one row per sentence (id, length, chosen N and lr, metric, energies)."),
    split: Split = typer.Option(default(OracleConfig, "split")),
    data_root: Optional[Path] = data_root_option(),
    energy: Optional[Path] = typer.Option(None, help="infnet checkpoints: the CRF energy (default: the one it was trained with)."),
    infnet_start: bool = typer.Option(False, "--infnet-start", help="Start GD from the inference network's logits."),
    steps: str = typer.Option(_csv(default(OracleConfig, "steps")), help="Step counts N (every N is a prefix of one trajectory)."),
    lrs: str = typer.Option(_csv(default(OracleConfig, "lrs")), help="Learning rates (one batched trajectory each)."),
    batch_size: int = typer.Option(default(OracleConfig, "batch_size"), min=1),
    device: str = typer.Option(default(OracleConfig, "device"), help=DEVICE_HELP),
    threads: int = typer.Option(default(OracleConfig, "threads"), min=0, help=THREADS_HELP),
    quiet: bool = quiet_option(),
) -> None:
    """Per-instance oracle-tuned gradient-descent inference (Tu & Gimpel 2019, Table 6): writes the
    per-sentence table to OUT and prints the per-N averages (OUT with .json: the summary)."""
    from core.oracle import run_oracle
    from storage.tables import write_result_table

    check_output_file(out, "--out")  # before the oracle grid it would lose
    try:
        step_list = [int(v) for v in steps.split(",")]
        lr_list = [float(v) for v in lrs.split(",")]
    except ValueError:
        fail(f"--steps and --lrs take comma-separated numbers, got {steps!r} and {lrs!r}")
    config = run_guarded(OracleConfig, checkpoint=str(checkpoint), split=split.value, data_root=path_or_none(data_root),
                         energy=path_or_none(energy), infnet_start=infnet_start, steps=step_list, lrs=lr_list,
                         batch_size=batch_size, device=device, threads=threads, progress=not quiet)
    result = run_guarded(run_oracle, config)
    write_result_table(out, result)
    typer.echo(f"{'N':>6s} {'score':>8s} {'energy':>10s}   ({result['metric']}, {result['task']} {split.value})")
    for row in result["table6"]:
        typer.echo(f"{row['steps']:6d} {row['score']:8.4f} {row['energy']:10.3f}")
    typer.echo(f"oracle {result['oracle']['score']:8.4f} {result['oracle']['energy']:10.3f}")
    typer.echo(f"Viterbi {result['viterbi']['score']:7.4f} {result['viterbi']['energy']:10.3f}")
    cost = result["cost"]
    typer.echo(f"{cost['optimizer_steps']} optimizer steps in {cost['seconds']:.1f}s; rows in {out}")


def search_error(
    checkpoint: Path = typer.Option(..., help="An 'infnet' checkpoint (its CRF energy is the one it was trained with, or --energy)."),
    split: Split = typer.Option(default(OracleConfig, "split")),
    data_root: Optional[Path] = data_root_option(),
    energy: Optional[Path] = typer.Option(None, help="The CRF energy (default: the one the inference network was trained with)."),
    gd_steps: int = typer.Option(20, min=1, help="Gradient descent: iterations N, the same for every sentence."),
    gd_lr: Optional[float] = typer.Option(None, help="Gradient descent learning rate (default: the gd decoder's)."),
    lm_epochs: int = typer.Option(default(LMConfig, "epochs"), min=1, help="Epochs of each LSTM language model."),
    threads: int = typer.Option(0, min=0, help=THREADS_HELP),
    out: Optional[Path] = typer.Option(None, help="Also write the result as JSON here."),
) -> None:
    """Search error against sequence frequency (Tu & Gimpel 2019, §6.2): Spearman's rho between the
    perplexity of two LSTM language models (training words; gold label sequences) and the search
    error E(x, y) - E(x, y_Viterbi) of the inference network and of gradient descent."""
    import torch

    from core.search_correlation import search_error_correlations

    if out is not None:
        check_output_file(out, "--out")
    if threads:
        torch.set_num_threads(threads)
    result = run_guarded(search_error_correlations, str(checkpoint), path_or_none(energy), split.value,
                         path_or_none(data_root), gd_steps, gd_lr, LMConfig(epochs=lm_epochs))
    typer.echo(f"{'method':8s} {'mean err':>9s} {'share':>6s} {'rho(word ppl)':>14s} {'rho(label ppl)':>15s} {'rho(length)':>12s}"
               f"   ({result['task']} {result['split']}, {result['sentences']} sentences)")
    for method in ("infnet", "gd"):
        row = result[method]
        typer.echo(f"{method:8s} {row['mean_search_error']:9.3f} {row['share_with_search_error']:6.3f} "
                   f"{row['rho_word_perplexity']:14.3f} {row['rho_label_perplexity']:15.3f} {row['rho_length']:12.3f}")
    if out is not None:
        out.write_text(json.dumps(result, indent=1))
