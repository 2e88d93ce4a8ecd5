"""Tu & Gimpel (2019) §6.2: does an inference method make less search error on frequent sequences?

Search error of a method on sentence x (BLSTM-CRF energy E_Theta, lower is better):

    err(x) = E_Theta(x, y_method) - E_Theta(x, y_Viterbi)  >= 0 (Viterbi is exact)

Two LSTM language models (core.lm) are trained on the training split, one on its word sequences and
one on its gold label sequences; Spearman's rho between each per-sentence perplexity and err(x) is
reported for the inference network and for gradient descent (a fixed N and learning rate for every
sentence). The paper (Twitter POS, BLSTM infnet): rho 0.282 (words) / 0.195 (labels); GD 0.122 /
0.064: positive, and larger for the inference network.

    search_error_correlations(checkpoint, ...) -> {"infnet": {...}, "gd": {...}, "lm": {...}}
"""
from __future__ import annotations

from typing import Any

import torch

from core.data import load_task
from core.decoding import DEFAULT_LR, decode_batches
from core.lm import LMConfig, sentence_perplexities, train_lm
from core.loading import load_for_decoding
from core.metrics import spearman


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
