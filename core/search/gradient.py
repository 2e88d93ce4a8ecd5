"""Gradient-descent inference on a CRF energy (Tu & Gimpel 2019, §3, §5.2, appendix).

`gradient_descent` minimises E(x, softmax(y)) over y in R^{T x L} with momentum, from a random
start or from given logits (core.infnet_gd starts it from an inference network's, §4.2.2). Many
learning rates run as one tensor program: rows are (learning rate, sentence) pairs, so the 9
learning rates of the oracle grid cost one batched trajectory, and every N of the grid is a
prefix of it (recorded on the way, not re-run).

The rest of the paper's GD machinery has its own module each: the per-instance oracle over the
(N, lr) grid and its Table-6 summaries in core.oracle, instance tailoring in core.tailoring,
search error and per-sentence scores in core.metrics.

Shapes: B sentences, T positions, L labels, R learning rates, K recorded step counts.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from core.crf import crf_energy, crf_score

# The grid of the paper's appendix (the GD oracle's, core.oracle): step counts N and learning rates.
GRID_STEPS = (5, 10, 20, 30, 40, 50, 100, 500, 1000)
GRID_LRS = (1e4, 5e3, 1e3, 500.0, 100.0, 50.0, 10.0, 5.0, 1.0)
# Scale of the random start y ~ N(0, INIT_STD^2). Near 0 the softmax is near uniform, so the first
# gradient ranks labels by their energy alone. From a N(0, 1) start the gradient of each label is
# scaled by its random initial probability, the softmax saturates within a few steps at large
# learning rates, and GD stalls far above the Viterbi energy (twitter_pos test, BLSTM-CRF+: best
# lr after 300 steps -138 vs Viterbi -176.5 on 64 tweets; from N(0, 0.01^2): -176.48).
INIT_STD = 0.01


class GDTrace(NamedTuple):
    steps: tuple[int, ...]  # (K,) recorded step counts N, increasing
    lrs: tuple[float, ...]  # (R,)
    labels: torch.Tensor  # (K, R, B, T) argmax of y after N steps (0 past each length)
    energy: torch.Tensor  # (K, R, B) relaxed energy E(x, softmax(y))
    discrete_energy: torch.Tensor  # (K, R, B) energy of the argmax labels
    logits: torch.Tensor  # (R, B, T, L) y after the last step


def check_grid(steps: Sequence[int], lrs: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    steps = tuple(int(n) for n in steps)
    lrs = tuple(float(r) for r in lrs)
    if not steps or any(n < 0 for n in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"steps must be a non-empty, strictly increasing sequence of counts >= 0, got {steps}")
    if not lrs or any(not r > 0 for r in lrs):
        raise ValueError(f"learning rates must be > 0, got {lrs}")
    return steps, lrs


def gradient_descent(
    crf,
    unary: torch.Tensor,
    mask: torch.Tensor,
    steps: Sequence[int] = GRID_STEPS,
    lrs: Sequence[float] = GRID_LRS,
    momentum: float = 0.9,
    init: torch.Tensor | None = None,
    seed: int = 0,
    init_std: float = INIT_STD,
) -> GDTrace:
    """Momentum GD on y for every (lr, sentence) pair at once; records the output after each N
    in `steps`. The update is torch.optim.SGD's: v <- momentum * v + g; y <- y - lr * v.

    crf: a LinearChainCRF (its parameters are held fixed), unary (B, T, L), mask (B, T),
    init: (B, T, L) logits (an inference network's, core.infnet_gd) or None for y ~ N(0, init_std^2)
    drawn from `seed` (the same start for every learning rate; see INIT_STD)."""
    steps, lrs = check_grid(steps, lrs)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not init_std >= 0.0:
        raise ValueError(f"init_std must be >= 0, got {init_std}")
    B, T, L = unary.shape
    R = len(lrs)
    if init is not None and init.shape != unary.shape:
        raise ValueError(f"init logits must have the shape of unary {tuple(unary.shape)}, got {tuple(init.shape)}")
    if init is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        init = (init_std * torch.randn(B, T, L, generator=g)).to(unary.device, unary.dtype)  # (B, T, L)
    transitions, start, end = crf.transitions.detach(), crf.start.detach(), crf.end.detach()
    unary_r = unary.detach().repeat(R, 1, 1)  # (R*B, T, L): row r*B + b is (lr r, sentence b)
    mask_r = mask.repeat(R, 1)  # (R*B, T)
    rate = torch.tensor(lrs, dtype=unary.dtype, device=unary.device).repeat_interleave(B).view(R * B, 1, 1)  # (R*B, 1, 1)
    y = init.detach().to(unary.dtype).repeat(R, 1, 1).clone()  # (R*B, T, L)
    velocity = torch.zeros_like(y)  # (R*B, T, L)
    labels, energy, discrete = [], [], []

    def record() -> None:
        with torch.no_grad():
            probs = y.softmax(dim=-1)  # (R*B, T, L)
            argmax = probs.argmax(dim=-1) * mask_r  # (R*B, T)
            labels.append(argmax.view(R, B, T))
            energy.append(-crf_score(unary_r, transitions, start, end, probs, mask_r).view(R, B))
            # The discrete energy as the relaxed one at one-hot labels (equal by definition): the
            # long-label path checks the labels' range on the host, a device sync at every record.
            one_hot = torch.nn.functional.one_hot(argmax, L).to(y.dtype)  # (R*B, T, L)
            discrete.append(crf_energy(unary_r, transitions, start, end, one_hot, mask_r).view(R, B))

    done = 0
    for n in steps:
        for _ in range(n - done):
            with torch.enable_grad():
                y.requires_grad_(True)
                total = -crf_score(unary_r, transitions, start, end, y.softmax(dim=-1), mask_r).sum()  # ()
                (grad,) = torch.autograd.grad(total, y)  # (R*B, T, L)
            y = y.detach()
            velocity.mul_(momentum).add_(grad) if momentum else velocity.copy_(grad)
            y -= rate * velocity
        done = n
        record()
    return GDTrace(steps, lrs, torch.stack(labels), torch.stack(energy), torch.stack(discrete), y.view(R, B, T, L))
