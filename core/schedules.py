"""Per-epoch schedules for the soft-beam temperature alpha (Goyal et al. 2018, §2.3: start with a
smooth, non-peaked softmax and anneal towards the peaked one) and, for inference networks, the
token-loss weight lambda (`TrainConfig.alpha` and `TrainConfig.lam` both go through `from_config`).

A schedule is a small frozen dataclass with `at(epoch) -> float` (epochs count from 1) and
`to_dict()`; `from_config` builds one from that dict, from a plain number (constant), or from the
compact CLI form:

    2.5                      constant 2.5
    linear:1:10:20           1 at epoch 1 to 10 at epoch 20, then 10
    exp:1:100:10             geometric from 1 at epoch 1 to 100 at epoch 10, then 100
    steps:1,2,5,10           value per epoch; the last one repeats
    decay:1:0.01             1 * exp(-0.01 epoch), without end (Tu & Gimpel's lambda annealing)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"schedule field {name!r} must be an integer >= 1, got {value!r}")


def _check_finite(name: str, value: Any, positive: bool = False) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"schedule field {name!r} must be a finite{' positive' if positive else ''} number, got {value!r}")


@dataclass(frozen=True)
class Constant:
    value: float

    def __post_init__(self) -> None:
        _check_finite("value", self.value)

    def at(self, epoch: int) -> float:
        return float(self.value)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": "constant", **asdict(self)}


@dataclass(frozen=True)
class Linear:
    start: float
    end: float
    epochs: int  # epoch at which `end` is reached

    def __post_init__(self) -> None:
        _check_finite("start", self.start)
        _check_finite("end", self.end)
        _check_positive_int("epochs", self.epochs)

    def at(self, epoch: int) -> float:
        if self.epochs == 1:
            return float(self.end)
        fraction = min(max(epoch - 1, 0) / (self.epochs - 1), 1.0)
        return self.start + fraction * (self.end - self.start)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": "linear", **asdict(self)}


@dataclass(frozen=True)
class Exponential:
    start: float
    end: float
    epochs: int  # epoch at which `end` is reached

    def __post_init__(self) -> None:
        _check_finite("start", self.start, positive=True)
        _check_finite("end", self.end, positive=True)
        _check_positive_int("epochs", self.epochs)

    def at(self, epoch: int) -> float:
        if self.epochs == 1:
            return float(self.end)
        fraction = min(max(epoch - 1, 0) / (self.epochs - 1), 1.0)
        return self.start * (self.end / self.start) ** fraction

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": "exp", **asdict(self)}


@dataclass(frozen=True)
class Steps:
    values: tuple[float, ...]  # value for epochs 1, 2, ...; the last repeats

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("schedule field 'values' must list at least one number")
        for value in self.values:
            _check_finite("values", value)

    def at(self, epoch: int) -> float:
        return float(self.values[min(max(epoch, 1), len(self.values)) - 1])

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": "steps", "values": list(self.values)}


@dataclass(frozen=True)
class Decay:
    """start * exp(-rate * epoch): Tu & Gimpel's (2019, §7) lambda = e^{-0.01 t} is Decay(1, 0.01)."""

    start: float
    rate: float

    def __post_init__(self) -> None:
        _check_finite("start", self.start)
        _check_finite("rate", self.rate)

    def at(self, epoch: int) -> float:
        return float(self.start * math.exp(-self.rate * epoch))

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": "decay", **asdict(self)}


Schedule = Constant | Linear | Exponential | Steps | Decay
_KINDS = {"constant": Constant, "linear": Linear, "exp": Exponential, "steps": Steps, "decay": Decay}


def from_config(spec: Any) -> Schedule:
    """A schedule from a number, a compact string (see module docstring) or a dict with key
    "schedule" naming the kind and the kind's fields. Errors name the bad field."""
    if isinstance(spec, (Constant, Linear, Exponential, Steps, Decay)):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"schedule must be a number, string or mapping, got {spec!r}")
    if isinstance(spec, (int, float)):
        return Constant(float(spec))
    if isinstance(spec, str):
        return _parse(spec)
    if isinstance(spec, dict):
        fields = dict(spec)
        kind = fields.pop("schedule", None)
        if kind not in _KINDS:
            raise ValueError(f"schedule kind must be one of {sorted(_KINDS)}, got {kind!r}")
        if kind == "steps" and "values" in fields:
            fields["values"] = tuple(fields["values"])
        try:
            return _KINDS[kind](**fields)
        except TypeError as error:
            raise ValueError(f"schedule {kind!r}: {error}") from None
    raise ValueError(f"schedule must be a number, string or mapping, got {spec!r}")


def _parse(text: str) -> Schedule:
    kind, colon, rest = text.strip().partition(":")
    try:
        if not colon:
            return Constant(float(kind))
        if kind == "steps":
            return Steps(tuple(float(v) for v in rest.split(",") if v.strip()))
        if kind in ("linear", "exp"):
            start, end, epochs = rest.split(":")
            return _KINDS[kind](float(start), float(end), int(epochs))
        if kind == "decay":
            start, rate = rest.split(":")
            return Decay(float(start), float(rate))
        if kind == "constant":
            return Constant(float(rest))
    except ValueError as error:
        if "schedule" in str(error):
            raise
        raise ValueError(f"cannot parse schedule {text!r}: {error}") from None
    raise ValueError(f"cannot parse schedule {text!r}: expected a number, linear:START:END:EPOCHS, exp:START:END:EPOCHS, steps:V1,V2,... or decay:START:RATE")
