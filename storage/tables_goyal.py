"""Goyal et al. (2018) Tables 1-2 from tracked sweeps: one row per training objective, columns
greedy / hard beam / soft beam x dev / test.

Rows (the paper's order): CE; G~hinge annealed alpha; G~hinge alpha = 1; G~DL alpha = 1; G~DL
annealed alpha. A trial's row comes from its stage and its alpha schedule (core.schedules: a
constant schedule is "alpha = c", any other is "annealed").

Selection, as the paper does it (§3.3: model selection on dev, random restarts): within a row, the
trials are grouped by their hyperparameters other than the seed; the group with the best mean dev
score on the row's own selection decoder (greedy for CE, hard beam for the search-aware rows, as
core.train selects checkpoints) is reported, as mean +- sd over its seeds.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from storage import tracking
from storage.runs import FINAL_PREFIX, Sweep, Trial

SPLITS = ("dev", "test")
SEARCH_STAGES = ("hinge", "dl")
STAGE_TITLES = {"ce": "Baseline CE", "hinge": "G~hinge", "dl": "G~DL"}
NOT_SELECTION_PARAMS = {"seed"}


@dataclass
class Cell:
    values: list[float]
    run_ids: list[str]
    note: str = ""  # why a cell is empty: "not run", "failed", "no final scores"
    metric: str = ""  # the MLflow metric of its values, where it is not the column's (Table.metric_keys)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class Table:
    title: str
    columns: list[tuple[str, str]]  # (decoder label, split)
    rows: list[tuple[str, list[Cell]]]
    metric_keys: list[str] = field(default_factory=list)  # per column: the MLflow metric its cells come from
    column_names: tuple[str, str] = ("decoder", "split")  # what the two parts of a column are (CSV header)
    row_header: str = "training"  # what the rows are (the first column's heading)
    notes: list[str] = field(default_factory=list)
    scale: float = 100.0  # scores are fractions; tables show percent
    refs_key: str = ""  # its section of a references file that has one per table ("Table 4"); "": the whole file
    scales: list[float] = field(default_factory=list)  # per column where they differ (Table 6: scores, energies)
    metric: str = "score"  # the metric of every cell (e.g. macro_f1), so paper values go beside the right table

    def column_scale(self, i: int) -> float:
        return self.scales[i] if self.scales else self.scale


def alpha_row(stage: str, params: dict[str, str]) -> str:
    """Row key of a trial: "ce", or "<stage> alpha=<c>" / "<stage> annealed"."""
    if stage not in SEARCH_STAGES:
        return stage
    schedule = _alpha_schedule(params)
    if schedule.to_dict()["schedule"] == "constant":
        return f"{stage} alpha={schedule.at(1):g}"
    return f"{stage} annealed"


def _alpha_schedule(params: dict[str, str]):
    from core.schedules import from_config
    from core.train import TrainConfig

    nested = {k.split(".", 1)[1]: _number(v) for k, v in params.items() if k.startswith("alpha.")}
    if nested:
        return from_config(nested)
    raw = params.get("alpha", TrainConfig.__dataclass_fields__["alpha"].default)
    return from_config(_number(raw))


def _number(text: Any) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in str(text) else value


def row_title(key: str) -> str:
    stage, _, rest = key.partition(" ")
    title = STAGE_TITLES.get(stage, stage)
    if rest == "annealed":
        return f"{title} annealed α"
    if rest.startswith("alpha="):
        return f"{title} α = {rest[len('alpha='):]}"
    return title


def paper_row_order(keys: Iterable[str]) -> list[str]:
    preferred = ["ce", "hinge annealed", "hinge alpha=1", "dl alpha=1", "dl annealed"]
    keys = set(keys) | set(preferred)
    return [k for k in preferred if k in keys] + sorted(keys - set(preferred))


def decoders_of(trials: list[Trial]) -> list[tuple[str, str]]:
    """(label, metric-key decoder) for greedy, the hard beam and the soft beam the trials report."""
    found = {key.split(".")[2] for t in trials for key in t.metrics if key.startswith("final.dev.")}
    beams = sorted(d for d in found if d.startswith("beam"))
    softs = sorted(d for d in found if d.startswith("soft_beam"))
    out = [("greedy", "greedy")]
    out += [(f"hard beam (k = {d[4:]})", d) for d in beams]
    out += [(f"soft beam (k = {d[9:]})", d) for d in softs]
    return out


def selection_decoder(stage: str, decoders: list[tuple[str, str]]) -> str:
    beams = [d for _, d in decoders if d.startswith("beam")]
    return "greedy" if stage not in SEARCH_STAGES or not beams else beams[0]


def select_group(trials: list[Trial], decoder: str, metric: str) -> tuple[list[Trial], int, list[Trial]]:
    """The trials of the hyperparameter setting (all but the seed) with the best mean dev score
    among the settings with the most seeds, how many settings there were, and the repeated runs
    left out (of any setting: a repeat counted would have changed which settings are eligible). Only the best-replicated settings are eligible, so one lucky seed of a
    side sweep (Figure 1's other hidden sizes, run with one seed) cannot outrank a setting's mean
    over three. A seed counts once per setting: a setting run again with the same seed (a scan
    that includes the main setting, in a sweep beside the main one) is the same sample, and pooled
    it would understate the sd. The first run of a seed in `trials`' order is kept."""
    groups: dict[tuple, list[Trial]] = defaultdict(list)
    repeats: dict[tuple, list[Trial]] = defaultdict(list)
    for trial in trials:
        key = tuple(sorted((k, v) for k, v in trial.params.items() if k not in NOT_SELECTION_PARAMS))
        same_seed = any(t.seed == trial.seed for t in groups[key])
        (repeats if same_seed else groups)[key].append(trial)

    def mean_dev(group: list[Trial]) -> float:
        scores = [t.final("dev", decoder, metric) for t in group]
        scores = [s for s in scores if s is not None]
        return statistics.fmean(scores) if scores else float("-inf")

    most = max(len(group) for group in groups.values())
    best = max((group for group in groups.values() if len(group) == most), key=mean_dev)
    return best, len(groups), [t for group in repeats.values() for t in group]


def repeats_note(where: str, repeated: list[Trial]) -> str:
    """The note for a cell where a setting ran a seed more than once (select_group)."""
    runs = ", ".join(f"{t.name} ({t.tags.get(tracking.SWEEP_TAG, t.run_id)})" for t in repeated)
    return f"{where}: a setting run again with a seed it already had counts each seed once (its first run); left out: {runs}"


def goyal_table(sweeps: list[Sweep], metric: str = "score", title: str = "") -> Table:
    """Goyal et al. Tables 1-2 from the given sweeps (CE and the soft-beam stages)."""
    rows_trials: dict[str, list[Trial]] = defaultdict(list)
    problems: dict[str, list[str]] = defaultdict(list)
    for sweep in sweeps:
        for trial in sweep.trials:
            key = alpha_row(sweep.stage, trial.params)
            if trial in sweep.finished:
                rows_trials[key].append(trial)
            else:
                problems[key].append(_why_missing(trial))
    every = [t for ts in rows_trials.values() for t in ts]
    decoders = decoders_of(every)
    columns = [(label, split) for label, _ in decoders for split in SPLITS]
    table = Table(title=title or "Goyal et al. (2018), Tables 1-2 layout", columns=columns, rows=[],
                  metric_keys=[f"{FINAL_PREFIX}.{split}.{decoder}.{metric}" for _, decoder in decoders for split in SPLITS],
                  metric=metric)
    for key in paper_row_order(list(rows_trials) + list(problems)):
        table.rows.append((row_title(key), _row_cells(key, rows_trials.get(key, []), problems.get(key, []),
                                                      decoders, metric, table.notes)))
    return table


def _why_missing(trial: Trial) -> str:
    if trial.status == "FAILED":
        return "failed"
    if trial.status == "RUNNING":
        return "running"
    return "stopped early" if trial.stopped_early else "no final scores"


def _row_cells(key: str, trials: list[Trial], problems: list[str], decoders, metric: str, notes: list[str]) -> list[Cell]:
    if not trials:
        why = ", ".join(sorted(set(problems))) or "not run"
        return [Cell([], [], why) for _ in decoders for _ in SPLITS]
    stage = key.split(" ")[0]
    chosen, settings, repeated = select_group(trials, selection_decoder(stage, decoders), metric)
    if repeated:
        notes.append(repeats_note(row_title(key), repeated))
    if settings > 1:
        notes.append(f"{row_title(key)}: best of {settings} hyperparameter settings by mean dev "
                     f"{selection_decoder(stage, decoders)} (those with the most seeds); {len(chosen)} seed(s)")
    if problems:
        notes.append(f"{row_title(key)}: {len(problems)} trial(s) left out ({', '.join(sorted(set(problems)))})")
    stayed = sum(t.metrics.get(f"{FINAL_PREFIX}.best_epoch") == 0 for t in chosen)
    if stayed:  # core.train keeps the warm start (epoch 0) when no epoch beats it on dev
        notes.append(f"{row_title(key)}: the warm start stayed best on dev (no epoch improved it) in {stayed} of "
                     f"{len(chosen)} seed(s), so those cells are the warm start's scores")
    cells = []
    for _, decoder in decoders:
        for split in SPLITS:
            pairs = [(t.final(split, decoder, metric), t.run_id) for t in chosen]
            pairs = [(v, r) for v, r in pairs if v is not None]
            cells.append(Cell([v for v, _ in pairs], [r for _, r in pairs], "" if pairs else "not evaluated"))
    return cells
