"""Sweep specs: a YAML file, validated before any compute, turned into a Ray Tune param space.

    name: quickstart                 # folder under the sweep storage, and the MLflow parent run name
    task: synthetic                  # a core.data task; data_root (or $BEAMTUNE_DATA) for real ones
    stage: ce                        # a training stage that core.train implements (see STAGES)
    epochs: 3                        # per trial; ASHA's max_t
    fixed: {batch_size: 32, encoder_hidden: 16}
    space:                           # one distribution per parameter
      lr: {loguniform: [1.0e-3, 1.0e-2]}
      decoder_hidden: {choice: [16, 32]}
    search: {algorithm: optuna, seed: 0}        # optuna (TPE), random, grid
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: fifo}
    num_samples: 4
    max_concurrent: 2
    resources: {cpu: 1, gpu: 0.5}   # per trial; fractional GPUs share a device
    metric: dev_score
    mode: max
    warm_start: {sweep: ce_sweep}    # or {checkpoint: path}: the best trial of another sweep

Parameters in `fixed` and `space` are `core.train.TrainConfig` fields or `TaggerConfig` fields
(which go into `TrainConfig.model`), so a field that core adds becomes sweepable without touching
this file. Every value a trial can receive is checked by constructing the core config, so a bad
value fails here, with the field named, instead of in a trial.

`SpecError.problems` holds one line per problem, each starting with the field it is about.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SpecError(ValueError):
    """An invalid sweep spec; `problems` has one line per problem, naming the field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ----------------------------------------------------------------------------------------------
# Stages: which core training objective a stage runs and what it must start from.


@dataclass(frozen=True)
class Stage:
    name: str
    objective: str  # TrainConfig.objective
    family: str  # key of sweeps.trainables.FAMILIES
    warm_start: str  # "never" | "optional" | "required"
    warm_from: tuple[str, ...] = ()  # stages whose best checkpoint it usually starts from
    warm_field: str = "init"  # the TrainConfig field the warm-start checkpoint goes into


# Every stage the papers' sweeps need. Only those whose objective core.train implements are
# available (`available_stages()`); the rest give a clear "not available yet" error.
KNOWN_STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("ce", "ce", "train", "optional"),
    Stage("dl", "dl", "train", "required", ("ce",)),
    Stage("hinge", "hinge", "train", "required", ("ce",)),
    Stage("crf", "crf", "train", "never"),
    Stage("crf+", "crf+", "train", "never"),
    Stage("local", "local", "train", "never"),
    Stage("infnet", "infnet", "train", "required", ("crf", "crf+"), warm_field="energy"),  # the fixed CRF energy
    # Not training: the GD oracle grid over a split with a trained CRF (core.structured.run_oracle).
    Stage("gd-oracle", "gd-oracle", "gd-oracle", "required", ("crf", "crf+"), warm_field="checkpoint"),
)}

# TrainConfig fields that a warm-start checkpoint path goes into (Stage.warm_field).
WARM_START_FIELDS = ("init", "energy", "checkpoint")
# TrainConfig fields the sweep layer sets itself.
RESERVED = {"task", "out", "data_root", "objective", "epochs", "progress", "model", "resume_from", *WARM_START_FIELDS}
# TaggerConfig fields that come from the data, not from a spec.
DATA_DERIVED = {"n_words", "n_chars", "n_labels"}
# Metrics every trial reports each epoch (core.train's report) and may be optimised.
REPORTED_METRICS = ("dev_score", "best_dev_score", "train_loss", "train_sentences_per_second")


def available_stages() -> dict[str, Stage]:
    from core.train import OBJECTIVES

    return {name: s for name, s in KNOWN_STAGES.items() if s.objective in OBJECTIVES or s.family == "gd-oracle"}


def stage_for_objective(objective: str) -> Stage:
    return next(s for s in KNOWN_STAGES.values() if s.objective == objective)


def top_config_class(objective: str) -> type:
    """The core config a trial of this objective is built from: TrainConfig, or OracleConfig for
    the gd-oracle stage."""
    from core.structured import OracleConfig
    from core.train import TrainConfig

    return OracleConfig if objective == "gd-oracle" else TrainConfig


def _train_fields(objective: str = "ce") -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(top_config_class(objective)) if f.name not in RESERVED}


def model_config_class(objective: str) -> type:
    """The config class whose fields `TrainConfig.model` overrides for this objective."""
    from core.crf import CRFConfig
    from core.infnets import InfnetConfig
    from core.seq2seq import TaggerConfig

    return {"crf": CRFConfig, "crf+": CRFConfig, "local": InfnetConfig, "infnet": InfnetConfig}.get(objective, TaggerConfig)


def _model_fields(objective: str) -> dict[str, Any]:
    if objective == "gd-oracle":
        return {}
    fields = dataclasses.fields(model_config_class(objective))
    return {f.name: f for f in fields if f.name not in DATA_DERIVED and f.name != "arch"}


def split_params(params: dict[str, Any], objective: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat spec/trial parameters -> (TrainConfig keyword arguments, model config overrides)."""
    train_names, model_names = _train_fields(objective), _model_fields(objective)
    top, model = {}, {}
    for key, value in params.items():
        if key in train_names:
            top[key] = value
        elif key in model_names:
            model[key] = value
        else:
            raise KeyError(key)
    return top, model


# ----------------------------------------------------------------------------------------------
# The spec's structure (pydantic).


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """Exactly one of: choice/grid (a list of values), uniform/loguniform/randint ([low, high])."""

    choice: list[Any] | None = None
    grid: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None  # low inclusive, high exclusive

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice, grid, uniform, loguniform, randint")
        if self.choice is not None and not self.choice or self.grid is not None and not self.grid:
            raise ValueError(f"{kinds[0]} needs at least one value")
        for kind in ("uniform", "loguniform", "randint"):
            bounds = getattr(self, kind)
            if bounds is not None:
                low, high = bounds
                if not low < high:
                    raise ValueError(f"{kind}: low ({low}) must be < high ({high})")
                if kind == "loguniform" and low <= 0:
                    raise ValueError(f"loguniform: low ({low}) must be > 0")
        return self

    def describe(self) -> str:
        """One line for the MLflow UI, e.g. `loguniform [0.001, 0.01]`."""
        return f"{self.kind} {getattr(self, self.kind)}"

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "grid", "uniform", "loguniform", "randint") if getattr(self, k) is not None)

    def corners(self) -> list[Any]:
        """Values that bound what a trial can receive (to validate them before any trial runs)."""
        kind = self.kind
        if kind in ("choice", "grid"):
            return list(getattr(self, kind))
        low, high = getattr(self, kind)
        return [low, high - 1] if kind == "randint" else [low, high]

    def to_tune(self):
        from ray import tune

        kind = self.kind
        if kind == "grid":
            return tune.grid_search(list(self.grid))
        if kind == "choice":
            return tune.choice(list(self.choice))
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*getattr(self, kind))


class Search(_Strict):
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    seed: int = 0


class Scheduler(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)  # below 1: a fraction of one GPU; above 1: a whole number
    custom: dict[str, float] = Field(default_factory=dict)  # extra Ray resources, e.g. {slot: 1}

    @model_validator(mode="after")
    def _whole_gpus(self):
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu: more than one GPU must be a whole number, got {self.gpu}")
        return self

    def to_ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu, **self.custom}


class WarmStart(_Strict):
    """Start every trial from a checkpoint: a path, or the best trial of an earlier sweep."""

    checkpoint: str | None = None
    sweep: str | None = None
    metric: str | None = None  # for `sweep`: rank its trials by this (default: that sweep's metric)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.sweep is None):
            raise ValueError("give exactly one of checkpoint, sweep")
        return self


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: str
    data_root: str | None = None
    stage: str
    epochs: int = Field(ge=1)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Distribution] = Field(default_factory=dict)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    num_samples: int = Field(1, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    resources: Resources = Field(default_factory=Resources)
    metric: str = "dev_score"
    mode: Literal["max", "min"] = "max"
    warm_start: WarmStart | None = None
    max_failures: int = Field(2, ge=0)  # retries of a trial from its last checkpoint
    keep_checkpoints: int = Field(1, ge=1)  # best checkpoints kept per trial (the latest is kept too)
    experiment: str = "beamtune"  # MLflow experiment of the parent run

    # ---- derived -----------------------------------------------------------------------------

    @property
    def stage_info(self) -> Stage:
        return KNOWN_STAGES[self.stage]

    def param_space(self) -> dict[str, Any]:
        """Ray Tune param space: the fixed values and one domain per searched parameter."""
        return {**self.fixed, **{name: dist.to_tune() for name, dist in self.space.items()}}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Loading and the checks pydantic cannot do alone.


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; read it as a float like everyone expects."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _loc(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-")) or "spec"


def parse_spec(data: Any) -> SweepSpec:
    """Structure only (types, ranges, unknown keys); raises SpecError."""
    if not isinstance(data, dict):
        raise SpecError(["spec: must be a mapping of fields (name, task, stage, ...)"])
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as error:
        problems = []
        for e in error.errors():
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{_loc(e['loc'])}: {msg}")
        raise SpecError(problems) from None


def semantic_problems(spec: SweepSpec, storage: str | os.PathLike | None = None) -> list[str]:
    """Everything that needs core or the sweep storage: task, stage, parameter names and values,
    metric, warm start. Returns one line per problem."""
    from core.data import TASKS
    from core.train import TrainConfig

    problems: list[str] = []
    if spec.task not in TASKS:
        problems.append(f"task: unknown task {spec.task!r}; valid tasks: {', '.join(TASKS)}")
    elif spec.task != "synthetic":
        root = spec.data_root or os.environ.get("BEAMTUNE_DATA")
        if not root:
            problems.append(f"data_root: task {spec.task!r} needs a data root (data_root: or $BEAMTUNE_DATA)")
        elif not Path(root).is_dir():
            problems.append(f"data_root: {root} is not a directory")

    available = available_stages()
    if spec.stage not in KNOWN_STAGES:
        problems.append(f"stage: unknown stage {spec.stage!r}; available: {', '.join(available)}")
    elif spec.stage not in available:
        problems.append(f"stage: {spec.stage!r} is not available yet (core.train has no {KNOWN_STAGES[spec.stage].objective!r} "
                        f"objective); available: {', '.join(available)}")

    # Parameter names.
    objective = KNOWN_STAGES[spec.stage].objective if spec.stage in KNOWN_STAGES else "ce"
    model_class = model_config_class(objective)
    top_class = top_config_class(objective)
    known = {**_train_fields(objective), **_model_fields(objective)}
    for section, names in (("fixed", spec.fixed), ("space", spec.space)):
        for name in names:
            if name == "epochs":
                problems.append(f"{section}.epochs: set epochs at the top level of the spec (it is ASHA's max_t)")
            elif name in RESERVED:
                problems.append(f"{section}.{name}: set by the sweep itself, not by a spec")
            elif name not in known:
                problems.append(f"{section}.{name}: unknown parameter; parameters are "
                                + (f"{top_class.__name__} fields" if objective == "gd-oracle"
                                   else f"TrainConfig or {model_class.__name__} fields"))
    for name in set(spec.fixed) & set(spec.space):
        problems.append(f"space.{name}: also in fixed; a parameter is either fixed or searched")

    # Search algorithm and space kinds.
    kinds = {name: d.kind for name, d in spec.space.items()}
    if spec.search.algorithm == "grid":
        for name, kind in kinds.items():
            if kind not in ("grid", "choice"):
                problems.append(f"space.{name}: search.algorithm grid needs a list of values (grid: [...]), not {kind}")
    elif spec.search.algorithm == "optuna":
        for name, kind in kinds.items():
            if kind == "grid":
                problems.append(f"space.{name}: grid values need search.algorithm grid (Optuna samples; use choice)")

    # Metric and scheduler.
    if spec.metric not in REPORTED_METRICS:
        problems.append(f"metric: {spec.metric!r} is not reported by trials; one of {', '.join(REPORTED_METRICS)}")
    if spec.scheduler.type == "asha" and spec.scheduler.grace_period > spec.epochs:
        problems.append(f"scheduler.grace_period: {spec.scheduler.grace_period} is more than epochs ({spec.epochs})")

    # Values: build the core configs with the fixed values, then with each boundary value of each
    # searched parameter, so that core's own checks run before any trial does.
    if not problems:
        # The warm start is checked below; here it only stands in for core's "needs init" check.
        placeholder = {spec.stage_info.warm_field: "<warm start>"} if spec.stage_info.warm_start != "never" else {}

        def check(section: str, params: dict[str, Any]) -> str | None:
            try:
                top, model = split_params(params, objective)
                if objective == "gd-oracle":
                    top_class(**top, **placeholder)
                    return None
                TrainConfig(task=spec.task, out="-", objective=spec.stage_info.objective, epochs=spec.epochs,
                            **top, **placeholder)
                arch = {"arch": top.get("arch", "blstm")} if model_class.__name__ == "InfnetConfig" else {}
                model_class(n_words=2, n_chars=2, n_labels=2, **arch, **model)
            except (ValueError, TypeError) as error:
                message = str(error).splitlines()[0]
                return re.sub(r"^(TrainConfig|TaggerConfig|CRFConfig|InfnetConfig|OracleConfig)[:.]\s*", "", message)
            return None

        base_error = check("fixed", dict(spec.fixed))
        if base_error:
            problems.append(f"fixed: {base_error}")
        else:
            for name, dist in spec.space.items():
                for value in dist.corners():
                    error = check("space", {**spec.fixed, name: value})
                    if error:
                        problems.append(f"space.{name}: value {value!r}: {error}")
                        break

    # Warm start.
    if spec.stage in available:
        stage = spec.stage_info
        if stage.warm_start == "required" and spec.warm_start is None:
            sources = " or ".join(stage.warm_from) or "an earlier stage"
            problems.append(f"warm_start: stage {spec.stage!r} must start from a checkpoint: "
                            f"give warm_start: {{sweep: NAME}} (the best trial of a {sources} sweep) or {{checkpoint: PATH}}")
        if spec.warm_start is not None and stage.warm_start == "never":
            problems.append(f"warm_start: stage {spec.stage!r} trains from scratch; remove warm_start")
    if spec.warm_start is not None:
        problems += warm_start_problems(spec.warm_start, storage)
    return problems


def warm_start_problems(warm: WarmStart, storage: str | os.PathLike | None) -> list[str]:
    from storage.best import SweepNotFound, best_checkpoint

    if warm.checkpoint is not None:
        if not (Path(warm.checkpoint) / "checkpoint.json").is_file():
            return [f"warm_start.checkpoint: {warm.checkpoint} is not a checkpoint directory (no checkpoint.json)"]
        return []
    try:
        best_checkpoint(storage, warm.sweep, warm.metric)
    except SweepNotFound as error:
        return [f"warm_start.sweep: {error}"]
    return []


def load_spec(path: str | os.PathLike, storage: str | os.PathLike | None = None) -> SweepSpec:
    """Read and fully validate a spec file; raises SpecError with every problem found."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec: {path}: no such file"])
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as error:
        raise SpecError([f"spec: {path}: not valid YAML: {str(error).splitlines()[0]}"]) from None
    return validate(data, storage)


def validate(data: Any, storage: str | os.PathLike | None = None) -> SweepSpec:
    spec = parse_spec(data)
    problems = semantic_problems(spec, storage)
    if problems:
        raise SpecError(problems)
    return spec
