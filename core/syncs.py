"""Find host-device synchronisations in a piece of code, on any device (the CPU included).

On a GPU every `.item()`, `.tolist()`, `bool(t)`, `int(t)`, `float(t)`, `.cpu()` or `.numpy()`
of a device tensor waits for the device to finish all queued work and copies to the host; inside a
per-position loop that serialises the GPU with Python. The profiler on a CPU shows only some of
them (`.item()` as aten::_local_scalar_dense; `.tolist()` and `.cpu()` of a CPU tensor need no
op), so `host_syncs` intercepts the tensor methods themselves with a torch function mode, which
works the same on every device, and names the line that called each one. (`.to("cpu")` counts
only for a tensor not already on the CPU; Adam's `.item()` on its host step counters shows up but
is no device sync.)

    with host_syncs() as found:
        beam_search(model, memory, 3)
    found.counts  # Counter({"core/search/beam.py:88 Tensor.item": 7, ...})
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

ROOT = str(Path(__file__).resolve().parents[1])
TORCH = str(Path(torch.__file__).resolve().parent)
_SYNCING = {torch.Tensor.item: "Tensor.item", torch.Tensor.tolist: "Tensor.tolist", torch.Tensor.__bool__: "bool(Tensor)",
            torch.Tensor.__int__: "int(Tensor)", torch.Tensor.__float__: "float(Tensor)", torch.Tensor.__index__: "Tensor.__index__",
            torch.Tensor.cpu: "Tensor.cpu", torch.Tensor.numpy: "Tensor.numpy"}


def _caller() -> str:
    """file:line of the innermost frame outside torch (relative to the repository when inside it)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(TORCH):
        frame = frame.f_back
    if frame is None:
        return "?"
    name = frame.f_code.co_filename
    if name.startswith(ROOT):
        name = name[len(ROOT) + 1:]
    return f"{name}:{frame.f_lineno}"


class host_syncs(TorchFunctionMode):
    """Counts every call that would make the host wait for the device, by calling line."""

    def __init__(self):
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = _SYNCING.get(func)
        if what is None and func is torch.Tensor.to and args[0].device.type != "cpu":  # seen on a GPU only
            target = next((a for a in args[1:] if isinstance(a, (str, torch.device))), kwargs.get("device"))
            if target is not None and torch.device(target).type == "cpu":
                what = "Tensor.to(cpu)"
        if what is not None:
            self.counts[f"{_caller()} {what}"] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
