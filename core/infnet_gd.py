"""Gradient descent started from an inference network (Tu & Gimpel 2019, §4.2.2): GD on the CRF
energy whose initial relaxed output is the network's logits instead of a near-uniform random
start (core.search.gradient.INIT_STD). The `infnet-gd` decoder and `gd-oracle --infnet-start`.

(Not to be confused with a training run initialised from a checkpoint, `TrainConfig.init`, or a
sweep started from another sweep's best trial, a spec's `warm_start`.)
"""
from __future__ import annotations

import torch

from core.data import Batch
from core.search.gradient import GDTrace, gradient_descent


def infnet_started_gd(crf, infnet, batch: Batch, unary: torch.Tensor, steps: int, lr: float, momentum: float = 0.9,
                      seed: int = 0) -> GDTrace:
    """`steps` GD steps at rate `lr` on the energy of `crf` (a BLSTMCRF; unary (B, T, L) its
    potentials for `batch`), starting from `infnet`'s logits (B, T, L)."""
    init = infnet(batch.words, batch.chars, batch.lengths).logits  # (B, T, L)
    return gradient_descent(crf.crf, unary, batch.mask, steps=(steps,), lrs=(lr,), momentum=momentum, init=init, seed=seed)
