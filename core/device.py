"""Which device a run uses: `resolve_device(name)` for every entry point (train, decode, gd-oracle,
sweep trials), and `pinned` for host batches bound for a GPU.

    "auto"     CUDA when torch sees a GPU, else the CPU
    "cuda[:N]" that GPU; an error when torch has no CUDA, unless a scheduler assigned this
               process a GPU it cannot use (below)
    "cpu", ... that device, as torch names it

Inside a Ray trial that asked for a GPU, CUDA_VISIBLE_DEVICES holds the id(s) Ray assigned, so
"cuda" (= cuda:0 of the visible ones) is exactly the GPU Ray gave the trial, fractional or not.
When such a process has no usable CUDA (a CPU-only torch, a driver problem, or the test cluster's
fake GPUs) it runs on the CPU and says so in one logged line, rather than failing the trial or
falling back silently.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("beamtune.device")


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto" and not name.startswith("cuda"):
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    assigned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if assigned:  # a GPU was assigned to this process, but torch cannot use it
        log.warning("device %r: GPU(s) %s assigned (CUDA_VISIBLE_DEVICES) but torch %s has no usable CUDA; "
                    "running on the CPU", name, assigned, torch.__version__)
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cpu")
    raise ValueError(f"device {name!r}: torch {torch.__version__} has no usable CUDA (torch.cuda.is_available() "
                     "is False); use device 'cpu' or 'auto'")


def pinned(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` in page-locked host memory when it is bound for a CUDA device (so the copy can run
    asynchronously with `non_blocking=True`), unchanged otherwise."""
    return tensor.pin_memory() if device.type == "cuda" and tensor.device.type == "cpu" else tensor
