"""Studies: a paper's experiment as one resumable command. A study is a YAML file of stages; each
stage is a sweep spec (inline, or a path relative to the study file) and may warm-start from an
earlier stage's best trial:

    name: goyal_ccg
    about: |                          # what it reproduces, its compute, the reduced command (report header)
      Goyal et al. (2018) Table 1 ...
    references: ../../benchmarks/references/goyal2018_ccg.yaml   # optional paper values for the report
    stages:
      ce: {spec: {task: ccgbank, stage: ce, epochs: 50, ...}}
      dl: {spec: dl.yaml, warm_start: {stage: ce}}          # a spec file beside the study

Stage `S` of study `N` runs as the sweep `N-S` (its own folder, resume and MLflow runs, as every
sweep); `warm_start: {stage: S}` becomes `warm_start: {sweep: N-S}` (that sweep's best trial by its
metric, or `metric:` given here; among its trials with given parameter values with
`where: {arch: blstm}`). Stages run in dependency order, or with --parallel each as soon as the
stage it warm-starts from has finished.

    load_study(path, overrides) -> Study       validated as a whole; StudyError lists every problem
    select_stages(study, names) -> [stage]     those stages and what they warm-start from (`--stages`)
    stage_status(study, storage) -> {stage: Status}   in sweeps.study_status
    run_study(study, ...)                      in sweeps.study_run (needs Ray; sweeps.study_parallel)

Overrides (`--set`): `KEY=VALUE` sets a top-level spec field of every stage (`epochs=3`);
`stages.S.PATH=VALUE` one field of stage S's spec (`stages.ce.num_samples=2`,
`stages.ce.fixed.lr=0.01`). VALUE is read as YAML. A study run with overrides is "reduced", and
its report says so.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sweeps.spec import STAGES, SpecError, SweepSpec, _Loader, parse_spec, read_yaml, semantic_problems

STUDY_KEYS = {"name", "about", "references", "stages", "experiment"}
STAGE_KEYS = {"spec", "warm_start"}
# What each stage's trials leave behind, so a warm start can be checked before anything runs.
CHECKPOINT_KIND = {"ce": "seq2seq", "dl": "seq2seq", "hinge": "seq2seq", "crf": "crf", "crf+": "crf",
                   "local": "local", "infnet": "infnet"}


_SENTENCE_END = re.compile(r"(?<!\bet al)\.(?=\s|$)")


class StudyError(ValueError):
    """An invalid study; `problems` has one `FIELD: message` line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class StudyStage:
    name: str
    spec: SweepSpec
    after: str | None  # the stage it warm-starts from


@dataclass
class Study:
    name: str
    path: Path
    about: str
    references: Path | None
    stages: dict[str, StudyStage]  # in dependency order
    overrides: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def reduced(self) -> bool:
        return bool(self.overrides)

    @property
    def title(self) -> str:
        """The report's first header line: the first sentence of `about`, its line breaks joined
        (a sentence ends at a full stop before a space, not the one of "et al."); or the name."""
        text = " ".join(self.about.split())
        end = _SENTENCE_END.search(text)
        return (text[:end.end()] if end else text) or f"study {self.name}"

    def sweep_name(self, stage: str) -> str:
        return f"{self.name}-{stage}"


def _read_yaml(path: Path) -> tuple[Any, str]:
    """(data, text) of a study or spec file, read as sweeps.spec reads specs (BOM, CRLF, duplicate
    keys, the line of a YAML error)."""
    try:
        return read_yaml(path), path.read_text(encoding="utf-8-sig")
    except SpecError as error:
        raise StudyError([p.replace("spec: ", "study: ", 1) for p in error.problems]) from None
    except OSError as error:
        raise StudyError([f"study: {path}: {error.strerror}"]) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise StudyError([f"--set {text}: expected KEY=VALUE"])
    try:
        return key.strip().split("."), yaml.load(value, Loader=_Loader)
    except yaml.YAMLError as error:
        raise StudyError([f"--set {text}: VALUE is not valid YAML: {str(error).splitlines()[0]}"]) from None


def _set_path(target: dict, path: list[str], value: Any, where: str) -> None:
    for part in path[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise StudyError([f"--set {where}: {part} is not a mapping"])
        target = child
    target[path[-1]] = value


def apply_overrides(specs: dict[str, dict], overrides: list[str]) -> None:
    """Apply `--set` overrides to the stages' raw spec mappings, in place."""
    for text in overrides:
        path, value = parse_override(text)
        if path[0] == "stages":
            if len(path) < 3 or path[1] not in specs:
                raise StudyError([f"--set {text}: stages.NAME.FIELD with NAME one of {', '.join(specs)}"])
            _set_path(specs[path[1]], path[2:], value, text)
        else:
            for spec in specs.values():
                _set_path(spec, path, value, text)


def _stage_specs(data: dict, base: Path, problems: list[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """The raw spec mapping and the warm-start entry of each stage (paths resolved)."""
    specs, warm = {}, {}
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        problems.append("stages: a study needs a mapping of one or more stages")
        return specs, warm
    for name, entry in stages.items():
        where = f"stages.{name}"
        if not isinstance(entry, dict) or "spec" not in entry:
            problems.append(f"{where}: needs spec: (a mapping, or a path to a sweep spec)")
            continue
        for key in sorted(set(entry) - STAGE_KEYS):
            problems.append(f"{where}.{key}: unknown field; a stage has {', '.join(sorted(STAGE_KEYS))}")
        raw = entry["spec"]
        if isinstance(raw, str):
            try:
                raw, _ = _read_yaml((base / raw).resolve())
            except StudyError as error:
                problems += [f"{where}.spec: {p}" for p in error.problems]
                continue
        if not isinstance(raw, dict):
            problems.append(f"{where}.spec: must be a mapping of sweep spec fields")
            continue
        specs[name], warm[name] = copy.deepcopy(raw), entry.get("warm_start")
    return specs, warm


def dependency_order(after: dict[str, str | None]) -> list[str]:
    """Stages ordered so each comes after the stage it warm-starts from; raises on a cycle."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(stage: str, chain: list[str]) -> None:
        if stage in order:
            return
        if stage in visiting:
            raise StudyError([f"stages.{stage}.warm_start: cycle {' -> '.join(chain + [stage])}"])
        visiting.add(stage)
        if after[stage] is not None:
            visit(after[stage], chain + [stage])
        visiting.discard(stage)
        order.append(stage)

    for stage in after:
        visit(stage, [])
    return order


def _warm_start(name: str, entry: Any, specs: dict[str, dict], problems: list[str]) -> str | None:
    """Check a stage's `warm_start: {stage: S[, metric: M][, where: {PARAM: VALUE}]}`; returns S (or
    None). `where` may only name parameters that stage S fixes or searches."""
    if entry is None:
        return None
    where = f"stages.{name}.warm_start"
    if not isinstance(entry, dict) or set(entry) - {"stage", "metric", "where"} or "stage" not in entry:
        problems.append(f"{where}: expected {{stage: NAME}} (optionally metric:, where:); a checkpoint path goes in the spec")
        return None
    source = entry["stage"]
    if source not in specs:
        problems.append(f"{where}.stage: unknown stage {source!r}; stages: {', '.join(specs)}")
        return None
    if isinstance(entry.get("where"), dict):
        known = set(specs[source].get("fixed") or {}) | set(specs[source].get("space") or {})
        problems += [f"{where}.where.{param}: stage {source!r} neither fixes nor searches {param!r}"
                     for param in entry["where"] if param not in known]
    mine, theirs = specs[name].get("stage"), specs[source].get("stage")
    if mine in STAGES and theirs in STAGES:
        needed = {CHECKPOINT_KIND.get(s) for s in STAGES[mine].warm_from or ((mine,) if mine == "ce" else ())}
        if CHECKPOINT_KIND.get(theirs) not in needed:
            wanted = ", ".join(s for s in STAGES if CHECKPOINT_KIND.get(s) in needed) or "nothing"
            problems.append(f"{where}.stage: stage {name!r} ({mine}) cannot start from stage {source!r} ({theirs}): "
                            f"it starts from {wanted}")
    return source


def _check_stage(study: str, name: str, raw: dict, source: str | None, warm: Any, problems: list[str],
                 need_data: bool = True) -> SweepSpec | None:
    """Validate one stage's spec as its sweep will run it; problems are prefixed `stages.NAME.spec.`.
    `need_data=False` leaves out the data root's checks (for readers of MLflow only, like the report)."""
    raw = {**raw, "name": f"{study}-{name}"}
    if source is not None:
        raw["warm_start"] = {"sweep": f"{study}-{source}", **{key: warm[key] for key in ("metric", "where") if key in warm}}
    where = f"stages.{name}.spec"
    try:
        spec = parse_spec(raw)
    except SpecError as error:
        problems += [f"{where}.{p}" for p in error.problems]
        return None
    # The warm-start sweep of a study stage does not exist before the study runs; it is checked
    # above (stage reference and checkpoint kind), so only the spec's own warm start is checked here.
    found = semantic_problems(spec.model_copy(update={"warm_start": None}), need_data=need_data)
    # A stage with a warm_start entry (valid or already reported above), or whose spec names its own
    # warm start (checked next), needs no complaint that it lacks one.
    has_own = spec.warm_start is not None and source is None
    problems += [f"{where}.{p}" for p in found if (warm is None and not has_own) or not p.startswith("warm_start:")]
    if source is None and spec.warm_start is not None:
        problems += [f"{where}.{p}" for p in semantic_problems(spec) if p.startswith("warm_start")]
    return spec


def load_study(path: str | os.PathLike, overrides: list[str] | None = None, need_data: bool = True) -> Study:
    """Read and validate a study as a whole; raises StudyError with every problem found. With
    `need_data=False` a study whose data root is missing loads (a report reads MLflow, not the data)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError([f"study: {path}: no such file"])
    data, text = _read_yaml(path)
    if not isinstance(data, dict):
        raise StudyError([f"study: {path}: must be a mapping (name, stages, ...)"])
    problems = [f"{key}: unknown field; a study has {', '.join(sorted(STUDY_KEYS))}" for key in sorted(set(data) - STUDY_KEYS)]
    name = data.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: a study needs a name")
        name = path.stem
    specs, warm = _stage_specs(data, path.parent, problems)
    apply_overrides(specs, overrides or [])
    after = {stage: _warm_start(stage, warm[stage], specs, problems) for stage in specs}
    order = dependency_order(after) if not problems else list(specs)
    checked = {stage: _check_stage(name, stage, specs[stage], after[stage], warm[stage], problems, need_data) for stage in order}
    references = None
    if data.get("references"):
        references = (path.parent / str(data["references"])).resolve()
        if not references.is_file():
            problems.append(f"references: {references}: no such file")
    if problems:
        raise StudyError(problems)
    stages = {stage: StudyStage(stage, checked[stage], after[stage]) for stage in order}
    return Study(name=name, path=path.resolve(), about=str(data.get("about", "")).strip(), references=references,
                 stages=stages, overrides=list(overrides or []), text=text)


def select_stages(study: Study, names: list[str]) -> list[str]:
    """The stages `names` and, transitively, the stages they warm-start from, in the study's
    dependency order: what `study run --stages a,b` runs (a stage cannot start from a sweep that
    never ran)."""
    unknown = [n for n in names if n not in study.stages]
    if unknown or not names:
        raise StudyError([f"--stages {','.join(names)}: unknown stage {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"stages: {', '.join(study.stages)}"])
    wanted: set[str] = set()
    for name in names:
        while name is not None and name not in wanted:
            wanted.add(name)
            name = study.stages[name].after
    return [stage for stage in study.stages if stage in wanted]
