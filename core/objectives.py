"""Training losses: cross-entropy, the soft-beam direct loss and soft hinge (Goyal et al. 2018),
the token loss and the inference-network loss (Tu & Gimpel 2019). The CRF NLL is core.crf's.

Shapes: B sentences, T positions, L labels, S encoder output size.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from core.search.soft_beam import pick_softly, soft_beam_search
from core.seq2seq import Memory, Seq2SeqTagger


def cross_entropy_loss(model: Seq2SeqTagger, memory: Memory, labels: torch.Tensor, feed: str = "gold") -> torch.Tensor:
    """Token-level cross-entropy averaged over real tokens: a scalar.

    memory: (B, T, S), labels: (B, T) with -1 (unseen tag) ignored.
    """
    scores = model.teacher_forced_scores(memory, labels, feed=feed)  # (B, T, L)
    targets = labels.masked_fill(~memory.mask, -1)  # (B, T)
    return F.nll_loss(scores.flatten(0, 1), targets.flatten(), ignore_index=-1)


# A decomposable cost: gold labels (B, T) -> d_t(w) for every position and label, (B, T, V).
Cost = Callable[[torch.Tensor, int], torch.Tensor]


def hamming_cost(gold: torch.Tensor, n_labels: int) -> torch.Tensor:
    """d_t(w) = 1 if w != y*_t else 0. gold: (B, T) with -1 for unseen tags (always wrong) -> (B, T, V)."""
    labels = torch.arange(n_labels, device=gold.device)  # (V,)
    return (gold.unsqueeze(-1) != labels).float()  # (B, T, V)


def hamming_o2_cost(outside_label: int) -> Cost:
    """Goyal et al. §3.1's NER cost: as Hamming, but wrongly predicting `O` (the label id given)
    costs 2, since missing an entity is the error the skewed data invites.

    "incorrect prediction of 'O' is doubly penalized": read as predicting O where gold is an entity
    tag (d_t(O) = 2 if y*_t != O), not as mispredicting a gold O (that d_t(w) stays 1): the paper's
    reason is the skew toward O, and its §4 finds beam search "predicting more 'O's"."""

    def cost(gold: torch.Tensor, n_labels: int) -> torch.Tensor:
        base = hamming_cost(gold, n_labels)  # (B, T, V)
        base[..., outside_label] *= 2.0  # only wrong predictions of O are non-zero there
        return base

    return cost


def direct_loss(
    model: Seq2SeqTagger, memory: Memory, gold: torch.Tensor, beam_size: int, alpha: float, cost: Cost = hamming_cost
) -> torch.Tensor:
    """G~_DL,alpha (Eq. 2, Alg. 3 line 19) per sentence: (B,). gold: (B, T)."""
    table = cost(gold, model.n_labels).to(memory.states.dtype) * memory.mask.unsqueeze(-1)  # (B, T, V)
    result = soft_beam_search(model, memory, beam_size, alpha, cost_table=table)
    return pick_softly(result.costs, result.scores, alpha)


def soft_hinge_loss(
    model: Seq2SeqTagger, memory: Memory, gold: torch.Tensor, beam_size: int, alpha: float, cost: Cost = hamming_cost
) -> torch.Tensor:
    """G~_hinge,alpha (§2.5) per sentence: max(0, s_max - s(y*)), (B,), where s_max is the soft
    beam's cost-augmented best score and s(y*) the gold sequence's score. gold: (B, T)."""
    table = cost(gold, model.n_labels).to(memory.states.dtype) * memory.mask.unsqueeze(-1)  # (B, T, V)
    result = soft_beam_search(model, memory, beam_size, alpha, cost_table=table, cost_augmented=True)
    s_max = pick_softly(result.scores, result.scores, alpha)  # (B,)
    gold_score = model.sequence_score(memory, gold)  # (B,)
    return torch.relu(s_max - gold_score)


# -- Tu & Gimpel (2019): token and inference-network losses (the CRF NLL is core.crf.crf_nll) ---


def token_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """l_token (Tu & Gimpel Eq. 2) per sentence: sum_t CE(y_t, softmax(logits_t)), (B,).

    logits: (B, T, L), labels: (B, T) with -1 (unseen tag) ignored, mask: (B, T) bool. For the
    seq2seq network the logits are its log-probabilities fed its own predictions (§4.1.3)."""
    targets = labels.masked_fill(~mask, -1)  # (B, T)
    ce = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-1, reduction="none")  # (B, T)
    return ce.sum(dim=1)


def infnet_loss(
    crf, unary: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, lam: float
) -> torch.Tensor:
    """E_Theta(x, A_Psi(x)) + lam * l_token(y, A_Psi(x)) per sentence, (B,), with the energy fixed:
    no gradient reaches `unary` (B, T, L) or the CRF's transition/start/end scores, only the
    inference network's `logits` (B, T, L). crf: a core.crf.LinearChainCRF. lam = 0 gives the
    pure energy; a local baseline uses `token_loss` alone."""
    from core.crf import crf_energy

    probs = logits.softmax(dim=-1)  # (B, T, L)
    energy = crf_energy(unary.detach(), crf.transitions.detach(), crf.start.detach(), crf.end.detach(), probs, mask)  # (B,)
    if lam == 0:
        return energy
    return energy + lam * token_loss(logits, labels, mask)
