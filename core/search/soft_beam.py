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

import math
from typing import NamedTuple

import torch

from torch.autograd.function import once_differentiable

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


def _peaked_softmax(candidates: torch.Tensor, m: torch.Tensor, alpha: float) -> torch.Tensor:
    """p_i = softmax(-alpha (s~ - m_i)^2): candidates (B, n), m (B, k) -> (B, k, n), no autograd.
    torch.softmax, not exp and a division: its kernel is ~10x faster here than torch.exp, which
    slows down on the many results that underflow to denormals or zero."""
    z = candidates.unsqueeze(1) - m.unsqueeze(2)  # (B, k, n): s~ - m_i
    return torch.softmax(z.square_().mul_(-alpha), dim=-1)  # (B, k, n)


def underflow_exponent(dtype: torch.dtype) -> float:
    """C with exp(-C) below half the smallest subnormal of dtype, plus a margin of 2 for exp's
    rounding: a softmax term exp(z) with z <= -C is exactly 0 in that dtype (float32: 105.3,
    float64: 746.4)."""
    info = torch.finfo(dtype)
    return -math.log(info.tiny * info.eps) + 2.0


def _gather_survivors(candidates, keep, counts, K, pad):
    """Pack each row's surviving candidates to the front of a (B, K) tensor, in order:
    candidates (B, n), keep (B, n) bool, counts (B,) = keep.sum(-1), K = counts.max(), pad (B, 1)
    -> values (B, K), index (B, K) long. Rows with fewer than K survivors are padded with value
    `pad` (far enough below m_k that every p_i is exactly 0 there too) and index 0.
    (A cumulative count and one nonzero: ~5x cheaper here than topk(K) over the n candidates.)"""
    B = candidates.shape[0]
    rows, cols = keep.nonzero(as_tuple=True)  # (S,) each, row-major
    slot = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]  # (S,) place in its row
    values = pad.expand(B, K).clone()  # (B, K)
    values[rows, slot] = candidates[rows, cols]
    index = torch.zeros(B, K, dtype=torch.long, device=rows.device)  # (B, K)
    index[rows, slot] = cols
    return values, index


SPARSE_FRACTION = 0.25  # gather the surviving candidates when at most this share of n survives
# Devices whose survivor count is read on the host for free (tensors in host memory). Elsewhere
# reading it would stall the device at every step, so the exact dense path runs instead.
SPARSE_DEVICES = ("cpu",)


class SoftTopKMix(torch.autograd.Function):
    """Algorithm 2 and the reductions Algorithm 3 takes of it, fused, for one step of the search.

    candidates s~ (B, n) with n = k_old x V (row-major: entry j, label w) ->
        back   (B, k, k_old)  b~_i[j] = sum_w p_i[j, w]       (soft backpointers)
        contrib (B, k, V)     a_i[w]  = sum_j p_i[j, w]       (soft labels)
        scores (B, k)         sum_{j,w} p_i[j, w] s~[j, w]    (new soft beam scores)
        top    (B, k) long    the i-th top-k candidate, the MAP of p_i (argmax of -(s~ - m_i)^2)
    where p_i = softmax_alpha(-(s~ - m_i)^2) as in `continuous_top_k_argmax`.

    The (B, k, n) tensor p is built once and reduced at once; autograd sees one node, which saves
    s~, m and p instead of the unfused graph's five (B, k, n) tensors (rebuilding p in backward
    halved the memory again but doubled the node's time). The exponent -alpha (s~ - m_i)^2 is <= 0
    and exactly 0 at the top-i candidate, so the softmax's normaliser is >= 1: no alpha overflows.

    Exact sparsity: a candidate with s~ < m_k - sqrt(C / alpha), C = `underflow_exponent`, has
    alpha (s~ - m_i)^2 > C for every i (m_i >= m_k), so every p_i is exactly 0 there in the dense
    float computation, and so is its gradient. When at most SPARSE_FRACTION of the n candidates
    survive in every sentence (a peaked model, or alpha >> 1), only the K survivors are gathered and
    all (B, k, n) work shrinks to (B, k, K); the outputs equal the dense ones up to summation order
    (a warm-started CCG tagger: K ~ 45 of 3,858 at alpha = 10, ~ 2,000 at alpha = 1).

    Backward: with gp_i[j, w] = gb_i[j] + gc_i[w] + gs_i s~[j, w] (the gradient reaching p_i) and
    r_i = sum p_i gp_i = b~_i . gb_i + a_i . gc_i + scores_i gs_i (from the outputs, no pass over n),
        gz_i = p_i (gp_i - r_i)                        (softmax backward)
        ds~  = sum_i gs_i p_i - 2 alpha sum_i gz_i (s~ - m_i)
        dm_i = 2 alpha sum_n gz_i (s~ - m_i)          (added to s~ at the i-th top-k index)
    which is the unfused graph's gradient up to float rounding (tests/test_soft_beam.py).
    """

    @staticmethod
    def forward(ctx, candidates: torch.Tensor, k: int, k_old: int, alpha: float):
        B, n = candidates.shape
        V = n // k_old
        m, top = candidates.topk(k, dim=-1)  # (B, k) values m_i and indices
        radius = math.sqrt(underflow_exponent(candidates.dtype) / alpha)
        keep = candidates >= m[:, -1:] - radius  # (B, n): survivors
        counts = keep.sum(dim=-1)  # (B,)
        # Reading K is a host sync on a GPU, once per step: there the dense path runs (no sync).
        K = int(counts.max()) if candidates.device.type in SPARSE_DEVICES else n  # survivors in the fullest row
        if K <= SPARSE_FRACTION * n:
            values, index = _gather_survivors(candidates, keep, counts, K, m[:, -1:] - 2 * radius)  # (B, K)
        else:
            values, index = candidates, None  # (B, n)
        p = _peaked_softmax(values, m, alpha)  # (B, k, K or n): p_i
        if index is None:
            p4 = p.view(B, k, k_old, V)  # (B, k, k_old, V)
            back = p4.sum(dim=-1)  # (B, k, k_old)
            contrib = p4.sum(dim=2)  # (B, k, V)
        else:  # padding slots add p = 0 at index 0
            entry, label = (index // V).unsqueeze(1).expand_as(p), (index % V).unsqueeze(1).expand_as(p)  # (B, k, K)
            back = p.new_zeros(B, k, k_old).scatter_add_(2, entry, p)  # (B, k, k_old)
            contrib = p.new_zeros(B, k, V).scatter_add_(2, label, p)  # (B, k, V)
        scores = (p * values.unsqueeze(1)).sum(dim=-1)  # (B, k)
        ctx.save_for_backward(values, index, m, top, back, contrib, scores, p)
        ctx.k_old, ctx.alpha, ctx.n = k_old, alpha, n
        ctx.mark_non_differentiable(top)
        return back, contrib, scores, top

    @staticmethod
    @once_differentiable
    def backward(ctx, g_back, g_contrib, g_scores, _g_top):
        values, index, m, top, back, contrib, scores, p = ctx.saved_tensors
        k_old, alpha, n = ctx.k_old, ctx.alpha, ctx.n
        B, k, V = contrib.shape
        g_back = torch.zeros_like(back) if g_back is None else g_back  # (B, k, k_old)
        g_contrib = torch.zeros_like(contrib) if g_contrib is None else g_contrib  # (B, k, V)
        g_scores = torch.zeros_like(scores) if g_scores is None else g_scores  # (B, k)
        r = (back * g_back).sum(-1) + (contrib * g_contrib).sum(-1) + scores * g_scores  # (B, k)
        gz = g_scores.unsqueeze(-1) * values.unsqueeze(1)  # (B, k, K or n): gs_i s~
        if index is None:
            gz4 = gz.view(B, k, k_old, V)  # (B, k, k_old, V)
            gz4 += g_back.unsqueeze(-1)
            gz4 += g_contrib.unsqueeze(2)
        else:
            gz += g_back.gather(2, (index // V).unsqueeze(1).expand_as(p))  # gb_i[j] of each survivor
            gz += g_contrib.gather(2, (index % V).unsqueeze(1).expand_as(p))  # gc_i[w] of each survivor
        gz -= r.unsqueeze(-1)
        gz *= p  # (B, k, K or n): gz_i
        g_values = (g_scores.unsqueeze(-1) * p).sum(dim=1)  # (B, K or n): sum_i gs_i p_i
        gz *= values.unsqueeze(1) - m.unsqueeze(2)  # (B, k, K or n): gz_i (s~ - m_i)
        g_values.add_(gz.sum(dim=1), alpha=-2.0 * alpha)  # (B, K or n)
        # scatter_add: padding slots point at index 0 with a gradient of exactly 0
        g_candidates = g_values if index is None else g_values.new_zeros(B, n).scatter_add_(1, index, g_values)  # (B, n)
        g_candidates.scatter_add_(1, top, gz.sum(dim=-1).mul_(2.0 * alpha))  # dm_i onto s~[top_i]
        return g_candidates, None, None, None


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
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if cost_augmented and cost_table is None:
        raise ValueError("cost_augmented=True needs a cost_table")
    device, dtype = memory.states.device, memory.states.dtype
    lengths = memory.mask.sum(dim=1)  # (B,)
    label_matrix = model.label_embedding.weight[:V]  # (V, E): E in Alg. 3

    # Position 0: one live hypothesis per sentence (k_old = 1).
    k_old = 1
    cache = model.step_cache(memory)  # shared W_s s_t + b (fixed attention), else None
    rows = memory  # (B*k_old, T, S), read only without a cache
    state = model.initial_state(B, device)  # (B, H) each
    prev = model.start_embedding(B)  # (B, E)
    beam_scores = torch.zeros(B, 1, device=device, dtype=dtype)  # s_t: (B, k_old)
    beam_costs = torch.zeros(B, 1, device=device, dtype=dtype)  # D_t: (B, k_old)
    back_hard = torch.zeros(T, B, k, dtype=torch.long, device=device)
    label_hard = torch.zeros(T, B, k, dtype=torch.long, device=device)
    beam_memory = memory if cache is not None else memory.repeat_beams(k)  # (B*k, T, S) from t = 1 on

    for t in range(T):
        state, log_probs = model.step(state, prev, t, rows, cache)  # h_t: (B*k_old, H); f: (B*k_old, V)
        f = log_probs.view(B, k_old, V)  # (B, k_old, V)
        d = cost_table[:, t].unsqueeze(1) if cost_table is not None else None  # (B, 1, V)
        candidates = beam_scores.unsqueeze(-1) + f  # (B, k_old, V): s~_t[j, w] = s_t,j + f(h_t,j, w)
        if cost_augmented:
            candidates = candidates + d  # line 5 of Alg. 3, modified as in §2.5
        # b~_i (B, k, k_old), a_i (B, k, V), sum(s~_t * p_i) (B, k), MAP of p_i (B, k)
        soft_back, contrib, new_scores, flat_best = SoftTopKMix.apply(candidates.view(B, k_old * V), k, k_old, alpha)
        # One bmm mixes, by the soft backpointers, the decoder states h and c and the costs D_t.
        entries = torch.cat([state.h.view(B, k_old, -1), state.c.view(B, k_old, -1), beam_costs.unsqueeze(-1)], dim=-1)
        mixed = soft_back @ entries  # (B, k, 2H+1): sum_j b~_i[j] [h_j; c_j; D_t,j]
        h, c, new_costs = mixed.split([state.h.shape[-1], state.c.shape[-1], 1], dim=-1)  # (B, k, H), (B, k, H), (B, k, 1)
        if d is not None and not cost_augmented:
            new_costs = new_costs + (contrib * d).sum(dim=-1, keepdim=True)  # + a_i . D~_t (not a slow matrix-vector bmm)
        new_costs = new_costs.squeeze(-1)  # (B, k)
        prev = (contrib @ label_matrix).view(B * k, -1)  # (B*k, E): e_{t+1,i} = a_i^T E
        back, label = flat_best // V, flat_best % V  # hard backpointers and labels, for decoding

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
