"""Continuous relaxation of beam search (Goyal et al. 2018, §2.2-2.5, Algorithms 2 and 3).

Beam search picks, at every position, the k best (beam entry, label) candidates: a discrete
top-k-argmax. Algorithm 2 replaces it with k peaked softmaxes, one per rank i, each concentrated
on the candidates whose score is closest to the i-th highest score m_i:

    p_i = softmax_alpha(-(s~ - m_i)^2)        over all k_old x V candidates

Algorithm 3 runs beam search with those soft choices: every new beam entry mixes the previous
entries' decoder states by its soft backpointer (row sums of p_i) and is fed the soft label
embedding a_i^T E (column sums of p_i); scores and cumulative costs mix the same way. The final
loss picks, softly, the cost of the best-scoring entry: L = softmax_alpha(s_T) . D_T. As alpha
grows, every soft choice becomes the hard one and L becomes the Hamming loss of the beam output.

Like hard beam search (core/search/beam.py), position 0 expands only the single start hypothesis,
so the first beam holds k *distinct* labels. A sentence that has ended is frozen (its scores,
costs and states stop changing) while longer sentences of the batch continue.

Shapes: B sentences, T positions, V labels, k beam size, j the previous beam (k_old = 1 at t = 0,
else k), H decoder hidden size, E label-embedding size.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from core.seq2seq import DecoderState, Memory, Seq2SeqTagger

def continuous_top_k_argmax(scores: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """Algorithm 2, batched: scores (B, n) -> p (B, k, n), each p[:, i] a distribution over the n
    candidates peaked at the i-th highest score.

    softmax handles the log-sum-exp shift, and the exponent is <= 0 with the largest entry exactly
    0 at each row's own top-i candidate, so no alpha (0.1 ... 1e6+) overflows.
    """
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k must be in [1, {scores.shape[-1]}] (number of candidates), got {k}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    m = scores.topk(k, dim=-1).values  # (B, k): top-k-max
    distance = (scores.unsqueeze(1) - m.unsqueeze(2)) ** 2  # (B, k, n)
    return torch.softmax(-alpha * distance, dim=-1)  # (B, k, n)


class SoftBeamResult(NamedTuple):
    scores: torch.Tensor  # (B, k) soft beam scores s_T
    costs: torch.Tensor  # (B, k) cumulative soft costs D_T (zeros when no cost was given)
    labels: torch.Tensor  # (B, T) long: sequence found by following hard backpointers (§2.4)


def soft_beam_search(
    model: Seq2SeqTagger,
    memory: Memory,
    beam_size: int,
    alpha: float,
    cost_table: torch.Tensor | None = None,
    cost_augmented: bool = False,
) -> SoftBeamResult:
    """Algorithm 3 over a batch; differentiable with respect to the model.

    memory: (B, T, S) states with (B, T) mask; cost_table: (B, T, V) d_t(w) or None.
    cost_augmented: add d_t(w) to the candidate scores (the hinge loss of §2.5) instead of
    accumulating it into D.
    """
    B, T = memory.mask.shape
    V, k = model.n_labels, beam_size
    if not 1 <= k <= V:
        raise ValueError(f"soft beam search needs 1 <= beam_size <= number of labels ({V}), got {k}")
    if cost_augmented and cost_table is None:
        raise ValueError("cost_augmented=True needs a cost_table")
    device, dtype = memory.states.device, memory.states.dtype
    lengths = memory.mask.sum(dim=1)  # (B,)
    label_matrix = model.label_embedding.weight[:V]  # (V, E): E in Alg. 3

    # Position 0: one live hypothesis per sentence (k_old = 1).
    k_old = 1
    rows = memory  # (B*k_old, T, S)
    state = model.initial_state(B, device)  # (B, H) each
    prev = model.start_embedding(B)  # (B, E)
    beam_scores = torch.zeros(B, 1, device=device, dtype=dtype)  # s_t: (B, k_old)
    beam_costs = torch.zeros(B, 1, device=device, dtype=dtype)  # D_t: (B, k_old)
    back_hard = torch.zeros(T, B, k, dtype=torch.long, device=device)
    label_hard = torch.zeros(T, B, k, dtype=torch.long, device=device)
    beam_memory = memory.repeat_beams(k)  # (B*k, T, S), used from t = 1 on

    for t in range(T):
        state, log_probs = model.step(state, prev, t, rows)  # h_t: (B*k_old, H); f: (B*k_old, V)
        f = log_probs.view(B, k_old, V)  # (B, k_old, V)
        d = cost_table[:, t].unsqueeze(1) if cost_table is not None else None  # (B, 1, V)
        candidates = beam_scores.unsqueeze(-1) + f  # (B, k_old, V): s~_t[j, w] = s_t,j + f(h_t,j, w)
        if cost_augmented:
            candidates = candidates + d  # line 5 of Alg. 3, modified as in §2.5
        p = continuous_top_k_argmax(candidates.reshape(B, k_old * V), k, alpha).view(B, k, k_old, V)
        soft_back = p.sum(dim=-1)  # (B, k, k_old): b~_i = row sums of p_i
        contrib = p.sum(dim=2)  # (B, k, V): a_i = column sums of p_i
        new_scores = (p * candidates.unsqueeze(1)).sum(dim=(-1, -2))  # (B, k): sum(s~_t * p_i)
        new_costs = soft_back @ beam_costs.unsqueeze(-1)  # (B, k, 1): sum_j b~_i[j] D_t,j
        if d is not None and not cost_augmented:
            new_costs = new_costs + contrib @ d.transpose(1, 2)  # + a_i . D~_t
        new_costs = new_costs.squeeze(-1)  # (B, k)
        # Mix the decoder states by the soft backpointers (both h and c of the LSTM).
        h = soft_back @ state.h.view(B, k_old, -1)  # (B, k, H)
        c = soft_back @ state.c.view(B, k_old, -1)  # (B, k, H)
        prev = (contrib @ label_matrix).view(B * k, -1)  # (B*k, E): e_{t+1,i} = a_i^T E
        # Hard backpointers and labels (the MAP of each p_i), for soft beam decoding.
        flat_best = p.view(B, k, k_old * V).argmax(dim=-1)  # (B, k)
        back, label = flat_best // V, flat_best % V

        if t == 0:
            beam_scores, beam_costs = new_scores, new_costs
        else:  # a finished sentence keeps its scores, costs and entry order; its states no longer matter
            live = (t < lengths).unsqueeze(1)  # (B, 1)
            beam_scores = torch.where(live, new_scores, beam_scores)
            beam_costs = torch.where(live, new_costs, beam_costs)
            back = torch.where(live, back, torch.arange(k, device=device))
        back_hard[t], label_hard[t] = back, label
        state = DecoderState(h.reshape(B * k, -1), c.reshape(B * k, -1))
        k_old, rows = k, beam_memory

    # Follow the hard backpointers from the entry with the highest soft score.
    labels = torch.zeros(B, T, dtype=torch.long, device=device)
    entry = beam_scores.argmax(dim=-1, keepdim=True)  # (B, 1)
    for t in range(T - 1, -1, -1):
        labels[:, t : t + 1] = label_hard[t].gather(1, entry)
        entry = back_hard[t].gather(1, entry)
    labels = labels * memory.mask  # positions past each length -> 0
    return SoftBeamResult(beam_scores, beam_costs, labels)


def pick_softly(values: torch.Tensor, scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """softmax_alpha(s_T) . values: the value of the best-scoring beam entry, softly. (B, k) -> (B,)."""
    return (torch.softmax(alpha * scores, dim=-1) * values).sum(dim=-1)
