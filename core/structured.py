"""Training and decoding for the structured models of Tu & Gimpel (2019): BLSTM-CRF(+), local
baselines and inference networks; checkpoints of kind "crf" and "infnet".

    train_structured(config, report)   objective crf | crf+ | local | infnet
    load_crf(dir), load_infnet(dir)    rebuild a model (+ vocabs, meta); wrong kind -> CheckpointError
    decode_structured(...)             decoder viterbi | infnet | gd | tailored | warm-gd
    oracle_grid(...)                   the per-instance GD oracle grid over a split (core.search.gradient)

An inference network is trained against a fixed CRF (`energy`, a "crf" checkpoint) and uses that
CRF's vocabularies, so both see the same word and label ids; decoding an infnet against a CRF with
another label set is refused with one clear error.

Shapes: B sentences, T positions, L labels.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from core.checkpoint import CheckpointError, atomic_write, load_checkpoint, load_weights, save_checkpoint
from core.crf import BLSTMCRF, CRFConfig
from core.data import TaskData, Vocabs, build_vocabs, load_task, make_batches
from core.infnets import ARCHITECTURES, InferenceNetwork, InfnetConfig, annealed_lambda
from core.metrics import evaluate
from core.objectives import infnet_loss, token_loss
from core.search.gradient import gradient_descent, instance_tailor, run_oracle_grid, search_errors

STRUCTURED_OBJECTIVES = ("crf", "crf+", "local", "infnet")
STRUCTURED_DECODERS = ("viterbi", "infnet", "gd", "tailored", "warm-gd")
Report = Callable[[int, dict[str, float], Path | None], None]


class TrainingError(RuntimeError):
    """A non-finite loss; the message names the epoch and batch."""


@dataclass
class StructuredConfig:
    task: str
    out: str
    objective: str = "crf"
    arch: str = "blstm"  # local / infnet only
    energy: str | None = None  # "crf" checkpoint directory: the fixed energy of an infnet
    lam: float = 1.0  # weight of the token loss in the infnet objective
    lam_anneal: bool = False  # lam * e^{-0.01 epoch}
    plus: bool = False  # local / infnet: the "+" techniques (char CNN, dropout 0.5)
    layers: int = 1  # BLSTM infnet layers
    hidden: int = 100
    word_dim: int = 100
    char_filters: int = 50  # used by crf+ and by plus local / infnet
    data_root: str | None = None
    embeddings: str | None = None
    epochs: int = 30
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    clip: float = 5.0
    patience: int = 5
    seed: int = 0
    min_count: int = 1
    lowercase: bool = True
    device: str = "auto"
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.objective in STRUCTURED_OBJECTIVES, f"objective must be one of {STRUCTURED_OBJECTIVES}"),
            (self.arch in ARCHITECTURES, f"arch must be one of {ARCHITECTURES}"),
            (self.objective != "infnet" or self.energy, "objective 'infnet' needs energy (a trained CRF checkpoint)"),
            (self.lam >= 0, "lam must be >= 0"),
            (self.optimizer in ("adam", "sgd"), "optimizer must be 'adam' or 'sgd'"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.lr > 0, "epochs, batch_size and lr must be positive"),
            (self.patience >= 0 and self.clip >= 0 and self.threads >= 0, "patience, clip and threads must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"StructuredConfig: {message}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _vocabs_and_vectors(config: StructuredConfig, task: TaskData) -> tuple[Vocabs, torch.Tensor | None]:
    from core.embeddings import glove_words, load_glove

    extra: set[str] = set()
    if config.embeddings:
        extra = {w.lower() for s in task.dev + task.test for w in s.words} & glove_words(config.embeddings)
    vocabs = build_vocabs(task.train, min_count=config.min_count, lowercase=config.lowercase, extra_words=sorted(extra))
    vectors = load_glove(config.embeddings, vocabs.words)[0] if config.embeddings else None
    return vocabs, vectors


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_crf(directory: str | Path, device: str = "cpu") -> tuple[BLSTMCRF, Vocabs, dict]:
    checkpoint = load_checkpoint(directory, kind="crf")
    try:
        model = BLSTMCRF(CRFConfig.from_dict(checkpoint.meta["model_config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {directory}: bad CRF config: {error}") from None
    load_weights(model, checkpoint)
    return model.to(_device(device)).eval(), Vocabs.from_dict(checkpoint.meta["vocabs"]), checkpoint.meta


def load_infnet(directory: str | Path, device: str = "cpu") -> tuple[InferenceNetwork, Vocabs, dict]:
    checkpoint = load_checkpoint(directory, kind="infnet")
    try:
        model = InferenceNetwork(InfnetConfig.from_dict(checkpoint.meta["model_config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {directory}: bad inference-network config: {error}") from None
    load_weights(model, checkpoint)
    return model.to(_device(device)).eval(), Vocabs.from_dict(checkpoint.meta["vocabs"]), checkpoint.meta


def check_same_labels(infnet_vocabs: Vocabs, crf_vocabs: Vocabs, infnet_dir: Any, crf_dir: Any) -> None:
    """An infnet and its energy must share word and label ids; else one clear error."""
    if infnet_vocabs.labels.itos != crf_vocabs.labels.itos:
        raise CheckpointError(
            f"label sets differ: inference network {infnet_dir} has {len(infnet_vocabs.labels)} labels, "
            f"CRF {crf_dir} has {len(crf_vocabs.labels)} (or a different order); train the infnet with --energy {crf_dir}"
        )
    if infnet_vocabs.words.itos != crf_vocabs.words.itos:
        raise CheckpointError(f"word vocabularies differ between inference network {infnet_dir} and CRF {crf_dir}")


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def decode_batches(
    sentences, vocabs: Vocabs, decoder: str, crf: BLSTMCRF | None = None, infnet: InferenceNetwork | None = None,
    steps: int = 20, lr: float = 100.0, momentum: float = 0.9, batch_size: int = 64, seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Decode `sentences` -> {"pred": tag strings, "energy": E(x, y) of the discrete output,
    "relaxed_energy": E(x, relaxed output) where there is one, "viterbi_energy"} (lists per
    sentence; energies need a CRF)."""
    if decoder not in STRUCTURED_DECODERS:
        raise ValueError(f"decoder must be one of {STRUCTURED_DECODERS}, got {decoder!r}")
    if decoder in ("viterbi", "gd") and crf is None:
        raise ValueError(f"decoder {decoder!r} needs a CRF")
    if decoder in ("infnet", "tailored", "warm-gd") and infnet is None:
        raise ValueError(f"decoder {decoder!r} needs an inference network")
    if decoder in ("tailored", "warm-gd") and crf is None:
        raise ValueError(f"decoder {decoder!r} needs the CRF energy (--energy)")
    device = next((crf or infnet).parameters()).device
    n = len(sentences)
    pred: list[Any] = [None] * n
    energy, relaxed, viterbi_energy = [math.nan] * n, [math.nan] * n, [math.nan] * n
    for batch in tqdm(make_batches(sentences, vocabs, batch_size), desc=decoder, disable=not progress, leave=False):
        batch = batch.to(device)
        unary = crf.unary(batch.words, batch.chars, batch.lengths) if crf is not None else None  # (B, T, L)
        probs = None
        if decoder == "viterbi":
            labels = crf.viterbi(unary, batch.mask).labels  # (B, T)
        elif decoder == "infnet":
            out = infnet(batch.words, batch.chars, batch.lengths)
            labels, probs = out.labels, out.probs
        elif decoder == "tailored":
            out = instance_tailor(infnet, crf.crf, batch.words, batch.chars, batch.lengths, unary, steps, lr, momentum)
            labels, probs = out.labels, out.probs
        else:  # gd, warm-gd
            init = infnet(batch.words, batch.chars, batch.lengths).logits if decoder == "warm-gd" else None
            trace = gradient_descent(crf.crf, unary, batch.mask, steps=(steps,), lrs=(lr,), momentum=momentum, init=init, seed=seed)
            labels, probs = trace.labels[0, 0], trace.logits[0].softmax(dim=-1)
        rows = batch.index.tolist()
        if crf is not None:
            e = crf.energy(unary, labels, batch.mask).tolist()
            v = (-crf.viterbi(unary, batch.mask).scores).tolist()
            r = crf.energy(unary, probs, batch.mask).tolist() if probs is not None else [math.nan] * len(rows)
        ids = labels.cpu().tolist()
        for row, i in enumerate(rows):
            pred[i] = [vocabs.labels.itos[y] for y in ids[row][: len(sentences[i].words)]]
            if crf is not None:
                energy[i], viterbi_energy[i], relaxed[i] = e[row], v[row], r[row]
    return {"pred": pred, "energy": energy, "relaxed_energy": relaxed, "viterbi_energy": viterbi_energy}


def score_decoder(sentences, vocabs, metric: str, decoder: str, **kwargs) -> dict[str, Any]:
    """Decode and evaluate a split: metric, mean energies, search error, sentences per second."""
    start = time.perf_counter()
    out = decode_batches(sentences, vocabs, decoder, **kwargs)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = evaluate([s.tags for s in sentences], out["pred"], metric)
    result["sentences_per_second"] = len(sentences) / seconds
    if not math.isnan(out["energy"][0]):
        lengths = torch.tensor([len(s.words) for s in sentences])
        result["energy"] = sum(out["energy"]) / len(sentences)
        result["viterbi_energy"] = sum(out["viterbi_energy"]) / len(sentences)
        if not math.isnan(out["relaxed_energy"][0]):
            result["relaxed_energy"] = sum(out["relaxed_energy"]) / len(sentences)
        errors = search_errors(torch.tensor(out["energy"]), torch.tensor(out["viterbi_energy"]), lengths)
        result["search_error"] = errors["mean"]
        result["search_error_rho_length"] = errors["rho_length"]
    result["_pred"] = out["pred"]
    return result


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def train_structured(config: StructuredConfig, report: Report | None = None) -> dict[str, Any]:
    """Train a BLSTM-CRF(+), a local baseline or an inference network; keep the best-on-dev
    checkpoint in `config.out` and write out/metrics.json (dev/test scores, energies)."""
    from core.train import seed_everything

    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(config.task, config.data_root)
    crf: BLSTMCRF | None = None
    if config.objective == "infnet":
        crf, vocabs, crf_meta = load_crf(config.energy, str(device))
        if crf_meta["task"]["name"] != task.name:
            raise CheckpointError(f"energy {config.energy} was trained on task {crf_meta['task']['name']!r}, not {task.name!r}")
        for p in crf.parameters():
            p.requires_grad_(False)
        vectors = None  # the CRF's embedding table already holds the pretrained vectors
    else:
        vocabs, vectors = _vocabs_and_vectors(config, task)
    sizes = dict(n_words=len(vocabs.words), n_chars=len(vocabs.chars), n_labels=len(vocabs.labels))
    word_dim = vectors.shape[1] if vectors is not None else (crf.config.word_dim if crf is not None else config.word_dim)
    if config.objective in ("crf", "crf+"):
        plus = config.objective == "crf+"
        model_config = CRFConfig(**sizes, word_dim=word_dim, hidden=config.hidden,
                                 char_filters=config.char_filters if plus else 0, dropout=0.5 if plus else 0.0,
                                 finetune_embeddings=plus or vectors is None)
        model: torch.nn.Module = BLSTMCRF(model_config)
        kind = "crf"
        embedding = model.encoder.word_embedding
    else:
        model_config = InfnetConfig(arch=config.arch, **sizes, word_dim=word_dim, hidden=config.hidden,
                                    char_filters=config.char_filters if config.plus else 0,
                                    dropout=0.5 if config.plus else 0.0, layers=config.layers)
        model = InferenceNetwork(model_config)
        kind = "infnet"
        embedding = model.word_embedding()
        if crf is not None:  # start from the CRF's (pretrained) word vectors
            embedding.weight.data.copy_(crf.encoder.word_embedding.weight.data)
    if vectors is not None:
        embedding.weight.data.copy_(vectors)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.Adam(params, lr=config.lr) if config.optimizer == "adam"
                 else torch.optim.SGD(params, lr=config.lr, momentum=config.momentum))
    decoder = "viterbi" if kind == "crf" else "infnet"

    def dev_score() -> dict[str, Any]:
        model.eval()
        kwargs = {"crf": model} if kind == "crf" else {"infnet": model, "crf": crf}
        result = score_decoder(task.dev, vocabs, task.metric, decoder, **kwargs)
        result.pop("_pred")
        return result

    best, best_epoch, bad = -math.inf, 0, 0
    seconds, seen = 0.0, 0
    for epoch in range(1, config.epochs + 1):
        lam = annealed_lambda(config.lam, epoch, config.lam_anneal)
        model.train()
        batches = make_batches(task.train, vocabs, config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch)
        start = time.perf_counter()
        total, tokens = 0.0, 0
        for step, batch in enumerate(tqdm(batches, desc=f"epoch {epoch}", disable=not config.progress, leave=False)):
            batch = batch.to(device)
            if kind == "crf":
                unary = model.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
                losses = model.nll(unary, batch.labels, batch.mask)  # (B,)
            else:
                logits = model(batch.words, batch.chars, batch.lengths).logits  # (B, T, L)
                if config.objective == "local":
                    losses = token_loss(logits, batch.labels, batch.mask)  # (B,)
                else:
                    with torch.no_grad():
                        unary = crf.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
                    losses = infnet_loss(crf.crf, unary, logits, batch.labels, batch.mask, lam)  # (B,)
            n_tokens = int(batch.lengths.sum())
            loss = losses.sum() / n_tokens
            if not torch.isfinite(loss):
                raise TrainingError(f"epoch {epoch}, batch {step}: loss is {loss.item()} (try a lower --lr or clipping)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.clip)
            optimizer.step()
            total += loss.item() * n_tokens
            tokens += n_tokens
        seconds += time.perf_counter() - start
        seen += len(task.train)
        dev = dev_score()
        metrics = {"epoch": epoch, "train_loss": total / tokens, "dev_score": dev["score"], "lam": lam,
                   "train_sentences_per_second": seen / seconds}
        improved = dev["score"] > best
        if improved:
            best, best_epoch, bad = dev["score"], epoch, 0
            meta = {"kind": kind, "objective": config.objective, "model_config": model_config.to_dict(),
                    "vocabs": vocabs.to_dict(), "task": {"name": task.name, "metric": task.metric, "scheme": task.scheme},
                    "train_config": asdict(config), "epoch": epoch, "dev": dev,
                    "energy": str(Path(config.energy).resolve()) if config.energy else None}
            save_checkpoint(out, model, meta)
        else:
            bad += 1
        metrics["best_dev_score"] = best
        if config.progress:
            tqdm.write(f"epoch {epoch}: loss {metrics['train_loss']:.4f}  dev {dev['score']:.4f}" + ("  *" if improved else ""))
        if report is not None:
            report(epoch, metrics, out if improved else None)
        if config.patience and bad >= config.patience:
            break

    # Score the best checkpoint on dev and test.
    if kind == "crf":
        model, _, _ = load_crf(out, str(device))
        kwargs = {"crf": model}
    else:
        model, _, _ = load_infnet(out, str(device))
        kwargs = {"infnet": model, "crf": crf}
    final: dict[str, Any] = {"task": task.name, "metric": task.metric, "objective": config.objective,
                             "best_epoch": best_epoch, "train_sentences_per_second": seen / seconds}
    for split, sentences in (("dev", task.dev), ("test", task.test)):
        result = score_decoder(sentences, vocabs, task.metric, decoder, **kwargs)
        result.pop("_pred")
        final[split] = {decoder: result}
    atomic_write(out / "metrics.json", json.dumps(final, indent=2).encode())
    return final


# ---------------------------------------------------------------------------------------------
# Entry points for the CLI
# ---------------------------------------------------------------------------------------------


def checkpoint_kind(directory: str | Path) -> str | None:
    """The `kind` a checkpoint's manifest names (None if it has none); errors as load_checkpoint."""
    manifest = Path(directory) / "checkpoint.json"
    if not manifest.is_file():
        load_checkpoint(directory)  # raises the usual clear error
    try:
        return json.loads(manifest.read_text()).get("kind")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        load_checkpoint(directory)
        return None


def load_for_decoding(checkpoint: str | Path, energy: str | Path | None, device: str = "cpu"):
    """(crf or None, infnet or None, vocabs, meta) for a "crf" or "infnet" checkpoint; an infnet's
    energy comes from `energy` or from the path recorded when it was trained."""
    kind = checkpoint_kind(checkpoint)
    if kind == "crf":
        crf, vocabs, meta = load_crf(checkpoint, device)
        return crf, None, vocabs, meta
    if kind == "infnet":
        infnet, vocabs, meta = load_infnet(checkpoint, device)
        energy = energy or meta.get("energy")
        crf = None
        if energy:
            crf, crf_vocabs, _ = load_crf(energy, device)
            check_same_labels(vocabs, crf_vocabs, checkpoint, energy)
        return crf, infnet, vocabs, meta
    raise CheckpointError(f"checkpoint {checkpoint}: holds a {kind!r} model, expected 'crf' or 'infnet'")


def oracle_grid(checkpoint, split: str = "test", data_root=None, energy=None, warm_start: bool = False,
                steps: Sequence[int] | None = None, lrs: Sequence[float] | None = None, device: str = "cpu",
                batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """Run the GD oracle grid with a "crf" checkpoint (or an infnet's energy; `warm_start` uses
    the infnet's logits) on a split."""
    from core.search.gradient import GRID_LRS, GRID_STEPS

    crf, infnet, vocabs, meta = load_for_decoding(checkpoint, energy, device)
    if crf is None:
        raise CheckpointError(f"checkpoint {checkpoint}: no CRF energy to run gradient descent on (pass --energy)")
    if warm_start and infnet is None:
        raise ValueError("--warm-start needs an inference-network checkpoint")
    task = load_task(meta["task"]["name"], data_root)
    sentences = task.dev if split == "dev" else task.test
    result = run_oracle_grid(crf, sentences, vocabs, task.metric, steps or GRID_STEPS, lrs or GRID_LRS,
                             batch_size=batch_size, infnet=infnet if warm_start else None, progress=progress)
    result["task"], result["split"], result["metric"] = task.name, split, task.metric
    return result
