"""Training and decoding for the structured models of Tu & Gimpel (2019): BLSTM-CRF(+), local
baselines and inference networks; checkpoints of kind "crf" and "infnet".

    StructuredStage(config, task, device)   objective crf | crf+ | local | infnet, for core.train.train
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
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from core.checkpoint import CheckpointError, load_checkpoint, load_model
from core.crf import BLSTMCRF, CRFConfig
from core.data import TaskData, Vocabs, load_task, make_batches
from core.infnets import InferenceNetwork, InfnetConfig
from core.metrics import evaluate
from core.objectives import infnet_loss, token_loss
from core.schedules import Constant, Decay
from core.search.gradient import GRID_LRS, GRID_STEPS, check_grid, gradient_descent, instance_tailor, run_oracle_grid, search_errors
from core.train import TrainConfig, build_vocabs_and_vectors, resolve_device, task_meta

STRUCTURED_DECODERS = ("viterbi", "infnet", "gd", "tailored", "warm-gd")
LAMBDA_DECAY = 0.01  # --lam-anneal: lambda = LAM * exp(-0.01 epoch) (Tu & Gimpel 2019, §7)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_crf(directory: str | Path, device: str = "cpu") -> tuple[BLSTMCRF, Vocabs, dict]:
    return load_model(directory, "crf", CRFConfig, BLSTMCRF, resolve_device(device))


def load_infnet(directory: str | Path, device: str = "cpu") -> tuple[InferenceNetwork, Vocabs, dict]:
    return load_model(directory, "infnet", InfnetConfig, InferenceNetwork, resolve_device(device))


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


class StructuredStage:
    """The structured objectives for `core.train.train` (the shared epoch loop; see
    `core.train.Seq2SeqStage` for the five questions a stage answers):

    crf / crf+   BLSTM-CRF(+) trained on the CRF negative log-likelihood, decoded by Viterbi;
    local        an inference-network architecture trained on the token loss alone;
    infnet       an inference network trained on E_Theta(x, A_Psi(x)) + lambda * token loss
                 against a fixed CRF (`config.energy`), whose vocabularies it shares.

    `config.model` may override the model config's hidden, word_dim, char_filters, char_dim and
    label_dim; the "+" variants switch on the char CNN and dropout 0.5.
    """

    def __init__(self, config: TrainConfig, task: TaskData, device: torch.device):
        self.config, self.task = config, task
        self.kind = "crf" if config.objective in ("crf", "crf+") else "infnet"
        # The infnet's local-loss weight per epoch; annealing is Tu & Gimpel's lambda = e^{-0.01 t}.
        self.lam = Decay(config.lam, LAMBDA_DECAY) if config.lam_anneal else Constant(config.lam)
        self.crf: BLSTMCRF | None = None
        if config.objective == "infnet":
            self.crf, crf_vocabs, crf_meta = load_crf(config.energy, str(device))
            if crf_meta["task"]["name"] != task.name:
                raise CheckpointError(f"energy {config.energy} was trained on task {crf_meta['task']['name']!r}, not {task.name!r}")
            self.crf.requires_grad_(False)
        if config.resume_from:
            load = load_crf if self.kind == "crf" else load_infnet
            self.model, self.vocabs, _ = load(config.resume_from, str(device))
            return
        if self.crf is not None:
            vocabs, vectors = crf_vocabs, None  # the CRF's embedding table already holds the pretrained vectors
        else:
            vocabs, vectors = build_vocabs_and_vectors(config, task)
        self.vocabs = vocabs
        plus = config.objective == "crf+" or (self.kind == "infnet" and config.plus)
        # The paper's settings, then the run's overrides: "+" means char CNN and dropout 0.5; the
        # word dimension comes from the pretrained vectors (or the CRF) when there are any.
        options: dict[str, Any] = {"hidden": 100, "word_dim": 100, "char_filters": 50 if plus else 0,
                                   "dropout": 0.5 if plus else 0.0, **config.model}
        if not plus:
            options["char_filters"] = 0
        if vectors is not None:
            options["word_dim"] = vectors.shape[1]
        elif self.crf is not None:
            options["word_dim"] = self.crf.config.word_dim
        sizes = dict(n_words=len(vocabs.words), n_chars=len(vocabs.chars), n_labels=len(vocabs.labels))
        if self.kind == "crf":
            options.setdefault("finetune_embeddings", plus or vectors is None)
            self.model: torch.nn.Module = BLSTMCRF(CRFConfig(**sizes, **options))
            embedding = self.model.encoder.word_embedding
        else:
            self.model = InferenceNetwork(InfnetConfig(arch=config.arch, **sizes, layers=config.layers, **options))
            embedding = self.model.word_embedding()
            if self.crf is not None:  # start from the CRF's (pretrained) word vectors
                embedding.weight.data.copy_(self.crf.encoder.word_embedding.weight.data)
        if vectors is not None:
            embedding.weight.data.copy_(vectors)
        self.model.to(device)

    warm_started = False
    decoder = property(lambda self: "viterbi" if self.kind == "crf" else "infnet")

    def _decode_kwargs(self) -> dict[str, Any]:
        return {"crf": self.model} if self.kind == "crf" else {"infnet": self.model, "crf": self.crf}

    def loss(self, batch, epoch: int) -> torch.Tensor:
        if self.kind == "crf":
            unary = self.model.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
            losses = self.model.nll(unary, batch.labels, batch.mask)  # (B,)
        else:
            logits = self.model(batch.words, batch.chars, batch.lengths).logits  # (B, T, L)
            if self.config.objective == "local":
                losses = token_loss(logits, batch.labels, batch.mask)  # (B,)
            else:
                with torch.no_grad():
                    unary = self.crf.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
                losses = infnet_loss(self.crf.crf, unary, logits, batch.labels, batch.mask, self.lam.at(epoch))  # (B,)
        return losses.sum() / batch.lengths.sum()

    def epoch_metrics(self, epoch: int) -> dict[str, float]:
        if self.config.objective != "infnet":
            return {}
        return {"lam": self.lam.at(epoch)}

    def dev_score(self) -> dict[str, Any]:
        result = score_decoder(self.task.dev, self.vocabs, self.task.metric, self.decoder, **self._decode_kwargs())
        result.pop("_pred")
        return result

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "objective": self.config.objective, "model_config": self.model.config.to_dict(),
                "vocabs": self.vocabs.to_dict(), "task": task_meta(self.task), "train_config": asdict(self.config),
                "energy": str(Path(self.config.energy).resolve()) if self.config.energy else None}

    def final_scores(self, best: Path, epochs_trained: int) -> dict[str, Any]:
        """Viterbi (CRF) or infnet scores, with energies, of the checkpoint in `best` on dev and test."""
        device = next(self.model.parameters()).device
        load = load_crf if self.kind == "crf" else load_infnet
        self.model, _, _ = load(best, str(device))
        final: dict[str, Any] = {}
        for split, sentences in (("dev", self.task.dev), ("test", self.task.test)):
            result = score_decoder(sentences, self.vocabs, self.task.metric, self.decoder, **self._decode_kwargs())
            result.pop("_pred")
            final[split] = {self.decoder: result}
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
                batch_size: int = 256, progress: bool = False, momentum: float = 0.9, seed: int = 0) -> dict[str, Any]:
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
                             momentum=momentum, batch_size=batch_size, seed=seed,
                             infnet=infnet if warm_start else None, progress=progress)
    result["task"], result["split"], result["metric"] = task.name, split, task.metric
    return result


@dataclass
class OracleConfig:
    """One run of the GD oracle grid (Tu & Gimpel 2019, Table 6) over a split: the `gd-oracle`
    command's options, and the parameters a `gd-oracle` sweep stage may fix or search."""

    checkpoint: str  # a "crf" checkpoint, or an "infnet" one (its energy; warm_start uses its logits)
    split: str = "test"
    data_root: str | None = None
    energy: str | None = None  # infnet checkpoints: the CRF energy (default: the one it was trained with)
    warm_start: bool = False
    steps: tuple[int, ...] = GRID_STEPS
    lrs: tuple[float, ...] = GRID_LRS
    momentum: float = 0.9
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        self.steps, self.lrs = tuple(self.steps), tuple(self.lrs)
        checks = [
            (self.split in ("dev", "test"), "split must be 'dev' or 'test'"),
            (0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.threads >= 0, "threads must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"OracleConfig: {message}")
        try:
            check_grid(self.steps, self.lrs)
        except ValueError as error:
            raise ValueError(f"OracleConfig: {error}") from None


def run_oracle(config: OracleConfig) -> dict[str, Any]:
    """The oracle grid as `config` says: rows (one per sentence), table6, oracle, viterbi, cost."""
    if config.threads:
        torch.set_num_threads(config.threads)
    return oracle_grid(config.checkpoint, config.split, config.data_root, config.energy, config.warm_start,
                       config.steps, config.lrs, str(resolve_device(config.device)), config.batch_size,
                       config.progress, config.momentum, config.seed)

