"""Tu & Gimpel (2019) §6.2: does an inference method make less search error on frequent sequences?

Search error of a method on sentence x (BLSTM-CRF energy E_Theta, lower is better):

    err(x) = E_Theta(x, y_method) - E_Theta(x, y_Viterbi)  >= 0 (Viterbi is exact)

Two LSTM language models (core.lm) are trained on the training split, one on its word sequences and
one on its gold label sequences; Spearman's rho between each per-sentence perplexity and err(x) is
reported for the inference network and for gradient descent (a fixed N and learning rate for every
sentence). The paper (Twitter POS, BLSTM infnet): rho 0.282 (words) / 0.195 (labels); GD 0.122 /
0.064: positive, and larger for the inference network.

    search_error_correlations(checkpoint, ...) -> {"infnet": {...}, "gd": {...}, "lm": {...}}
    SearchErrorConfig, run_search_error(config)   the `search-error` sweep stage
    flat_metrics(result) -> {"infnet_rho_word_perplexity": ..., "gd_mean_search_error": ..., ...}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.config import raise_first
from core.data import load_task
from core.decoding import DEFAULT_LR, decode_batches
from core.lm import LMConfig, sentence_perplexities, train_lm
from core.loading import load_for_decoding
from core.metrics import spearman
from core.oracle import SPLITS


def _method_row(out: dict[str, Any], ppl_words: list[float], ppl_labels: list[float], lengths: list[int]) -> dict[str, float]:
    errors = (torch.tensor(out["energy"]) - torch.tensor(out["viterbi_energy"])).tolist()  # (N,) per sentence
    return {"mean_search_error": sum(errors) / len(errors),
            "share_with_search_error": sum(e > 1e-4 for e in errors) / len(errors),
            "rho_word_perplexity": spearman(ppl_words, errors),
            "rho_label_perplexity": spearman(ppl_labels, errors),
            "rho_length": spearman(lengths, errors)}


def search_error_correlations(checkpoint: str, energy: str | None = None, split: str = "test", data_root: str | None = None,
                              gd_steps: int = 20, gd_lr: float | None = None, lm: LMConfig | None = None,
                              device: str = "cpu") -> dict[str, Any]:
    """§6.2 for an inference-network checkpoint (its CRF energy, or `energy`) on `split`."""
    crf, infnet, vocabs, meta = load_for_decoding(checkpoint, energy, device)
    if crf is None or infnet is None:
        raise ValueError(f"{checkpoint}: §6.2 needs an inference network and its CRF energy (an 'infnet' checkpoint)")
    task = load_task(meta["task"]["name"], data_root)
    sentences = task.dev if split == "dev" else task.test
    lm = lm or LMConfig()
    word_lm = train_lm([s.words for s in task.train], lm)
    label_lm = train_lm([s.tags for s in task.train], LMConfig(**{**lm.__dict__, "lowercase": False}))
    ppl_words = sentence_perplexities(word_lm, [s.words for s in sentences])
    ppl_labels = sentence_perplexities(label_lm, [s.tags for s in sentences])
    lengths = [len(s.words) for s in sentences]
    gd_lr = DEFAULT_LR["gd"] if gd_lr is None else gd_lr
    rows = {"infnet": _method_row(decode_batches(sentences, vocabs, "infnet", crf=crf, infnet=infnet), ppl_words, ppl_labels, lengths),
            "gd": {**_method_row(decode_batches(sentences, vocabs, "gd", crf=crf, steps=gd_steps, lr=gd_lr),
                                 ppl_words, ppl_labels, lengths), "steps": gd_steps, "lr": gd_lr}}
    rows["lm"] = {"mean_word_perplexity": sum(ppl_words) / len(ppl_words),
                  "mean_label_perplexity": sum(ppl_labels) / len(ppl_labels), "epochs": lm.epochs}
    rows["task"], rows["split"], rows["sentences"] = task.name, split, len(sentences)
    return rows


METHODS = ("infnet", "gd")  # the rows of §6.2, in the paper's order
ROW_KEYS = ("mean_search_error", "share_with_search_error", "rho_word_perplexity", "rho_label_perplexity", "rho_length")


@dataclass
class SearchErrorConfig:
    """§6.2 over a split: the parameters a `search-error` sweep stage may fix. The LM sizes default
    to core.lm.LMConfig's (the shipped setting of `beamtune search-error`)."""

    checkpoint: str  # an "infnet" checkpoint; its CRF energy gives the Viterbi reference
    split: str = "test"
    data_root: str | None = None
    energy: str | None = None  # the CRF energy (default: the one recorded in the infnet checkpoint)
    gd_steps: int = 20  # N, one for every sentence (the paper's GD row)
    gd_lr: float | None = None  # default: the gd decoder's (core.decoding.DEFAULT_LR)
    lm_epochs: int = LMConfig.epochs
    lm_hidden: int = LMConfig.hidden
    lm_embedding_dim: int = LMConfig.embedding_dim
    lm_min_count: int = LMConfig.min_count
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        raise_first("SearchErrorConfig", [
            ("split", self.split in SPLITS, "split must be 'dev' or 'test'"),
            ("gd_steps", self.gd_steps >= 1, "gd_steps must be >= 1"),
            ("gd_lr", self.gd_lr is None or self.gd_lr > 0, "gd_lr must be > 0"),
            ("lm_epochs", self.lm_epochs >= 1, "lm_epochs must be >= 1"),
            ("lm_hidden", self.lm_hidden >= 1, "lm_hidden must be >= 1"),
            ("lm_embedding_dim", self.lm_embedding_dim >= 1, "lm_embedding_dim must be >= 1"),
            ("lm_min_count", self.lm_min_count >= 1, "lm_min_count must be >= 1"),
            ("threads", self.threads >= 0, "threads must be >= 0"),
        ])


def run_search_error(config: SearchErrorConfig) -> dict[str, Any]:
    """search_error_correlations with the config's LMs, threads and device."""
    if config.threads:
        torch.set_num_threads(config.threads)
    lm = LMConfig(epochs=config.lm_epochs, hidden=config.lm_hidden, embedding_dim=config.lm_embedding_dim,
                  min_count=config.lm_min_count)
    return search_error_correlations(config.checkpoint, config.energy, config.split, config.data_root,
                                     config.gd_steps, config.gd_lr, lm, config.device)


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of a §6.2 result: {method}_{key} for every row key (infnet_rho_word_perplexity,
    gd_share_with_search_error, ...), gd_steps, gd_lr and the LMs' mean perplexities."""
    metrics = {f"{method}_{key}": float(result[method][key]) for method in METHODS for key in ROW_KEYS}
    metrics.update(gd_steps=float(result["gd"]["steps"]), gd_lr=float(result["gd"]["lr"]),
                   mean_word_perplexity=float(result["lm"]["mean_word_perplexity"]),
                   mean_label_perplexity=float(result["lm"]["mean_label_perplexity"]))
    return metrics
