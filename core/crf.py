"""Linear-chain CRF energies of Tu & Gimpel (2019, §2), exact inference, and the BLSTM-CRF(+).

The energy of a labelling y of a sentence x (lower is better) is

    E(x, y) = -( sum_t sum_i y_{t,i} U_{t,i}  +  sum_t y_{t-1}^T W y_t  +  s^T y_first  +  e^T y_last )

where U (B, T, L) are the unary scores u_i^T f(x, t) from a feature network, W (L, L) the transition
matrix (W[i, j]: label i followed by label j), and s, e (L,) start/end scores as in pytorch-crf.
y is either discrete (labels (B, T) long) or relaxed (distributions (B, T, L) float, e.g. one-hot,
a softmax of logits, an inference network's output); the formula is the same for both, so the
relaxed energy at one-hot inputs equals the discrete one. -E is pytorch-crf's sequence score.

Masks: any boolean mask (B, T) is valid. A sentence is the subsequence of its on-positions, in
order: prefix masks (the usual `lengths`), rows with no tokens (E = log Z = 0), and on-positions
that do not start at t = 0 are all handled by the same code. Off positions carry the recursion
through unchanged (Viterbi backpointers there are the identity), so no per-sample Python loops or
per-step host syncs (`.item()`, data-dependent branches) happen in log Z, Viterbi or the energy;
the one sync per call is at the boundary (the label range check, log Z's range check).

log Z runs the forward algorithm in probability space (`method="matmul"`, the default): alpha is
rescaled to sum to one every second step, with its log scale apart, and one step is a BLAS GEMM
with exp(W - M) (M: the largest transition, start or end score) plus a few elementwise ops,
instead of a (B, L, L) log-sum-exp; masks are folded into per-position factors before the loop,
and the backward pass is GEMMs too.
`method="logsumexp"` is the plain log-space recursion. `method="scan"` is the log-depth parallel
scan of torch-struct (O(L^3 log T) work, O(log T) sequential steps), which pays off on a GPU for
small L and long sentences. Every method is exact (to the rounding of adding up the scores in
their dtype) for all finite scores, and so are its gradients: the two probability-space methods
check first (one min/max reduction and one host sync) that the transition, start and end scores
together span at most `exact_span` nats (max - min over all three; float32: ~20 for matmul, ~60
for scan, at T = 30, L = 17; trained CRFs here span ~6), and hand over to the logsumexp
recursion otherwise (hard constraints such as -1e4 or -inf, NaN). Unary scores may span
anything.

Shapes: B sentences, T positions, L labels, H hidden units per LSTM direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from core.encoders import BiLSTMEncoder, check_char_activation
from core.checkpoint import JsonConfig


class ViterbiResult(NamedTuple):
    labels: torch.Tensor  # (B, T) long, 0 at off positions
    scores: torch.Tensor  # (B,) best sequence score = -energy of `labels`


# ---------------------------------------------------------------------------------------------
# Input checks (shapes and dtypes only: no host syncs)
# ---------------------------------------------------------------------------------------------


def _check_unary(unary: torch.Tensor, transitions: torch.Tensor) -> None:
    if unary.dim() != 3:
        raise ValueError(f"unary must have 3 dimensions (B, T, L), got {unary.dim()} with shape {tuple(unary.shape)}")
    if not unary.is_floating_point():
        raise ValueError(f"unary must be a floating-point tensor, got {unary.dtype}")
    L = transitions.shape[0]
    if transitions.shape != (L, L):
        raise ValueError(f"transitions must be square (L, L), got {tuple(transitions.shape)}")
    if unary.shape[2] != L:
        raise ValueError(f"expected last dimension of unary to be {L} (the number of labels), got {unary.shape[2]}")


def _check_mask(mask: torch.Tensor, unary: torch.Tensor) -> torch.Tensor:
    if mask.shape != unary.shape[:2]:
        raise ValueError(
            f"the first two dimensions of unary and mask must match, got {tuple(unary.shape[:2])} and {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.is_floating_point():
            raise ValueError(f"mask must be bool or integer 0/1, got {mask.dtype}")
        mask = mask != 0
    return mask


def _check_ends(start: torch.Tensor, end: torch.Tensor, L: int) -> None:
    for name, t in (("start", start), ("end", end)):
        if t.shape != (L,):
            raise ValueError(f"{name} scores must have shape ({L},), got {tuple(t.shape)}")


def _check_labels(labels: torch.Tensor, unary: torch.Tensor) -> None:
    if labels.is_floating_point():
        if labels.shape != unary.shape:
            raise ValueError(
                f"relaxed labels must have the shape of unary {tuple(unary.shape)}, got {tuple(labels.shape)}"
            )
    else:
        if labels.shape != unary.shape[:2]:
            raise ValueError(
                f"the first two dimensions of unary and labels must match, got {tuple(unary.shape[:2])} and {tuple(labels.shape)}"
            )


# ---------------------------------------------------------------------------------------------
# Energy (discrete and relaxed)
# ---------------------------------------------------------------------------------------------


def _neighbours(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For an arbitrary mask (B, T): index of the previous on-position of each position (clamped
    to 0), whether it exists, and which positions are the first / last on-positions."""
    B, T = mask.shape
    positions = torch.arange(1, T + 1, device=mask.device).expand(B, T)  # (B, T), 1-based
    last_on_upto = (positions * mask).cummax(dim=1).values  # (B, T): 1-based last on-position <= t, 0 if none
    prev = torch.cat([last_on_upto.new_zeros(B, 1), last_on_upto[:, :-1]], dim=1)  # (B, T): last on < t
    has_prev = prev > 0  # (B, T)
    first = mask & ~has_prev  # (B, T)
    on_after = mask.flip(1).cumsum(dim=1).flip(1) - mask.long()  # (B, T): on-positions after t
    last = mask & (on_after == 0)  # (B, T)
    return (prev - 1).clamp(min=0), has_prev, first, last


def crf_score(
    unary: torch.Tensor,
    transitions: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Sequence score -E(x, y) (B,) of discrete labels (B, T) long or relaxed labels (B, T, L)."""
    _check_unary(unary, transitions)
    mask = _check_mask(mask, unary)
    _check_ends(start, end, transitions.shape[0])
    _check_labels(labels, unary)
    L = transitions.shape[0]
    if unary.shape[1] == 0:
        return unary.new_zeros(unary.shape[0])
    if not labels.is_floating_point():
        bad = ((labels < 0) | (labels >= L)) & mask  # (B, T)
        if bool(bad.any()):  # one check at the API boundary, not in a hot loop
            raise ValueError(f"labels must lie in [0, {L}) at every on-position (unseen tags are -1: drop or map them first)")
        y = torch.nn.functional.one_hot(labels.clamp(0, L - 1), L).to(unary.dtype)  # (B, T, L)
    else:
        y = labels  # (B, T, L)
    maskf = mask.to(unary.dtype)  # (B, T)
    prev_idx, has_prev, first, last = _neighbours(mask)
    unary_term = (y * unary).sum(dim=2)  # (B, T)
    y_prev = y.gather(1, prev_idx.unsqueeze(-1).expand(-1, -1, L))  # (B, T, L): y at the previous on-position
    pair_term = ((y_prev @ transitions) * y).sum(dim=2)  # (B, T)
    pair_term = pair_term * (mask & has_prev).to(unary.dtype)  # (B, T)
    start_term = (y @ start) * first.to(unary.dtype)  # (B, T)
    end_term = (y @ end) * last.to(unary.dtype)  # (B, T)
    return (unary_term * maskf + pair_term + start_term + end_term).sum(dim=1)  # (B,)


def crf_energy(unary, transitions, start, end, labels, mask) -> torch.Tensor:
    """Energy E(x, y) = -score (B,), for discrete (B, T) or relaxed (B, T, L) labels."""
    return -crf_score(unary, transitions, start, end, labels, mask)


# ---------------------------------------------------------------------------------------------
# log Z: the forward algorithm
# ---------------------------------------------------------------------------------------------


def _without_autograd():
    """torch.inference_mode, which also skips autograd's view and version bookkeeping; plain
    no_grad while torch.compile traces (inference tensors cannot pass through its graphs)."""
    return torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode()


def _left_align(unary: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each row's on-positions to the front, in order (one stable sort and one gather), so
    the recursions below only ever see prefix masks.

    -> time-major unary (T, B, L), time-major prefix mask (T, B), lengths (B,), and the order
    (B, T) such that aligned position k holds original position order[b, k]."""
    B, T, L = unary.shape
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # (B, T)
    aligned = unary.gather(1, order.unsqueeze(-1).expand(B, T, L))  # (B, T, L)
    lengths = mask.sum(dim=1)  # (B,)
    prefix = torch.arange(T, device=mask.device).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
    return aligned.transpose(0, 1).contiguous(), prefix, lengths, order


def _forward_logsumexp(unary, transitions, start, end, mask) -> torch.Tensor:
    """The forward recursion in log space, exact for all finite scores. -inf scores (forbidden
    transitions) are clamped to the dtype's lowest finite value first: the same log Z, but
    logsumexp's backward never sees an all -inf column (exp(-inf - -inf) = NaN), so gradients
    stay finite (0 for forbidden entries)."""
    lowest = torch.finfo(unary.dtype).min
    unary, transitions, start, end = (x.clamp_min(lowest) for x in (unary, transitions, start, end))
    U, on, lengths, _ = _left_align(unary, mask)  # (T, B, L), (T, B), (B,)
    alpha = start + U[0]  # (B, L)
    for t in range(1, U.shape[0]):
        step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + U[t]  # (B, L)
        alpha = torch.where(on[t].unsqueeze(1), step, alpha)  # (B, L)
    log_z = torch.logsumexp(alpha + end, dim=1)  # (B,)
    return torch.where(lengths > 0, log_z, torch.zeros_like(log_z))  # empty rows: Z = 1


def exact_span(dtype: torch.dtype, T: int, L: int, steps_per_rescale: int) -> float:
    """The widest joint span (max - min, nats) of the transition, start and end scores for which a
    probability-space recursion is exact (relative error of Z at most eps):

        (log(eps / tiny) - log(4 T L^2)) / (steps_per_rescale + 1)

    (eps, tiny of the dtype). Derivation in `_forward_matmul`; at T = 30, L = 17 this is 20.3
    nats for float32 and 220 for float64 with steps_per_rescale = 2 (matmul), and 60.9 / 662 with
    steps_per_rescale = 0 (one rescaled product per scan node)."""
    finfo = torch.finfo(dtype)
    return (math.log(finfo.eps / finfo.tiny) - math.log(4 * max(T, 1) * L * L)) / (steps_per_rescale + 1)


def _max_and_span(transitions, start, end) -> tuple[torch.Tensor, float]:
    """The largest of the transition, start and end scores (a 0-dim tensor, no gradient) and their
    joint span, max - min over all three (a Python float: one host sync). A NaN or an infinite
    score makes the span NaN or inf: the range checks then fail."""
    low, high = torch.aminmax(torch.cat([transitions.reshape(-1), start, end]).detach())  # (), ()
    return high, float(high - low)


def _forward_matmul(unary, transitions, start, end, mask) -> torch.Tensor:
    """The forward algorithm in probability space: per position one GEMM and two elementwise ops,
    plus a normalisation (a sum and a division) every second position; `_forward_logsumexp`
    where the scores are out of its exact range (checked first, one host sync).

    p (B, L) is alpha scaled to sum to one at each normalisation; the log scale is kept apart (the
    sums c and the shifts M = max(W, s, e), u_t = max_j U_t[j]). One step is
    q = p * A_t + (p @ exp(W - M)) * C_t, where the (T, B, L) factors are built before the loop
    from the mask:
      inner on-position (an earlier one exists):  A = 0,             C = exp(U_t - u_t)
      first on-position:                          A = exp(U_t - u_t), C = 0   (p starts as exp(s - M))
      off position:                               A = 1,             C = 0   (p carries over)
    so any mask runs with no `where` or alignment in the loop.

    Exactness. Let S be the joint span (max - min) of W, s and e. exp(U_t - u_t) is 1 at its
    argmax, and every entry of exp(W - M), exp(s - M) and exp(e - M) lies in [exp(-S), 1], so one
    step keeps sum(q) >= exp(-S) sum(p), and a block between normalisations exp(-2 S). Unary
    spans do not matter: exp(U_t - u_t) may underflow, but only below tiny times a surviving entry.
    Underflow and subnormal rounding change each entry by at most ~L tiny sum(p) per step, i.e. by
    L tiny exp(2 S) relative to the normalised mass; an entry's weight in Z (its future: the next
    transition or the end score) is at most exp(S) times any other entry's, so each perturbation
    moves Z by at most L tiny exp(3 S) relative, and all T L of them by at most 4 T L^2 tiny
    exp(3 S) <= eps when S <= `exact_span(dtype, T, L, 2)` (float32: 20.3 nats at T = 30, L = 17;
    18.2 at L = 400; float64: ~220). Trained CRFs here span ~6. Beyond that (hard constraints,
    -1e4 or -inf; NaN) the recursion is not used: log Z comes from `_forward_logsumexp`, exact for
    all finite scores, at about pytorch-crf's speed (3-6x this recursion's time at L = 17, ~150x
    at L = 400; benchmarks/RESULTS.md, issue 11). Without the check, a worst case
    (tests/test_crf_exact.py) is 22 nats off at S = 45. Normalising every step instead would
    allow ~30 nats (float32), at 25% more time per step at L = 17."""
    B, T, L = unary.shape
    dtype = unary.dtype
    M, span = _max_and_span(transitions, start, end)  # (), float
    if not span <= exact_span(dtype, T, L, steps_per_rescale=2):
        return _forward_logsumexp(unary, transitions, start, end, mask)
    count = mask.cumsum(dim=1)  # (B, T): on-positions up to and including t
    on = mask.t().unsqueeze(2)  # (T, B, 1)
    count_t = count.t().unsqueeze(2)  # (T, B, 1)
    first = on & (count_t == 1)  # (T, B, 1)
    inner = on & (count_t > 1)  # (T, B, 1)
    u = unary.detach().amax(dim=2, keepdim=True)  # (B, T, 1): per-position shift keeps exp(U - u) in (0, 1]
    expU = (unary - u).exp_().transpose(0, 1)  # (T, B, L)
    A = torch.addcmul((~on).to(dtype), expU, first)  # (T, B, L): off 1, first exp(U - u), inner 0
    C = expU * inner  # (T, B, L)
    expW = (transitions - M).exp()  # (L, L)
    p = (start - M).exp().expand(B, L)  # (B, L)
    sums = []
    for t in range(T):
        p = torch.addcmul(p * A[t], torch.mm(p, expW), C[t])  # (B, L)
        if t % 2 == 1 or t == T - 1:  # normalising every second step halves that cost
            c = p.sum(dim=1, keepdim=True)  # (B, 1)
            p = p / c  # (B, L)
            sums.append(c)
    n = count[:, -1]  # (B,): sentence lengths
    shift = (u.squeeze(2) * mask).sum(dim=1) + M * (n + 1).to(dtype)  # (B,): u_t per token, M per score
    log_z = torch.cat(sums, dim=1).log().sum(dim=1) + shift + (p @ (end - M).exp()).log()  # (B,)
    return log_z * (n > 0)  # empty rows: Z = 1 (their p is exp(s - M) carried over: finite)


def _log_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Log-semiring product of batched matrices: a (..., L, L), b (..., L, L) -> (..., L, L), as a
    rescaled probability-space bmm (rows of a and columns of b shifted by their max). Entry
    (i, j) is exact up to an absolute (L + 1) tiny exp(max a[i, :] + max b[:, j]): see
    `_forward_scan` for when that is negligible."""
    lowest = torch.finfo(a.dtype).min
    am = a.amax(dim=-1, keepdim=True).clamp_min(lowest)  # (..., L, 1); all -inf rows stay -inf below
    bm = b.amax(dim=-2, keepdim=True).clamp_min(lowest)  # (..., 1, L)
    prod = (a - am).exp() @ (b - bm).exp()  # (..., L, L)
    return prod.clamp_min(torch.finfo(a.dtype).tiny).log() + am + bm


def _forward_scan(unary, transitions, start, end, mask) -> torch.Tensor:
    """Log-depth parallel scan: one (L, L) potential per position, multiplied in a balanced tree;
    `_forward_logsumexp` when the scores are out of its exact range (checked first, one sync).

    Position t's potential is Phi_t[i, j] = W[i, j] + U_t[j] after the first on-position,
    Phi[i, j] = s[j] + U_t[j] (any i) at it, and the log-semiring identity at off positions.
    The initial vector is one-hot(0), so the product's row 0 is alpha_T.

    Exactness. In a product a (x) b, every column of b that is not an identity column spans at
    most S nats (S: the joint span of W, s and e, checked as for matmul; b's rows differ only in
    their first transition), so entry (i, j) is at least
    exp(max a[i, :] + max b[:, j] - S), against an absolute error of
    (L + 1) tiny exp(max a[i, :] + max b[:, j]) (`_log_matmul`); where b is the identity, the
    raised entries weigh at most exp(S) times the row's largest in what follows.
    Over the <= T products that gives at most 4 T L^2 tiny exp(S) relative, <= eps when S <=
    `exact_span(dtype, T, L, 0)` (float32: 61 nats at T = 30, L = 17; float64: ~660)."""
    B, T, L = unary.shape
    dtype, device = unary.dtype, unary.device
    _, span = _max_and_span(transitions, start, end)
    if not span <= exact_span(dtype, T, L, steps_per_rescale=0):
        return _forward_logsumexp(unary, transitions, start, end, mask)
    neg = torch.finfo(dtype).min
    _, has_prev, first, _ = _neighbours(mask)
    inner = transitions.unsqueeze(0).unsqueeze(0) + unary.unsqueeze(2)  # (B, T, L, L)
    opening = (start + unary).unsqueeze(2).expand(B, T, L, L)  # (B, T, L, L)
    identity = torch.full((L, L), neg, dtype=dtype, device=device)  # (L, L)
    identity.fill_diagonal_(0.0)
    phi = torch.where((mask & has_prev)[:, :, None, None], inner, identity)  # (B, T, L, L)
    phi = torch.where(first[:, :, None, None], opening, phi)  # (B, T, L, L)
    size = 1
    while size < T:
        size *= 2
    if size > T:
        pad = identity.expand(B, size - T, L, L)  # (B, size - T, L, L)
        phi = torch.cat([phi, pad], dim=1)  # (B, size, L, L)
    while phi.shape[1] > 1:
        phi = _log_matmul(phi[:, 0::2], phi[:, 1::2])  # (B, n/2, L, L)
    alpha = phi[:, 0, 0]  # (B, L)
    log_z = torch.logsumexp(alpha + end, dim=1)  # (B,)
    return torch.where(mask.any(dim=1), log_z, torch.zeros_like(log_z))


def crf_log_partition(unary, transitions, start, end, mask, method: str = "matmul") -> torch.Tensor:
    """log Z (B,): log-sum-exp of the scores of all labellings of each sentence.

    Exact for all finite scores, whatever the method (see the module docstring): "matmul" and
    "scan" run only where their probability-space arithmetic is exact (`exact_span`) and fall back
    to "logsumexp" elsewhere, so they differ in speed, not in the value or its gradient.

    When no gradient is wanted (autograd off, or no input requires grad) the recursion runs under
    torch.inference_mode, which skips autograd's view and version bookkeeping (~20% of the time
    at L = 17, where each step is a few small ops); the result is cloned into a normal tensor."""
    _check_unary(unary, transitions)
    mask = _check_mask(mask, unary)
    _check_ends(start, end, transitions.shape[0])
    forwards = {"matmul": _forward_matmul, "logsumexp": _forward_logsumexp, "scan": _forward_scan}
    if method not in forwards:
        raise ValueError(f"method must be one of {tuple(forwards)}, got {method!r}")
    if unary.shape[1] == 0:
        return unary.new_zeros(unary.shape[0])
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (unary, transitions, start, end))
    if wants_grad:
        return forwards[method](unary, transitions, start, end, mask)
    with _without_autograd():
        log_z = forwards[method](unary, transitions, start, end, mask)
    return log_z.clone()


def crf_nll(unary, transitions, start, end, labels, mask, method: str = "matmul") -> torch.Tensor:
    """Negative conditional log-likelihood log Z - score(y) (B,) = E(x, y) + log Z."""
    return crf_log_partition(unary, transitions, start, end, mask, method) - crf_score(
        unary, transitions, start, end, labels, mask
    )


# ---------------------------------------------------------------------------------------------
# Viterbi
# ---------------------------------------------------------------------------------------------


# Up to this many labels the max over the previous label runs as a reduction over the outer
# dimension of a (B, L_prev, L_pad) buffer, L_pad a multiple of 32: PyTorch's CPU kernel
# vectorises that case (3.5x faster than reducing the contiguous dimension at L = 17, B = 32).
# Above it, reducing the contiguous dimension of (B, L, L_prev) is faster (2.6x at L = 400).
VITERBI_OUTER_MAX_LABELS = 256


def crf_viterbi(unary, transitions, start, end, mask) -> ViterbiResult:
    """The minimum-energy labelling of each sentence: labels (B, T) (0 off the mask) and their
    scores (B,) = -E.

    The forward pass keeps max values only, in one reused buffer (allocating it afresh every step
    costs more than the arithmetic at L = 400), and runs on left-aligned sentences past their
    ends: each row's final alpha is gathered at its length afterwards. The backtrack recomputes
    each step's argmax for the chosen label alone, (B, L) work per position. It all runs under
    torch.inference_mode, which skips autograd's view and version bookkeeping (~20% of the time
    at L = 17); the outputs are cloned into normal tensors."""
    _check_unary(unary, transitions)
    mask = _check_mask(mask, unary)
    _check_ends(start, end, transitions.shape[0])
    B, T, L = unary.shape
    if T == 0:
        return ViterbiResult(unary.new_zeros(B, 0, dtype=torch.long), unary.new_zeros(B))
    with _without_autograd():
        U, on, lengths, order = _left_align(unary, mask)  # (T, B, L), (T, B), (B,), (B, T)
        if L <= VITERBI_OUTER_MAX_LABELS:  # buffer (B, L_prev, L_pad), reduced over dim 1
            padded = -(-L // 32) * 32
            weights = transitions.new_full((L, padded), float("-inf"))  # (L_prev, L_pad)
            weights[:, :L] = transitions
            prev_dim = 1
        else:  # buffer (B, L, L_prev), reduced over the contiguous dim 2
            weights = transitions.t().contiguous()  # (L, L_prev)
            prev_dim = 2
        buffer = U.new_empty((B,) + weights.shape)  # (B, L_prev, L_pad) or (B, L, L_prev)
        alpha = start + U[0]  # (B, L)
        alphas = [alpha]
        for U_t in U[1:].unbind(0):
            torch.add(alpha.unsqueeze(3 - prev_dim), weights, out=buffer)
            best = buffer.amax(dim=prev_dim)[:, :L]  # (B, L): the padding columns dropped
            alpha = best + U_t  # (B, L): past a row's end this runs on, unused
            alphas.append(alpha)
        last = (lengths - 1).clamp(min=0)  # (B,)
        final = torch.stack(alphas).gather(0, last.view(1, B, 1).expand(1, B, L)).squeeze(0)  # (B, L)
        scores, label = (final + end).max(dim=1)  # (B,), (B,)
        # Backtrack: the best predecessor of label j at t is argmax_i alpha_{t-1}[i] + W[i, j],
        # recomputed for the chosen j only (the same float additions as the forward max).
        transitions_t = transitions.t()  # (L, L_prev)
        labels = [label]
        for t in range(T - 1, 0, -1):
            previous = (alphas[t - 1] + transitions_t[label]).argmax(dim=1)  # (B,)
            label = torch.where(on[t], previous, label)  # (B,): past the end, the label carries over
            labels.append(label)
        labels.reverse()
        aligned = torch.stack(labels, dim=1) * on.t()  # (B, T): labels at aligned positions
        path = torch.zeros_like(aligned).scatter_(1, order, aligned)  # (B, T): back to original positions
        scores = torch.where(lengths > 0, scores, torch.zeros_like(scores))  # (B,)
    return ViterbiResult(path.clone(), scores.clone())


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class LinearChainCRF(nn.Module):
    """Transition, start and end scores (initialised U(-0.1, 0.1) like pytorch-crf), and the
    energy / log Z / NLL / Viterbi functions above bound to them."""

    def __init__(self, n_labels: int):
        if n_labels < 1:
            raise ValueError(f"n_labels must be >= 1, got {n_labels}")
        super().__init__()
        self.n_labels = n_labels
        self.transitions = nn.Parameter(torch.empty(n_labels, n_labels))  # (L, L)
        self.start = nn.Parameter(torch.empty(n_labels))  # (L,)
        self.end = nn.Parameter(torch.empty(n_labels))  # (L,)
        for p in (self.transitions, self.start, self.end):
            nn.init.uniform_(p, -0.1, 0.1)

    def score(self, unary, labels, mask) -> torch.Tensor:
        return crf_score(unary, self.transitions, self.start, self.end, labels, mask)

    def energy(self, unary, labels, mask) -> torch.Tensor:
        return crf_energy(unary, self.transitions, self.start, self.end, labels, mask)

    def log_partition(self, unary, mask, method: str = "matmul") -> torch.Tensor:
        return crf_log_partition(unary, self.transitions, self.start, self.end, mask, method)

    def nll(self, unary, labels, mask, method: str = "matmul") -> torch.Tensor:
        return crf_nll(unary, self.transitions, self.start, self.end, labels, mask, method)

    def viterbi(self, unary, mask) -> ViterbiResult:
        return crf_viterbi(unary, self.transitions, self.start, self.end, mask)


@dataclass
class CRFConfig(JsonConfig):
    """Everything needed to rebuild a BLSTM-CRF; stored as JSON in "crf" checkpoints.

    Plain BLSTM-CRF (Tu & Gimpel §2): no character CNN, no dropout, pretrained word embeddings
    kept fixed (`finetune_embeddings=False`; without pretrained vectors set it True).
    BLSTM-CRF+ (§2.1): `CRFConfig.plus(...)`: char-CNN (width 3, 30-dim characters), fine-tuned
    embeddings, dropout 0.5 on the BLSTM input and output."""

    n_words: int
    n_chars: int
    n_labels: int
    word_dim: int = 100
    char_dim: int = 30
    char_filters: int = 0  # 0: no character CNN
    hidden: int = 100  # per direction (the paper's H)
    dropout: float = 0.0
    finetune_embeddings: bool = False
    char_activation: str = "none"  # g after the char CNN's max-pool (core.encoders.CHAR_ACTIVATIONS)

    def __post_init__(self) -> None:
        check_char_activation("CRFConfig", self.char_activation)
        for name in ("n_words", "n_chars", "n_labels", "word_dim", "char_dim", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"CRFConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.char_filters < 0:
            raise ValueError(f"CRFConfig.char_filters must be >= 0, got {self.char_filters}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CRFConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def plus(cls, n_words: int, n_chars: int, n_labels: int, **overrides) -> "CRFConfig":
        options = dict(char_filters=50, dropout=0.5, finetune_embeddings=True)
        options.update(overrides)
        return cls(n_words, n_chars, n_labels, **options)




class BLSTMCRF(nn.Module):
    """BiLSTM features f(x, t) -> unary scores U = f u^T + b, plus a LinearChainCRF."""

    def __init__(self, config: CRFConfig):
        super().__init__()
        self.config = config
        self.encoder = BiLSTMEncoder(
            config.n_words, config.n_chars, word_dim=config.word_dim, char_dim=config.char_dim,
            char_filters=config.char_filters, hidden=config.hidden, dropout=config.dropout,
            char_activation=config.char_activation,
        )
        self.encoder.word_embedding.weight.requires_grad_(config.finetune_embeddings)
        self.unary_layer = nn.Linear(self.encoder.output_dim, config.n_labels)
        self.crf = LinearChainCRF(config.n_labels)

    @property
    def n_labels(self) -> int:
        return self.config.n_labels

    def unary(self, words: torch.Tensor, chars: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """words (B, T), chars (B, T, C), lengths (B,) -> unary scores (B, T, L)."""
        return self.unary_layer(self.encoder(words, chars, lengths))  # (B, T, L)

    def energy(self, unary, labels, mask) -> torch.Tensor:
        """E(x, y) (B,) for labels (B, T) long or distributions (B, T, L)."""
        return self.crf.energy(unary, labels, mask)

    def nll(self, unary, labels, mask) -> torch.Tensor:
        return self.crf.nll(unary, labels, mask)

    def viterbi(self, unary, mask) -> ViterbiResult:
        return self.crf.viterbi(unary, mask)
