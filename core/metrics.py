"""Evaluation metrics on tag strings.

- token accuracy (CCG top-400: a gold `*` is always wrong, as in Tu & Gimpel 2019);
- span F1, micro-averaged exactly as the CoNLL `conlleval` script counts chunks (seqeval's default
  mode is a port of conlleval's chunk rules, and it reads BIO, IOB1 and BIOES alike), plus the
  macro average over entity types that Goyal et al. (2018) report in Table 2;
- per-sentence scores (`instance_scores`, what the GD oracle maximises per instance) and search
  error E(x, y_method) - E(x, y_Viterbi) with its Spearman correlation against sentence length
  (`search_errors`, Tu & Gimpel 2019, §6.2);
- the seq2seq tagger's search error from model scores (`beam_search_errors`, Goyal et al. 2018:
  how much CE leaves for beam search, and whether beam misses a gold sequence the model prefers).

Metrics work on strings, not label ids, so a dev/test tag never seen in training counts as wrong
without special handling.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from core.data import WRONG_TAG

Tags = Sequence[Sequence[str]]


def _check_aligned(gold: Tags, pred: Tags) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but predictions have {len(pred)}")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: gold has {len(g)} tags but prediction has {len(p)}")


def token_accuracy(gold: Tags, pred: Tags) -> float:
    """Fraction of tokens whose predicted tag equals the gold tag; gold `*` is never correct."""
    _check_aligned(gold, pred)
    total = sum(len(g) for g in gold)
    if total == 0:
        raise ValueError("token_accuracy: no tokens")
    correct = sum(gt == pt and gt != WRONG_TAG for g, p in zip(gold, pred) for gt, pt in zip(g, p))
    return correct / total


def span_f1(gold: Tags, pred: Tags) -> dict[str, float]:
    """Chunk precision, recall and F1 (micro, conlleval-equal) and macro F1 over entity types."""
    _check_aligned(gold, pred)
    gold_l, pred_l = [list(g) for g in gold], [list(p) for p in pred]
    with warnings.catch_warnings():
        # seqeval warns on types with no predicted/gold chunks; those count as 0, which we want.
        warnings.simplefilter("ignore")
        result = {
            "precision": float(precision_score(gold_l, pred_l)),
            "recall": float(recall_score(gold_l, pred_l)),
            "f1": float(f1_score(gold_l, pred_l)),
        }
        # seqeval's macro average over no entity type at all is NaN; like the micro F1 it is 0 there.
        has_chunks = any(get_entities(tags) for tags in (*gold_l, *pred_l))
        result["macro_f1"] = float(f1_score(gold_l, pred_l, average="macro")) if has_chunks else 0.0
        return result


def evaluate(gold: Tags, pred: Tags, metric: str) -> dict[str, float]:
    """All metrics for a task, with the task's main metric copied to "score" (in percent units
    are left to the reader: values are fractions in [0, 1]).

    metric: "accuracy" (POS, CCG) or "span_f1" (NER).
    """
    result = {"accuracy": token_accuracy(gold, pred)}
    if metric == "span_f1":
        result.update(span_f1(gold, pred))
        result["score"] = result["f1"]
    elif metric == "accuracy":
        result["score"] = result["accuracy"]
    else:
        raise ValueError(f"unknown metric {metric!r}: expected 'accuracy' or 'span_f1'")
    return result


# ---------------------------------------------------------------------------------------------
# Per-instance metrics and search error (Tu & Gimpel 2019)
# ---------------------------------------------------------------------------------------------


def instance_scores(gold: Tags, pred: Tags, metric: str) -> list[float]:
    """Per-sentence metric: token accuracy (gold `*` never correct), or span F1 with conlleval's
    chunks (a sentence with no gold and no predicted chunk scores 1)."""
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but predictions have {len(pred)}")
    out = []
    if metric == "accuracy":
        for g, p in zip(gold, pred):
            out.append(sum(a == b and a != WRONG_TAG for a, b in zip(g, p)) / len(g))
        return out
    if metric != "span_f1":
        raise ValueError(f"unknown metric {metric!r}: expected 'accuracy' or 'span_f1'")
    for g, p in zip(gold, pred):
        gs, ps = set(get_entities(list(g))), set(get_entities(list(p)))
        if not gs and not ps:
            out.append(1.0)
            continue
        correct = len(gs & ps)
        out.append(2.0 * correct / (len(gs) + len(ps)))
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (scipy), NaN when either side is constant or has < 2 points."""
    from scipy.stats import spearmanr  # scipy.stats takes ~1 s to import; most runs never need it

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def search_errors(energy: torch.Tensor, viterbi_energy: torch.Tensor, lengths: torch.Tensor,
                  likelihood: Sequence[float] | None = None) -> dict[str, Any]:
    """E(x, y_method) - E(x, y_Viterbi) per sentence (>= 0 up to rounding for discrete outputs) and
    Spearman's rho with the sentence length (and with a language-model likelihood when given)."""
    errors = (energy - viterbi_energy).tolist()
    result = {"errors": errors, "mean": sum(errors) / max(len(errors), 1), "rho_length": spearman(lengths.tolist(), errors)}
    if likelihood is not None:
        result["rho_likelihood"] = spearman(list(likelihood), errors)
    return result


def beam_search_errors(greedy: Sequence[float], beam: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Search error vs model error of a locally normalised tagger from per-sentence model scores
    s(y) = sum_t log p(y_t | y_<t, x) of the greedy output, the beam's output and the gold sequence
    (core.decoding.sequence_scores: equal sequences have equal scores exactly).

    - beam_minus_greedy: mean of s(y_beam) - s(y_greedy) (what search adds to the model score);
    - beam_better / beam_worse: shares with s(y_beam) > / < s(y_greedy) (beam search is not
      guaranteed to contain the greedy path, so it can lose);
    - search_error: share with s(gold) > s(y_beam): the model prefers gold, the beam missed it;
    - model_error: share with s(gold) < s(y_beam) > -inf: the model prefers a wrong sequence, which
      no better search would fix;
    - beam_is_gold: share with s(gold) == s(y_beam) (beam found gold, or an equally scored sequence);
    - gold_unreachable: share whose gold has a tag never seen in training (s(gold) = -inf);
    - mean_gold_minus_beam: mean of s(gold) - s(y_beam) over the sentences with a reachable gold.
    The four shares from search_error on sum to 1. With exact search (the argmax over all
    sequences) search_error is 0.
    """
    if not len(greedy) == len(beam) == len(gold):
        raise ValueError(f"beam_search_errors: {len(greedy)} greedy, {len(beam)} beam and {len(gold)} gold scores")
    n = len(gold)
    if n == 0:
        raise ValueError("beam_search_errors: no sentences")
    unreachable = [g == float("-inf") for g in gold]
    share = lambda flags: sum(flags) / n  # noqa: E731
    return {
        "sentences": n,
        "beam_minus_greedy": sum(b - g for b, g in zip(beam, greedy)) / n,
        "beam_better": share(b > g for b, g in zip(beam, greedy)),
        "beam_worse": share(b < g for b, g in zip(beam, greedy)),
        "search_error": share(y > b for y, b in zip(gold, beam)),
        "model_error": share(y < b and not u for y, b, u in zip(gold, beam, unreachable)),
        "beam_is_gold": share(y == b for y, b in zip(gold, beam)),
        "gold_unreachable": share(unreachable),
        "mean_gold_minus_beam": _mean_finite(y - b for y, b, u in zip(gold, beam, unreachable) if not u),
    }


def _mean_finite(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def file_tags(tags: Sequence[str], scheme: str = "iob1") -> list[str]:
    """Tags (BIOES, or any scheme span F1 reads) rewritten in IOB1 or IOB2 with exactly the chunks
    `span_f1` counts, including those of invalid predicted sequences (e.g. `I-X` after `O`).

    For files other tools read: the original conlleval script knows IOB1 and IOB2 but not BIOES,
    whose `S-X S-X` it would read as one entity. IOB2 starts every chunk with `B-`; IOB1 (the
    CoNLL-2003 files' own scheme) uses `B-` only for a chunk right after one of the same type.
    """
    if scheme not in ("iob1", "iob2"):
        raise ValueError(f"file_tags: scheme must be 'iob1' or 'iob2', got {scheme!r}")
    out = ["O"] * len(tags)
    prev_end, prev_kind = -2, None
    for kind, start, end in get_entities(list(tags)):  # seqeval's (conlleval's) chunks, in order
        begins = "B" if scheme == "iob2" or (start == prev_end + 1 and kind == prev_kind) else "I"
        out[start] = f"{begins}-{kind}"
        for i in range(start + 1, end + 1):
            out[i] = f"I-{kind}"
        prev_end, prev_kind = end, kind
    return out
