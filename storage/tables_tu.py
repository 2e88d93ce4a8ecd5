"""Tu & Gimpel (2019) Tables 1, 4 and 5 from tracked sweeps: methods (local baselines, inference
networks per architecture, gradient descent, Viterbi) x tasks, test scores.

A trial's row and column come from its stage and parameters:

    crf / crf+           "Viterbi" / "Viterbi (CRF+)"                     column (task, "CRF")
    local                "local baseline" (+ "+" with plus, "2-layer", ...) column (task, arch)
    infnet               "infnet" (+ "+", "2-layer", "λ annealed")         column (task, arch)
    gd-oracle            "gradient descent (oracle-tuned per instance)"    column (task, "CRF")

Within a cell, trials are grouped by their other hyperparameters; the group with the best mean
dev score is reported as mean +- sd over its seeds (storage.tables_goyal.select_group), as the
paper tunes on dev.
"""
from __future__ import annotations

from collections import defaultdict

from storage.runs import FINAL_PREFIX, Sweep, Trial
from storage.tables_goyal import Cell, Table, select_group

CRF_COLUMN = "CRF"
ROW_ORDER = ("local baseline", "infnet", "gradient descent (oracle-tuned per instance)", "Viterbi")
TRUE = ("true", "1", "yes")


def _flag(params: dict[str, str], name: str) -> bool:
    return str(params.get(name, "false")).lower() in TRUE


def _default(field: str):
    from core.train import TrainConfig

    return TrainConfig.__dataclass_fields__[field].default


def _lambda_annealed(params: dict[str, str]) -> bool:
    if _flag(params, "lam_anneal"):
        return True
    lam = params.get("lam")
    return isinstance(lam, str) and ":" in lam  # a schedule such as decay:1:0.01


def network_row(stage: str, params: dict[str, str]) -> str:
    """Row title of a local baseline or inference network trial."""
    title = "local baseline" if stage == "local" else "infnet"
    if _flag(params, "plus"):
        title += "+"
    extras = []
    if int(params.get("layers", _default("layers"))) > 1:
        extras.append(f"{params['layers']}-layer")
    if stage == "infnet" and _lambda_annealed(params):
        extras.append("λ annealed")
    return title + (f" ({', '.join(extras)})" if extras else "")


def trial_place(sweep: Sweep, trial: Trial, crf_stage_of: dict[str, str]) -> tuple[str, tuple[str, str]] | None:
    """(row title, (task, column)) of a trial, or None for a stage this layout does not show."""
    if sweep.stage in ("crf", "crf+"):
        return ("Viterbi" if sweep.stage == "crf" else "Viterbi (CRF+)"), (sweep.task, CRF_COLUMN)
    if sweep.stage in ("local", "infnet"):
        arch = trial.params.get("arch", _default("arch"))
        return network_row(sweep.stage, trial.params), (sweep.task, arch)
    if sweep.stage == "gd-oracle":
        plus = crf_stage_of.get(sweep.name) == "crf+"
        return f"gradient descent (oracle-tuned per instance){' (CRF+)' if plus else ''}", (sweep.task, CRF_COLUMN)
    return None


def _decoder(trial: Trial) -> str | None:
    keys = sorted({k.split(".")[2] for k in trial.metrics if k.startswith(f"{FINAL_PREFIX}.test.")})
    return keys[0] if keys else None


def _scores(trial: Trial, stage: str) -> tuple[float | None, float | None]:
    """(dev, test) of a trial: its final scores, or for the GD oracle the oracle score it reports."""
    if stage == "gd-oracle":  # one split per oracle trial (OracleConfig.split); reported as dev_score
        split = trial.params.get("split", "test")
        value = trial.metrics.get("dev_score")
        return (value, None) if split == "dev" else (None, value)
    decoder = _decoder(trial)
    if decoder is None:
        return None, None
    return trial.final("dev", decoder), trial.final("test", decoder)


def tu_table(sweeps: list[Sweep], crf_stage_of: dict[str, str] | None = None, title: str = "") -> Table:
    """Methods x (task, architecture) of test scores, as Tu & Gimpel's Tables 1, 4 and 5."""
    cells: dict[tuple[str, tuple[str, str]], list[tuple[Trial, str]]] = defaultdict(list)
    for sweep in sweeps:
        for trial in sweep.trials:
            if trial.status != "FINISHED":
                continue
            place = trial_place(sweep, trial, crf_stage_of or {})
            if place is not None:
                cells[place].append((trial, sweep.stage))
    columns = sorted({col for _, col in cells}, key=lambda c: (c[0], c[1] == CRF_COLUMN, c[1]))
    rows = sorted({row for row, _ in cells}, key=_row_rank)
    table = Table(title=title or "Tu & Gimpel (2019) layout: test scores (%)", columns=columns, rows=[],
                  column_names=("task", "architecture"))
    for row in rows:
        table.rows.append((row, [_cell(cells.get((row, col), []), table.notes, row, col) for col in columns]))
    table.metric_keys = ["test score" for _ in columns]
    return table


def _row_rank(row: str) -> tuple[int, str]:
    return next((i for i, prefix in enumerate(ROW_ORDER) if row.startswith(prefix)), len(ROW_ORDER)), row


def _cell(entries: list[tuple[Trial, str]], notes: list[str], row: str, col: tuple[str, str]) -> Cell:
    if not entries:
        return Cell([], [], "not run")
    stage = entries[0][1]
    dev_of = {t.run_id: _scores(t, stage)[0] for t, _ in entries}
    trials = [t for t, _ in entries]
    if any(v is not None for v in dev_of.values()):
        chosen, settings = _select_by(trials, dev_of)
        if settings > 1:
            notes.append(f"{row}, {col[0]} {col[1]}: best of {settings} settings by mean dev; {len(chosen)} seed(s)")
    else:
        chosen = trials
    pairs = [(_scores(t, stage)[1], t.run_id) for t in chosen]
    pairs = [(v, r) for v, r in pairs if v is not None]
    return Cell([v for v, _ in pairs], [r for _, r in pairs], "" if pairs else "no test score")


def _select_by(trials: list[Trial], dev_of: dict[str, float | None]) -> tuple[list[Trial], int]:
    scored = [Trial(t.run_id, t.experiment_id, t.name, t.status, t.params, t.tags,
                    {**t.metrics, f"{FINAL_PREFIX}.dev.__sel__.score": dev_of[t.run_id]} if dev_of[t.run_id] is not None
                    else t.metrics) for t in trials]
    chosen, settings = select_group(scored, "__sel__", "score")
    ids = {t.run_id for t in chosen}
    return [t for t in trials if t.run_id in ids], settings
