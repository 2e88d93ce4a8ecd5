"""Training losses. Cross-entropy here; the soft-beam direct loss and hinge, the CRF NLL and the
inference-network loss join it as their issues land.

Shapes: B sentences, T positions, L labels, S encoder output size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.seq2seq import Memory, Seq2SeqTagger


def cross_entropy_loss(model: Seq2SeqTagger, memory: Memory, labels: torch.Tensor, feed: str = "gold") -> torch.Tensor:
    """Token-level cross-entropy averaged over real tokens: a scalar.

    memory: (B, T, S), labels: (B, T) with -1 (unseen tag) ignored.
    """
    scores = model.teacher_forced_scores(memory, labels, feed=feed)  # (B, T, L)
    targets = labels.masked_fill(~memory.mask, -1)  # (B, T)
    return F.nll_loss(scores.flatten(0, 1), targets.flatten(), ignore_index=-1)
