"""Lengths to a padding mask: the one helper every module that pads sentences uses."""
from __future__ import annotations

import torch


def lengths_to_mask(lengths: torch.Tensor, T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """lengths (B,) -> mask (B, T), True at positions t < length (on `device`, default the lengths')."""
    device = lengths.device if device is None else device
    return torch.arange(T, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)  # (B, T)
