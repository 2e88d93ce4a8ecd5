"""Run the unit tests on another device without editing them: BEAMTUNE_TEST_DEVICE=cuda.

`OnTestDevice` is a torch function mode that puts, on the test device, every tensor created by
test code (tests/*.py, and the reference libraries they call, such as pytorch-crf) and every
parameter or buffer torch.nn creates (as `model.to(device)` would), but NOT the tensors that
beamtune's own code (core/, sweeps/, storage/) creates: a `torch.zeros(B)` without
`device=` in core/ stays on the CPU and fails against CUDA inputs, so a run on the device shows
device bugs instead of hiding them (which `torch.set_default_device` would).

Random draws from an explicit CPU generator are made on the CPU and then moved, so a test sees the
same numbers on every device.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

TESTS = str(Path(__file__).resolve().parent)
REPO = str(Path(__file__).resolve().parents[1])
TORCH = str(Path(torch.__file__).resolve().parent)
MODULE_BUILDERS = tuple(f"{TORCH}/nn/{name}" for name in ("modules/", "init.py", "parameter.py"))


def _on_test_device() -> bool:
    """Whether the tensor being created belongs on the test device: made by torch.nn building a
    module (its parameters and buffers), or by code outside beamtune's own packages (the tests,
    their reference libraries such as pytorch-crf)."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(MODULE_BUILDERS):
            return True
        if not filename.startswith(TORCH):
            return filename.startswith(TESTS) or not filename.startswith(REPO)
        frame = frame.f_back
    return True


class OnTestDevice(TorchFunctionMode):
    def __init__(self, device: str):
        super().__init__()
        self.device = torch.device(device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _device_constructors() and kwargs.get("device") is None and _on_test_device():
            generator = kwargs.get("generator")
            if generator is not None and generator.device.type == "cpu":
                return func(*args, **kwargs).to(self.device)
            kwargs["device"] = self.device
        return func(*args, **kwargs)
