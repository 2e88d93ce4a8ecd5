"""`beamtune train`: one training run of any stage (core.train), no Ray, no MLflow.

Choices come from core (core.stages.OBJECTIVES, ...) and every option left out takes the default
core states (TrainConfig, or the stage's model config), so nothing here restates a default. An
option the chosen objective's model or stage would ignore is an error, not silently dropped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from core.config import LOSS_PER, OPTIMIZERS
from core.data import TASKS
from core.infnets import ARCHITECTURES, CNN_ACTIVATIONS, InfnetConfig
from core.seq2seq import ATTENTIONS, FEEDS, TaggerConfig
from core.stages import OBJECTIVES, STRUCTURED_OBJECTIVES, TrainConfig
from core.stages.seq2seq import COSTS
from sweeps.cli.common import DEVICE_HELP, THREADS_HELP, choices, data_root_option, default, fail, path_or_none, \
    quiet_option, run_guarded

Objective = choices("Objective", OBJECTIVES)
Cost = choices("Cost", COSTS)
Arch = choices("Arch", ARCHITECTURES)
CnnActivation = choices("CnnActivation", tuple(CNN_ACTIVATIONS))
Attention = choices("Attention", ATTENTIONS)
Feed = choices("Feed", FEEDS)
Optimizer = choices("Optimizer", OPTIMIZERS)
LossPer = choices("LossPer", LOSS_PER)

SEQ2SEQ = ("ce", "dl", "hinge")
SOFT_BEAM = ("dl", "hinge")
INFNETS = ("local", "infnet")


def _d(name: str) -> str:
    """' (default: X)' for a TrainConfig field."""
    return f" (default: {default(TrainConfig, name)})"


def _m(name: str) -> str:
    return f" (default: {default(TaggerConfig, name)} for ce/dl/hinge"


def applies(option: str, objective: str, plus: bool, arch: str | None) -> bool:
    """Whether `option` changes anything for this objective (else giving it is an error)."""
    structured_plus = objective == "crf+" or (objective in INFNETS and plus)
    where = {
        "init": SEQ2SEQ, "feed": ("ce",), "eval_beam_size": SEQ2SEQ,
        "beam_size": SOFT_BEAM, "alpha": SOFT_BEAM, "cost": SOFT_BEAM,
        "arch": INFNETS, "plus": INFNETS, "energy": ("infnet",), "lam": ("infnet",),
        "layers": INFNETS if arch in (None, "blstm") else (),
        "cnn_activation": INFNETS if arch in (None, "cnn13", "cnn15") else (),
        "attention": SEQ2SEQ, "decoder_hidden": SEQ2SEQ, "dropout": SEQ2SEQ,
        "label_dim": SEQ2SEQ + (INFNETS if arch == "seq2seq" else ()),
        "char_filters": SEQ2SEQ + (STRUCTURED_OBJECTIVES if structured_plus else ()),
    }
    return objective in where.get(option, OBJECTIVES)


def model_overrides(objective: str, given: dict[str, Any]) -> dict[str, Any]:
    """The model-config overrides of the given size options, named as the objective's model names them."""
    if objective in STRUCTURED_OBJECTIVES:  # the paper's H is the structured models' `hidden`
        names = {"encoder_hidden": "hidden", "word_dim": "word_dim", "char_filters": "char_filters", "label_dim": "label_dim",
                 "cnn_activation": "cnn_activation"}
    else:
        names = {n: n for n in ("attention", "encoder_hidden", "decoder_hidden", "label_dim", "word_dim", "char_filters", "dropout")}
    return {names[k]: v for k, v in given.items() if k in names}


def train(
    task: str = typer.Option(..., help=", ".join(TASKS)),
    out: Path = typer.Option(..., help="Directory for the best-on-dev checkpoint and metrics.json."),
    objective: Objective = typer.Option(default(TrainConfig, "objective"), help="Training objective."),
    init: Optional[Path] = typer.Option(None, help="ce / dl / hinge: a seq2seq checkpoint to initialise from (dl / hinge need one)."),
    beam_size: Optional[int] = typer.Option(None, min=1, help="dl / hinge: soft-beam width k in training" + _d("beam_size") + "."),
    alpha: Optional[str] = typer.Option(None, help="dl / hinge: soft-beam temperature schedule: 1, linear:1:10:20, exp:1:100:10, "
                                        "steps:1,2,5 or decay:1:0.01" + _d("alpha") + "."),
    cost: Optional[Cost] = typer.Option(None, help="dl / hinge: per-position cost; hamming-o2 makes a wrong `O` cost 2 (NER)" + _d("cost") + "."),
    data_root: Optional[Path] = data_root_option(),
    embeddings: Optional[Path] = typer.Option(None, help="GloVe text file (.txt or .txt.gz) to initialise word vectors."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Maximum number of epochs" + _d("epochs") + "."),
    patience: Optional[int] = typer.Option(None, min=0, help="Stop after this many epochs without dev improvement (0: never)" + _d("patience") + "."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Sentences per batch" + _d("batch_size") + "."),
    optimizer: Optional[Optimizer] = typer.Option(None, help="Optimizer" + _d("optimizer") + "."),
    lr: Optional[float] = typer.Option(None, min=0.0, help="Learning rate (default: 1e-2 with Adam for crf/crf+/local/infnet, else 1e-3)."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum" + _d("momentum") + "."),
    clip: Optional[float] = typer.Option(None, min=0.0, help="Gradient-norm clipping (0: off)" + _d("clip") + "."),
    loss_per: Optional[LossPer] = typer.Option(None, help="Loss averaged per token, or summed per sentence and averaged "
                                               "over sentences (Tu & Gimpel's code)" + _d("loss_per") + "."),
    weight_decay: Optional[float] = typer.Option(None, min=0.0, help="L2: weight_decay * w added to each gradient" + _d("weight_decay") + "."),
    feed: Optional[Feed] = typer.Option(None, help="ce: decoder input in training, gold labels (teacher forcing) or its own predictions" + _d("feed") + "."),
    seed: Optional[int] = typer.Option(None, help="Random seed; one seed gives identical metrics" + _d("seed") + "."),
    min_count: Optional[int] = typer.Option(None, min=1, help="Words seen fewer times in training become <unk>" + _d("min_count") + "."),
    train_limit: Optional[int] = typer.Option(None, min=0, help="Train on the first N training sentences only (0: all)."),
    max_train_length: Optional[int] = typer.Option(None, min=0, help="Train on sentences of at most N tokens only (0: all)."),
    attention: Optional[Attention] = typer.Option(None, help="ce / dl / hinge: fixed (attend to position t), or a learned attention" + _m("attention") + ")."),
    encoder_hidden: Optional[int] = typer.Option(
        None, min=1, help="BiLSTM hidden size per direction" + _m("encoder_hidden") + "; the paper's H = 100 for crf/local/infnet)."),
    decoder_hidden: Optional[int] = typer.Option(None, min=1, help="ce / dl / hinge: decoder LSTM hidden size" + _m("decoder_hidden") + ")."),
    label_dim: Optional[int] = typer.Option(None, min=1, help="Label embedding size: ce / dl / hinge, and --arch seq2seq" + _m("label_dim") + ")."),
    word_dim: Optional[int] = typer.Option(
        None, min=1, help="Word embedding size, ignored with --embeddings" + _m("word_dim") + ", 100 for crf/local/infnet)."),
    char_filters: Optional[int] = typer.Option(None, min=0, help="Character-CNN filters, 0: none; ce / dl / hinge, crf+ and --plus"
                                               + _m("char_filters") + ", 50 for the '+' models)."),
    dropout: Optional[float] = typer.Option(None, min=0.0, max=0.99, help="ce / dl / hinge: dropout" + _m("dropout")
                                            + "); the structured models' is 0, or 0.5 for crf+ / --plus)."),
    eval_beam_size: Optional[int] = typer.Option(None, min=1, help="ce / dl / hinge: beam size of the dev and final beam-search scores" + _d("eval_beam_size") + "."),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP),
    threads: Optional[int] = typer.Option(None, min=0, help=THREADS_HELP),
    arch: Optional[Arch] = typer.Option(None, help="local / infnet: inference-network architecture" + _d("arch") + "."),
    energy: Optional[Path] = typer.Option(None, help="infnet: the trained CRF checkpoint whose energy it learns to minimise."),
    lam: Optional[str] = typer.Option(None, help="infnet: weight of the token loss, a schedule like --alpha "
                                      "(decay:1:0.01 is Tu & Gimpel's annealing)" + _d("lam") + "."),
    layers: Optional[int] = typer.Option(None, min=1, max=2, help="local / infnet with --arch blstm: BLSTM layers" + _d("layers") + "."),
    cnn_activation: Optional[CnnActivation] = typer.Option(
        None, help="local / infnet with a CNN --arch: g of its feature maps; the authors' code used relu (default: "
        f"{default(InfnetConfig, 'cnn_activation')})."),
    plus: bool = typer.Option(False, "--plus", help="local / infnet: char CNN + dropout 0.5 (the '+' models)."),
    quiet: bool = quiet_option(),
) -> None:
    """Train a seq2seq tagger, a BLSTM-CRF(+), a local baseline or an inference network; keep the
    best-on-dev checkpoint in OUT and write OUT/metrics.json. For crf/local/infnet, --encoder-hidden
    is the paper's H and the dropout is implied (0, or 0.5 for crf+ / --plus)."""
    from core.train import train as run_training

    given = {name: value for name, value in dict(
        init=path_or_none(init), beam_size=beam_size, alpha=alpha, cost=cost, embeddings=path_or_none(embeddings),
        epochs=epochs, patience=patience, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum, clip=clip,
        loss_per=loss_per, weight_decay=weight_decay,
        feed=feed, seed=seed, min_count=min_count, train_limit=train_limit, max_train_length=max_train_length, attention=attention,
        encoder_hidden=encoder_hidden, decoder_hidden=decoder_hidden, label_dim=label_dim, word_dim=word_dim,
        char_filters=char_filters, dropout=dropout, eval_beam_size=eval_beam_size, device=device, threads=threads,
        arch=arch, energy=path_or_none(energy), lam=lam, layers=layers, cnn_activation=cnn_activation, plus=plus or None,
    ).items() if value is not None}
    given = {name: value.value if hasattr(value, "value") else value for name, value in given.items()}
    config = train_config(objective.value, given, plus, task=task, out=str(out), data_root=path_or_none(data_root),
                          progress=not quiet)
    final = run_guarded(run_training, config)
    typer.echo(f"best epoch {final['best_epoch']}; checkpoint and metrics.json in {out}")
    print_scores(final, objective.value, config.eval_beam_size)


def train_config(objective: str, given: dict[str, Any], plus: bool, **run: Any) -> TrainConfig:
    """The TrainConfig of the options given (`run`: task, out, data_root, progress); an option the
    objective would ignore is a one-line error."""
    ignored = [name for name in given if not applies(name, objective, plus, given.get("arch"))]
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        fail(f"{flags}: not used by objective {objective!r}" + (" with these options" if objective in INFNETS else ""))
    model = model_overrides(objective, given)
    fields = {name: value for name, value in given.items() if name not in model and name not in (
        "attention", "encoder_hidden", "decoder_hidden", "label_dim", "word_dim", "char_filters", "dropout", "cnn_activation")}
    return run_guarded(TrainConfig, objective=objective, model=model, **run, **fields)


def print_scores(final: dict[str, Any], objective: str, k: int) -> None:
    if objective in STRUCTURED_OBJECTIVES:
        for split in ("dev", "test"):
            for name, result in final[split].items():
                energies = f"   energy {result['energy']:.3f} (Viterbi {result['viterbi_energy']:.3f})" if "energy" in result else ""
                typer.echo(f"{split:5s} {name} {result['score']:.4f}{energies}   ({final['metric']})")
        return
    soft = f"soft_beam{k}"
    for split in ("dev", "test"):
        line = f"{split:5s} greedy {final[split]['greedy']['score']:.4f}   beam{k} {final[split][f'beam{k}']['score']:.4f}"
        if soft in final[split]:
            line += f"   soft-beam{k} {final[split][soft]['score']:.4f} (alpha {final['soft_beam_alpha']:g})"
        typer.echo(f"{line}   ({final['metric']})")
