"""Sweep specs: a YAML file, validated before any compute, turned into a Ray Tune param space.

    name: quickstart                 # folder under the sweep storage, and the MLflow parent run name
    task: synthetic                  # a core.data task; data_root (or $BEAMTUNE_DATA) for real ones
    stage: ce                        # a sweep stage (STAGES): a core.stages objective, gd-oracle, table6,
                                     # speed or search-error
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
                                     # (of its trials with given values: where: {arch: blstm})
    max_trials: 1000                 # refuse a sweep of more trials (a mistyped grid); raise to confirm

Parameters in `fixed` and `space` are `core.stages.TrainConfig` fields or `TaggerConfig` fields
(which go into `TrainConfig.model`), so a field that core adds becomes sweepable without touching
this file. Every value a trial can receive is checked by constructing the core config, so a bad
value fails here, with the field named, instead of in a trial.

`SpecError.problems` holds one line per problem, each starting with the field it is about.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """An invalid sweep spec; `problems` has one line per problem, naming the field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ----------------------------------------------------------------------------------------------
# Stages: which core run a sweep stage makes and what it must start from.


@dataclass(frozen=True)
class SweepStage:
    name: str
    objective: str  # a key of core.stages.STAGES, or an evaluation (EVALUATIONS)
    family: str  # key of sweeps.trainables.FAMILIES
    warm_start: str  # "never" | "optional" | "required"
    warm_from: tuple[str, ...] = ()  # stages whose best checkpoint it usually starts from
    warm_field: str = "init"  # the config field the warm-start checkpoint goes into
    warm_energy: bool = False  # the warm start is an infnet: its CRF energy is copied too (storage.best.export_energy)

    @property
    def warm_start_is_start(self) -> bool:
        """Whether the warm start is only where training starts ("init": the resumed checkpoint
        holds what came of it) rather than a model read throughout (an infnet's fixed energy),
        which a trial resumed from its last state still needs."""
        return self.warm_field == "init"


# Every stage the papers' sweeps need: each training objective of core.stages, the GD oracle and Table 6.
STAGES: dict[str, SweepStage] = {s.name: s for s in (
    SweepStage("ce", "ce", "train", "optional"),
    SweepStage("dl", "dl", "train", "required", ("ce",)),
    SweepStage("hinge", "hinge", "train", "required", ("ce",)),
    SweepStage("crf", "crf", "train", "never"),
    SweepStage("crf+", "crf+", "train", "never"),
    SweepStage("local", "local", "train", "never"),
    SweepStage("infnet", "infnet", "train", "required", ("crf", "crf+"), warm_field="energy"),  # the fixed CRF energy
    # Not training: the GD oracle grid over a split with a trained CRF (core.oracle.run_oracle).
    SweepStage("gd-oracle", "gd-oracle", "gd-oracle", "required", ("crf", "crf+"), warm_field="checkpoint"),
    # Not training: Tu & Gimpel's Table 6 with a trained inference network and its energy (core.table6).
    SweepStage("table6", "table6", "table6", "required", ("infnet",), warm_field="checkpoint", warm_energy=True),
    # Not training: Tu & Gimpel's Table 3 and Fig. 2, inference speed of the network, Viterbi and GD (core.speed).
    SweepStage("speed", "speed", "speed", "required", ("infnet",), warm_field="checkpoint", warm_energy=True),
    # Not training: Tu & Gimpel's §6.2, search error against LM perplexity (core.search_correlation).
    SweepStage("search-error", "search-error", "search-error", "required", ("infnet",), warm_field="checkpoint",
               warm_energy=True),
)}
# Stages that evaluate a checkpoint instead of training (their configs: top_config_class).
EVALUATIONS = ("gd-oracle", "table6", "speed", "search-error")

# Config fields that a warm-start checkpoint path goes into (SweepStage.warm_field).
WARM_START_FIELDS = ("init", "energy", "checkpoint")
# TrainConfig fields the sweep layer sets itself.
RESERVED = {"task", "out", "data_root", "objective", "epochs", "progress", "model", "resume_from", *WARM_START_FIELDS}
# Model-config fields that come from the data, not from a spec.
DATA_DERIVED = {"n_words", "n_chars", "n_labels"}
# Metrics every trial reports each epoch (core.train's report) and may be optimised.
REPORTED_METRICS = ("dev_score", "best_dev_score", "train_loss", "train_sentences_per_second")


def top_config_class(objective: str) -> type:
    """The core config a trial of this objective is built from: TrainConfig, or an evaluation
    stage's own: OracleConfig for gd-oracle, Table6Config for table6, SpeedConfig for speed,
    SearchErrorConfig for search-error."""
    from core.oracle import OracleConfig
    from core.search_correlation import SearchErrorConfig
    from core.speed import SpeedConfig
    from core.stages import TrainConfig
    from core.table6 import Table6Config

    return {"gd-oracle": OracleConfig, "table6": Table6Config, "speed": SpeedConfig,
            "search-error": SearchErrorConfig}.get(objective, TrainConfig)


def _train_fields(objective: str = "ce") -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(top_config_class(objective)) if f.name not in RESERVED}


def model_config_class(objective: str) -> type:
    """The config class whose fields `TrainConfig.model` overrides for this objective."""
    from core.crf import CRFConfig
    from core.infnets import InfnetConfig
    from core.seq2seq import TaggerConfig

    return {"crf": CRFConfig, "crf+": CRFConfig, "local": InfnetConfig, "infnet": InfnetConfig}.get(objective, TaggerConfig)


def _model_fields(objective: str) -> dict[str, Any]:
    if objective in EVALUATIONS:
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
    seed: int = Field(0, strict=True)


class Scheduler(_Strict):
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, strict=True)
    reduction_factor: float = Field(2.0, gt=1)


RESOURCE_UNIT = 1e-4  # Ray counts resources in units of 0.0001; a smaller amount is a Ray error


def _ray_quantity(value: float) -> float:
    """A resource amount Ray can hold: finite (pydantic checks), 0 or at least RESOURCE_UNIT."""
    if 0 < value < RESOURCE_UNIT:
        raise ValueError(f"{value:g} is below 0.0001, the smallest amount of a resource Ray can hold")
    return value


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0, allow_inf_nan=False)
    gpu: float = Field(0.0, ge=0, allow_inf_nan=False)  # below 1: a fraction of one GPU; above 1: a whole number
    custom: dict[str, float] = Field(default_factory=dict)  # extra Ray resources, e.g. {slot: 1}

    _quantities = field_validator("cpu", "gpu")(_ray_quantity)

    @field_validator("custom")
    @classmethod
    def _custom_quantities(cls, custom: dict[str, float]) -> dict[str, float]:
        for name, value in custom.items():
            if name.upper() in ("CPU", "GPU"):
                raise ValueError(f"{name}: give CPUs and GPUs as resources.cpu and resources.gpu")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value}")
            try:
                _ray_quantity(value)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        return custom

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
    # For `sweep`: only its trials with these parameter values, e.g. {arch: blstm} for the best BLSTM
    # of an inference-network sweep over architectures (Tu & Gimpel's Table 3 times each one).
    where: dict[str, str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.sweep is None):
            raise ValueError("give exactly one of checkpoint, sweep")
        if self.checkpoint is not None and (self.metric is not None or self.where is not None):
            raise ValueError("metric and where choose among a sweep's trials: give them with sweep, not checkpoint")
        return self


DEFAULT_MAX_TRIALS = 1000  # trials a spec may ask for without raising max_trials
MAX_TRIALS = 100_000  # the most max_trials can be raised to


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: str
    data_root: str | None = None
    stage: str
    epochs: int = Field(ge=1, strict=True)
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Distribution] = Field(default_factory=dict)
    search: Search = Field(default_factory=Search)
    scheduler: Scheduler = Field(default_factory=Scheduler)
    num_samples: int = Field(1, ge=1, strict=True)
    max_concurrent: int | None = Field(None, ge=1, strict=True)
    resources: Resources = Field(default_factory=Resources)
    metric: str = "dev_score"
    mode: Literal["max", "min"] = "max"
    warm_start: WarmStart | None = None
    max_failures: int = Field(2, ge=0, strict=True)  # retries of a trial from its last checkpoint
    keep_checkpoints: int = Field(1, ge=1, strict=True)  # best checkpoints kept per trial (the latest is kept too)
    experiment: str = "beamtune"  # MLflow experiment of the parent run
    # A sweep of more trials than this is refused (a mistyped grid of a million points would crash
    # the driver); raise it, up to MAX_TRIALS, to confirm a big sweep.
    max_trials: int = Field(DEFAULT_MAX_TRIALS, ge=1, le=MAX_TRIALS, strict=True)

    @field_validator("space")
    @classmethod
    def _not_empty(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        if not space:
            raise ValueError("empty search space: list at least one parameter, or leave `space` out to run "
                             "the fixed parameters")
        return space

    # ---- derived -----------------------------------------------------------------------------

    @property
    def stage_info(self) -> SweepStage:
        return STAGES[self.stage]

    def param_space(self) -> dict[str, Any]:
        """Ray Tune param space: the fixed values and one domain per searched parameter."""
        return {**self.fixed, **{name: dist.to_tune() for name, dist in self.space.items()}}

    def to_yaml(self) -> str:
        """The spec as a file that loads back to it: a spec without a search space leaves `space` out
        (an empty one written out is refused on loading, as a space someone forgot to fill)."""
        data = self.model_dump(mode="json", exclude_none=True)
        if not data["space"]:
            del data["space"]
        return yaml.safe_dump(data, sort_keys=False)


# ----------------------------------------------------------------------------------------------
# Loading and the checks pydantic cannot do alone.


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; read it as a float like everyone expects. A key given
    twice in one mapping is an error (plain YAML keeps the last value without a word)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, typing.Hashable) and key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {first_line[key]})", key_node.start_mark)
                if isinstance(key, typing.Hashable):
                    first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


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


def semantic_problems(spec: SweepSpec, storage: str | os.PathLike | None = None, need_data: bool = True) -> list[str]:
    """Everything that needs core or the sweep storage: task, stage, parameter names and values,
    metric, warm start (and the data root unless `need_data` is False: a reader of MLflow). Returns
    one line per problem; values are checked only when everything else is right (their check builds
    the core configs)."""
    problems = task_problems(spec, need_data) + stage_problems(spec)
    objective = STAGES[spec.stage].objective if spec.stage in STAGES else "ce"
    problems += name_problems(spec, objective) + search_problems(spec) + metric_problems(spec) + device_problems(spec)
    problems += value_type_problems(spec, objective) + trial_count_problems(spec)
    if not problems:
        problems += value_problems(spec, objective)
    problems += warm_start_requirement_problems(spec)
    if spec.warm_start is not None:
        problems += warm_start_problems(spec.warm_start, storage)
    return problems


def task_problems(spec: SweepSpec, need_data: bool = True) -> list[str]:
    from core.data import TASKS

    if spec.task not in TASKS:
        return [f"task: unknown task {spec.task!r}; valid tasks: {', '.join(TASKS)}"]
    if spec.task == "synthetic" or not need_data:
        return []
    root = spec.data_root or os.environ.get("BEAMTUNE_DATA")
    if not root:
        return [f"data_root: task {spec.task!r} needs a data root (data_root: or $BEAMTUNE_DATA)"]
    if not Path(root).is_dir():
        return [f"data_root: {root} is not a directory"]
    return []


def stage_problems(spec: SweepSpec) -> list[str]:
    if spec.stage not in STAGES:
        return [f"stage: unknown stage {spec.stage!r}; available: {', '.join(STAGES)}"]
    return []


def name_problems(spec: SweepSpec, objective: str) -> list[str]:
    """Parameter names: fields of the stage's configs, not set by the sweep itself, fixed or searched."""
    problems = []
    known = {**_train_fields(objective), **_model_fields(objective)}
    owners = (f"{top_config_class(objective).__name__} fields" if objective in EVALUATIONS
              else f"TrainConfig or {model_config_class(objective).__name__} fields")
    for section, names in (("fixed", spec.fixed), ("space", spec.space)):
        for name in names:
            if name == "epochs":
                problems.append(f"{section}.epochs: set epochs at the top level of the spec (it is ASHA's max_t)")
            elif name in RESERVED:
                problems.append(f"{section}.{name}: set by the sweep itself, not by a spec")
            elif name not in known:
                problems.append(f"{section}.{name}: unknown parameter; parameters are {owners}")
    for name in set(spec.fixed) & set(spec.space):
        problems.append(f"space.{name}: also in fixed; a parameter is either fixed or searched")
    return problems


def search_problems(spec: SweepSpec) -> list[str]:
    """The search algorithm against the kinds of the space's distributions."""
    kinds = {name: d.kind for name, d in spec.space.items()}
    if spec.search.algorithm == "grid":
        return [f"space.{name}: search.algorithm grid needs a list of values (grid: [...]), not {kind}"
                for name, kind in kinds.items() if kind not in ("grid", "choice")]
    if spec.search.algorithm == "optuna":
        return [f"space.{name}: grid values need search.algorithm grid (Optuna samples; use choice)"
                for name, kind in kinds.items() if kind == "grid"]
    return []


def device_problems(spec: SweepSpec) -> list[str]:
    """A trial asked to run on a GPU must be given one: Ray hides every GPU from a trial that asked
    for none (CUDA_VISIBLE_DEVICES is empty), so it would fail at its start."""
    devices = [("fixed.device", spec.fixed["device"])] if "device" in spec.fixed else []
    if "device" in spec.space:
        devices += [("space.device", value) for value in spec.space["device"].corners()]
    return [f"{where}: {value!r} needs a GPU per trial; set resources.gpu (e.g. 0.25), or device: auto"
            for where, value in devices if str(value).startswith("cuda") and spec.resources.gpu == 0]


def metric_problems(spec: SweepSpec) -> list[str]:
    problems = []
    if spec.metric not in REPORTED_METRICS:
        problems.append(f"metric: {spec.metric!r} is not reported by trials; one of {', '.join(REPORTED_METRICS)}")
    if spec.scheduler.type == "asha" and spec.scheduler.grace_period > spec.epochs:
        problems.append(f"scheduler.grace_period: {spec.scheduler.grace_period} is more than epochs ({spec.epochs})")
    return problems


def config_error(spec: SweepSpec, objective: str, params: dict[str, Any]) -> str | None:
    """Build the core configs a trial with `params` would build; core's own checks run, and the
    first problem comes back as one line (None when there is none)."""
    from core.config import ConfigError

    stage = spec.stage_info
    # The warm start is checked on its own; here it only stands in for core's "needs init" check.
    placeholder = {stage.warm_field: "<warm start>"} if stage.warm_start != "never" else {}
    top, model = split_params(params, objective)
    model_class = model_config_class(objective)
    try:
        if objective in EVALUATIONS:
            top_config_class(objective)(**top, **placeholder)
            return None
        top_config_class(objective)(task=spec.task, out="-", objective=objective, epochs=spec.epochs, **top, **placeholder)
        arch = {"arch": top.get("arch", "blstm")} if model_class.__name__ == "InfnetConfig" else {}
        model_class(n_words=2, n_chars=2, n_labels=2, **arch, **model)
    except ConfigError as error:
        return error.message
    except (ValueError, TypeError) as error:  # the model configs' errors: "TaggerConfig.dropout must be ..."
        return str(error).splitlines()[0].removeprefix(f"{model_class.__name__}.")
    return None


def value_problems(spec: SweepSpec, objective: str) -> list[str]:
    """The fixed values, then each boundary value of each searched parameter (Distribution.corners)."""
    base = config_error(spec, objective, dict(spec.fixed))
    if base:
        return [f"fixed: {base}"]
    problems = []
    for name, dist in spec.space.items():
        for value in dist.corners():
            error = config_error(spec, objective, {**spec.fixed, name: value})
            if error:
                problems.append(f"space.{name}: value {value!r}: {error}")
                break
    return problems


def _type_error(annotation: Any, value: Any) -> str | None:
    """Why `value` cannot go into a config field declared `annotation` (None if it can). Only the
    scalar kinds are checked: an int field must get an int (not 32.5, 32.0 or true: a float batch
    size passes core's range checks and fails inside a trial), a float field a number, a bool
    field a bool, a str field a string."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, type(int | None)) else (annotation,)
    if value is None:
        return None if type(None) in options else "null is not allowed here"
    if Any in options or not set(options) & {int, float, bool, str}:
        return None
    if int in options and isinstance(value, int) and not isinstance(value, bool):
        return None
    if float in options and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if bool in options and isinstance(value, bool) or str in options and isinstance(value, str):
        return None
    wanted = " or ".join({int: "an integer", float: "a number", bool: "true or false", str: "a string"}[t]
                         for t in options if t in (int, float, bool, str))
    return f"{value!r} is not {wanted}"


def value_type_problems(spec: SweepSpec, objective: str) -> list[str]:
    """One problem per fixed value, or searched value (each choice; the bounds of a range), whose
    type does not fit its config field."""
    hints: dict[str, Any] = {}
    classes = [top_config_class(objective)] + ([model_config_class(objective)] if objective not in EVALUATIONS else [])
    for cls in classes:
        hints.update(typing.get_type_hints(cls))
    problems = []
    for name, value in spec.fixed.items():
        error = _type_error(hints[name], value) if name in hints else None
        if error:
            problems.append(f"fixed.{name}: {error}")
    for name, dist in spec.space.items():
        for value in dist.corners() if name in hints else []:
            error = _type_error(hints[name], value)
            if error:
                problems.append(f"space.{name}: value {error}")
                break
    return problems


def warm_start_requirement_problems(spec: SweepSpec) -> list[str]:
    if spec.stage not in STAGES:
        return []
    stage = spec.stage_info
    if stage.warm_start == "required" and spec.warm_start is None:
        sources = " or ".join(stage.warm_from) or "an earlier stage"
        return [f"warm_start: stage {spec.stage!r} must start from a checkpoint: "
                f"give warm_start: {{sweep: NAME}} (the best trial of a {sources} sweep) or {{checkpoint: PATH}}"]
    if spec.warm_start is not None and stage.warm_start == "never":
        return [f"warm_start: stage {spec.stage!r} trains from scratch; remove warm_start"]
    return []


def trial_count(spec: SweepSpec) -> int:
    """How many trials the sweep would run: every grid point (with search grid, every choice too)
    num_samples times."""
    points = 1
    for dist in spec.space.values():
        if dist.kind == "grid" or dist.kind == "choice" and spec.search.algorithm == "grid":
            points *= len(dist.grid if dist.kind == "grid" else dist.choice)
    return points * spec.num_samples


def trial_count_problems(spec: SweepSpec) -> list[str]:
    count = trial_count(spec)
    if count <= spec.max_trials:
        return []
    return [f"space: the sweep would run {count} trials (grid points x num_samples), more than max_trials "
            f"({spec.max_trials}); set max_trials (at most {MAX_TRIALS}) to confirm, or shrink the grid"]


def warm_start_problems(warm: WarmStart, storage: str | os.PathLike | None) -> list[str]:
    from core.checkpoint import MANIFEST
    from storage.best import SweepNotFound, best_checkpoint

    if warm.checkpoint is not None:
        if not (Path(warm.checkpoint) / MANIFEST).is_file():
            return [f"warm_start.checkpoint: {warm.checkpoint} is not a checkpoint directory (no {MANIFEST})"]
        return []
    try:
        best_checkpoint(storage, warm.sweep, warm.metric, where=warm.where)
    except SweepNotFound as error:
        return [f"warm_start.sweep: {error}"]
    return []


def load_spec(path: str | os.PathLike, storage: str | os.PathLike | None = None) -> SweepSpec:
    """Read and fully validate a spec file; raises SpecError with every problem found."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec: {path}: no such file"])
    return validate(read_yaml(path), storage)


def read_saved_spec(path: Path) -> Any:
    """A sweep's saved spec.yaml (SweepSpec.to_yaml) as YAML data. Sweeps saved before to_yaml left an
    empty search space out have `space: {}`, which stood for no space: read as such, so that those
    sweeps still resume and compare."""
    data = read_yaml(path)
    if isinstance(data, dict) and data.get("space") == {}:
        del data["space"]
    return data


def read_yaml(path: Path) -> Any:
    """The spec file's YAML data; an undecodable byte or a YAML error is one line naming its line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark some editors write is not part of the YAML
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SpecError([f"spec: {path}: line {line}: byte 0x{raw[error.start]:02x} is not UTF-8; save the spec as UTF-8"]) from None
    # PyYAML refuses a tab after a value ("cannot start any token") though YAML 1.2 allows it;
    # trailing spaces and tabs carry no meaning in a spec, so they go.
    text = re.sub(r"[ \t]+(?=\r?$)", "", text, flags=re.MULTILINE)
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(part for part in (error.context, error.problem) if part)
        raise SpecError([f"spec: {path}: {where}not valid YAML: {what}"]) from None
    except yaml.YAMLError as error:
        raise SpecError([f"spec: {path}: not valid YAML: {str(error).splitlines()[0]}"]) from None


def validate(data: Any, storage: str | os.PathLike | None = None) -> SweepSpec:
    spec = parse_spec(data)
    problems = semantic_problems(spec, storage)
    if problems:
        raise SpecError(problems)
    return spec
