"""Tu & Gimpel (2019) Tables 1-6 and Figures 1 and 2 from a study's tracked sweeps.

What a finished trial is (`Place`) comes from its sweep's stage and its parameters:

    crf / crf+     Viterbi with the BLSTM-CRF / BLSTM-CRF+ energy
    local          local baseline; `plus` (char CNN, dropout) puts it in the "+" tables
    infnet         inference network; `plus` likewise; `arch`, `layers`, `lam` as logged
    gd-oracle      gradient descent (oracle-tuned per instance) on the CRF its warm start names
                   (crf or crf+, found by storage.report from the sweep's spec)

    Table 1   BLSTM-CRF: local baseline, infnet x (task, CNN | BLSTM | seq2seq); GD, Viterbi x
              (task, CRF). CNN is whichever of the {1,3}- and {1,5}-gram windows is better on dev.
    Table 2   BLSTM-CRF, dev scores: local baseline, infnet x (task, {1,3}-gram | {1,5}-gram).
    Table 4   BLSTM-CRF+: local baseline, infnet+, GD, Viterbi x (task, the paper's architecture
              for the task: CNN for POS, seq2seq for NER, BLSTM for CCG; any other task: the best
              architecture on dev).
    Table 5   BLSTM-CRF+ with BLSTM networks: local baseline, infnet+ with 1 and 2 layers, Viterbi
              x (task, test); shown for a task with a 2-layer BLSTM infnet+.
    word vectors  Viterbi with BLSTM-CRFs of other word-vector settings (an embeddings ablation:
              none, GloVe fixed, GloVe fine-tuned), dev and test; those CRFs stay out of Tables 1
              and 4 when the paper's setting (fixed for the CRF, fine-tuned for the CRF+) ran.
    network word vectors  Table 1's local baselines and inference networks with other word-vector
              settings than the paper's fixed ones (test); kept out of Tables 1 and 2 and Figure 1
              likewise.
    Table 6   approximate inference by method and N (table6 sweeps; else gd-oracle ones: GD and
              Viterbi only): score and mean energy x task (the `table6` function below).
    Table 3   inference speed (examples/s) x (task; CNN | BLSTM | seq2seq infnet, Viterbi, GD), one
              table per batch size (speed sweeps, core.speed; the `table3` function below).
    Figure 2  score against seconds per sentence (log x), one point per method and task (speed
              sweeps, at batch 10 where logged; `figure2_points`).
    §6.2      search error against LM perplexity: mean search error, share of sentences with one,
              Spearman's rho with word / label perplexity and length x (task; inference network,
              GD), from search-error sweeps (core.search_correlation; `search_error_table`).
    Figure 1  dev score against the hidden size H of local baselines and inference networks
              (BLSTM-CRF energy), per task, one line per method and architecture; shown when the
              trials have more than one H.

A table appears when the sweeps have trials for it. In a cell, trials are grouped by their
hyperparameters other than the seed; the group with the best mean dev score is reported as mean
+- sd over its seeds, each seed once (storage.tables_goyal.select_group), as the paper tunes on
dev; the GD oracle reports one score per trial (on the split it ran on). Each table's `refs_key` names its section
of a references file (benchmarks/references/tu2019_*.yaml).
"""
from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from storage.runs import FINAL_PREFIX, Sweep, Trial
from storage.tables_goyal import NOT_SELECTION_PARAMS, Cell, Table, repeats_note, select_group

CRF_COLUMN = "CRF"
TRUE = ("true", "1", "yes")
PAPER_TASKS = ("twitter_pos", "conll2003_en", "ccgbank400", "ccgbank")  # the paper's column order
CNNS = ("cnn13", "cnn15")
ARCH_COLUMNS = (("CNN", CNNS), ("BLSTM", ("blstm",)), ("seq2seq", ("seq2seq",)))
WINDOW_COLUMNS = (("{1,3}-gram", ("cnn13",)), ("{1,5}-gram", ("cnn15",)))
# Table 4's architecture per task (its caption); a task the paper does not have: any, by dev.
TABLE4_ARCH = {"twitter_pos": ARCH_COLUMNS[0], "conll2003_en": ARCH_COLUMNS[2], "ccgbank400": ARCH_COLUMNS[1],
               "ccgbank": ARCH_COLUMNS[1]}
ANY_ARCH = ("any", ("cnn13", "cnn15", "blstm", "seq2seq"))
NETWORKS = ("local", "infnet")


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


def _select_by(trials: list[Trial], dev_of: dict[str, float | None]) -> tuple[list[Trial], int, list[Trial]]:
    scored = [Trial(t.run_id, t.experiment_id, t.name, t.status, t.params, t.tags,
                    {**t.metrics, f"{FINAL_PREFIX}.dev.__sel__.score": dev_of[t.run_id]} if dev_of[t.run_id] is not None
                    else t.metrics) for t in trials]
    chosen, settings, repeated = select_group(scored, "__sel__", "score")
    ids, left_out = {t.run_id for t in chosen}, {t.run_id for t in repeated}
    return [t for t in trials if t.run_id in ids], settings, [t for t in trials if t.run_id in left_out]


@dataclass(frozen=True)
class Place:
    """What a finished trial is, for the paper's tables."""

    task: str
    method: str  # local | infnet | gd | viterbi
    plus: bool  # BLSTM-CRF+ energy, or a network with the "+" techniques
    arch: str = ""  # networks: cnn13, cnn15, blstm, seq2seq
    layers: int = 1
    hidden: int | None = None  # networks: H as logged (None: the stage's default)
    vectors: str = ""  # Viterbi: the CRF's word vectors, none | fixed | tuned (pretrained, fine-tuned)


def trial_place(sweep: Sweep, trial: Trial, crf_stage_of: dict[str, str]) -> Place | None:
    """The Place of a trial, or None for a stage these tables do not show."""
    if sweep.stage in ("crf", "crf+"):
        return Place(sweep.task, "viterbi", sweep.stage == "crf+", vectors=_vectors(trial.params, sweep.stage == "crf+"))
    if sweep.stage == "gd-oracle":
        return Place(sweep.task, "gd", crf_stage_of.get(sweep.name) == "crf+")
    if sweep.stage in NETWORKS:
        params = trial.params
        hidden = params.get("hidden")
        plus = _flag(params, "plus")
        return Place(sweep.task, sweep.stage, plus, params.get("arch", _default("arch")),
                     int(params.get("layers", _default("layers"))), int(float(hidden)) if hidden is not None else None,
                     _network_vectors(sweep.stage, params, plus))
    return None


def _vectors(params: dict[str, str], plus: bool) -> str:
    """A CRF's word vectors: none, or pretrained and fixed / fine-tuned (core.stages.crf: fine-tuned
    by default for crf+ and without pretrained vectors)."""
    if not params.get("embeddings") or params.get("embeddings") == "None":
        return "none"
    if "finetune_embeddings" in params:
        return "tuned" if _flag(params, "finetune_embeddings") else "fixed"
    return "tuned" if plus else "fixed"


def _network_vectors(stage: str, params: dict[str, str], plus: bool) -> str:
    """A network's word vectors: fixed or fine-tuned as logged, else its stage's default
    (core.stages.infnet: pretrained vectors stay fixed but in the "+" setting; a local baseline
    without pretrained vectors learns its own). An inference network takes its CRF's vectors."""
    if "finetune_embeddings" in params:
        return "tuned" if _flag(params, "finetune_embeddings") else "fixed"
    if stage == "local" and (not params.get("embeddings") or params.get("embeddings") == "None"):
        return "none"
    return PAPER_VECTORS[plus]


# The paper's setting (Tu & Gimpel 2.1, 7): pretrained vectors, fixed in the BLSTM-CRF and its
# networks, fine-tuned in the BLSTM-CRF+ and the "+" networks. Other models of a study (an
# embeddings ablation) are left out of Tables 1, 2, 4 and 5 and Figure 1 when the paper's setting
# ran for that kind of model, and shown in a table of their own.
PAPER_VECTORS = {False: "fixed", True: "tuned"}
VECTOR_ROWS = (("no pretrained vectors", "none"), ("GloVe, fixed", "fixed"), ("GloVe, fine-tuned", "tuned"))
NETWORK_ROWS = (("local baseline", "local"), ("infnet", "infnet"))


Entry = tuple[Place, Trial, str]  # (place, trial, stage)
Match = Callable[[Place], bool]


def _entries(sweeps: list[Sweep], crf_stage_of: dict[str, str]) -> list[Entry]:
    found = []
    for sweep in sweeps:
        for trial in sweep.trials:
            place = trial_place(sweep, trial, crf_stage_of) if trial.status == "FINISHED" else None
            if place is not None:
                found.append((place, trial, sweep.stage))
    return found


def _tasks(entries: list[Entry]) -> list[str]:
    tasks = {place.task for place, _, _ in entries}
    return [t for t in PAPER_TASKS if t in tasks] + sorted(tasks - set(PAPER_TASKS))


def _network(method: str, plus: bool, archs: tuple[str, ...] | None = None, layers: int | None = 1) -> Match:
    return lambda p: (p.method == method and p.plus == plus and (archs is None or p.arch in archs)
                      and (layers is None or p.layers == layers))


def _crf_method(method: str, plus: bool) -> Match:
    return lambda p: p.method == method and p.plus == plus


def _grid(title: str, refs_key: str, entries: list[Entry], rows: list[tuple[str, Match, bool]],
          columns: list[tuple[tuple[str, str], Match, bool]], split: str = "test") -> Table:
    """rows: (title, match, is a network row); columns: ((task, label), match, True for a column of
    networks, False for one of CRF methods, None for both). A cell takes the entries both match; a
    network row in a CRF column (or the reverse) is empty without a note, an applicable cell
    without trials says "not run"."""
    table = Table(title=title, columns=[c for c, _, _ in columns], rows=[], column_names=("task", "architecture"),
                  refs_key=refs_key)
    for row, row_match, row_is_net in rows:
        cells = []
        for column, column_match, column_is_net in columns:
            chosen = [(t, stage) for place, t, stage in entries if row_match(place) and column_match(place)]
            applies = row_is_net == column_is_net or column_is_net is None
            cells.append(_cell(chosen, table.notes, row, column, split) if chosen or applies else Cell([], [], ""))
        table.rows.append((row, cells))
    table.metric_keys = [f"{split} score" for _ in columns]
    return table


def table1(entries: list[Entry]) -> Table:
    rows = [("local baseline", _network("local", False), True), ("infnet", _network("infnet", False), True),
            ("gradient descent", _crf_method("gd", False), False), ("Viterbi", _crf_method("viterbi", False), False)]
    columns = []
    for task in _tasks(entries):
        columns += [((task, label), _in_task(task, archs), True) for label, archs in ARCH_COLUMNS]
        columns.append(((task, CRF_COLUMN), _in_task(task, crf=True), False))
    table = _grid("Tu & Gimpel (2019) Table 1: test scores with the BLSTM-CRF energy (%)", "Table 1", entries, rows, columns)
    table.notes.insert(0, "CNN: the {1,3}- or {1,5}-gram window, whichever is better on dev; accuracy for POS and CCG, "
                          "span F1 for NER")
    return table


def table2(entries: list[Entry]) -> Table:
    rows = [("local baseline", _network("local", False), True), ("infnet", _network("infnet", False), True)]
    columns = [((task, label), _in_task(task, archs), True) for task in _tasks(entries) for label, archs in WINDOW_COLUMNS]
    return _grid("Tu & Gimpel (2019) Table 2: dev scores of CNNs with two filter sets (%)", "Table 2", entries, rows,
                 columns, split="dev")


def table4(entries: list[Entry]) -> Table:
    rows = [("local baseline", _network("local", True), True), ("infnet+", _network("infnet", True), True),
            ("gradient descent", _crf_method("gd", True), False), ("Viterbi", _crf_method("viterbi", True), False)]
    columns, used = [], []
    for task in _tasks(entries):
        label, archs = TABLE4_ARCH.get(task, ANY_ARCH)
        columns.append(((task, label), _in_task(task, archs, crf=True), None))
        used.append(f"{task} {label}")
    table = _grid("Tu & Gimpel (2019) Table 4: test scores with the BLSTM-CRF+ energy (%)", "Table 4", entries, rows,
                  columns)
    table.notes.insert(0, f"networks of the paper's architecture per task: {', '.join(used)}")
    return table


def table5(entries: list[Entry]) -> Table:
    rows = [("local baseline (BLSTM)", _network("local", True, ("blstm",)), True),
            ("infnet+ (1-layer BLSTM)", _network("infnet", True, ("blstm",), 1), True),
            ("infnet+ (2-layer BLSTM)", _network("infnet", True, ("blstm",), 2), True),
            ("Viterbi", _crf_method("viterbi", True), False)]
    deep = _network("infnet", True, ("blstm",), 2)
    tasks = [t for t in _tasks(entries) if any(deep(p) and p.task == t for p, _, _ in entries)]
    columns = [((task, "test"), _in_task(task, ("blstm",), crf=True), None) for task in tasks]
    table = _grid("Tu & Gimpel (2019) Table 5: test scores with the BLSTM-CRF+ energy and deeper BLSTM inference "
                  "networks (%)", "Table 5", entries, rows, columns)
    annealed = {_lambda_annealed(t.params) for p, t, _ in entries if _network("infnet", True, ("blstm",), None)(p)}
    how = "constant or annealed, by dev" if len(annealed) > 1 else "annealed" if annealed == {True} else "constant"
    table.notes.insert(0, f"λ of the infnet+ rows: {how} (the paper anneals λ = e^{{-0.01 t}} for the 2-layer network)")
    return table


def _in_task(task: str, archs: tuple[str, ...] = (), crf: bool = False) -> Match:
    """A column of `task`: the networks of `archs`, and the GD and Viterbi entries if `crf`."""
    return lambda p: p.task == task and (p.arch in archs if p.method in NETWORKS else crf)


def _paper_setting(entries: list[Entry]) -> list[Entry]:
    """The entries without the models (CRFs, local baselines, inference networks) of another
    word-vector setting than the paper's, where the paper's setting ran for that task, energy and
    kind of model. GD has no vectors of its own: always kept."""
    def kind(p: Place) -> tuple[str, bool, str]:
        return p.task, p.plus, p.method

    paper = {kind(p) for p, _, _ in entries if p.vectors == PAPER_VECTORS[p.plus]}
    return [e for e in entries if not e[0].vectors or kind(e[0]) not in paper or e[0].vectors == PAPER_VECTORS[e[0].plus]]


def vectors_table(entries: list[Entry]) -> Table | None:
    """Viterbi with BLSTM-CRFs that differ in their word vectors (dev and test), for the tasks that
    have more than one setting; None if none has."""
    crfs = [(p, t, stage) for p, t, stage in entries if p.method == "viterbi" and not p.plus]
    tasks = [task for task in _tasks(crfs) if len({p.vectors for p, _, _ in crfs if p.task == task}) > 1]
    if not tasks:
        return None
    table = Table(title="Word vectors of the BLSTM-CRF: Viterbi scores (%)", rows=[], refs_key="Word vectors",
                  columns=[(task, split) for task in tasks for split in ("dev", "test")], column_names=("task", "split"))
    for title, vectors in VECTOR_ROWS:
        cells = [_cell([(t, stage) for p, t, stage in crfs if p.task == task and p.vectors == vectors], table.notes,
                       title, (task, split), split) for task, split in table.columns]
        table.rows.append((title, cells))
    table.notes = list(dict.fromkeys(table.notes))  # dev and test share a selection
    table.metric_keys = [f"{split} score" for _, split in table.columns]
    return table


def network_vectors_table(entries: list[Entry]) -> Table | None:
    """Table 1's local baselines and inference networks with each word-vector setting they ran with
    (test), for the tasks where a local baseline or inference network ran with more than one; None
    if none did."""
    nets = [(p, t, stage) for p, t, stage in entries if p.method in NETWORKS and not p.plus]
    tasks = [task for task in _tasks(nets)
             if any(len({p.vectors for p, _, _ in nets if p.task == task and p.method == m}) > 1 for m in NETWORKS)]
    if not tasks:
        return None
    ran = {(p.method, p.vectors) for p, _, _ in nets if p.task in tasks}
    rows = [(f"{label} ({title})", _network_with(method, vectors), True) for label, method in NETWORK_ROWS
            for title, vectors in VECTOR_ROWS if (method, vectors) in ran]
    columns = [((task, label), _in_task(task, archs), True) for task in tasks for label, archs in ARCH_COLUMNS]
    table = _grid("Word vectors of the BLSTM-CRF's networks: test scores (%)", "Network word vectors", nets, rows,
                  columns)
    table.notes.insert(0, "the BLSTM-CRF energy keeps its vectors fixed (Table 1); here the networks' own input differs")
    return table


def _network_with(method: str, vectors: str) -> Match:
    return lambda p: p.method == method and p.vectors == vectors


def paper_tables(sweeps: list[Sweep], crf_stage_of: dict[str, str] | None = None) -> list[Table]:
    """The tables of Tu & Gimpel (2019) the sweeps have trials for, in the paper's order, then the
    word-vector comparison when the CRFs differ in it."""
    every = _entries(sweeps, crf_stage_of or {})
    entries = _paper_setting(every)
    places = [p for p, _, _ in entries]
    tables = []
    if any(not p.plus for p in places):
        tables.append(table1(entries))
    if any(p.method in NETWORKS and not p.plus and p.arch in CNNS for p in places):
        tables.append(table2(entries))
    if any(p.plus for p in places):
        tables.append(table4(entries))
    if any(_network("infnet", True, ("blstm",), 2)(p) for p in places):
        tables.append(table5(entries))
    ablations = [vectors_table(every), network_vectors_table(every)]
    return tables + [table for table in ablations if table is not None]


def figure1_points(sweeps: list[Sweep]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{task: {"local baseline BLSTM": [(H, dev score)], ...}} for the BLSTM-CRF networks, when a
    task's trials have more than one H: at each H the mean dev score of the best setting (over
    seeds), as the tables select."""
    groups: dict[tuple[str, str, int], list[Trial]] = defaultdict(list)
    for place, trial, stage in _paper_setting(_entries(sweeps, {})):
        if place.method in NETWORKS and not place.plus and place.hidden is not None:
            label = f"{'local baseline' if place.method == 'local' else 'infnet'} {place.arch}"
            groups[(place.task, label, place.hidden)].append((trial, stage))
    points: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for (task, label, hidden), chosen in sorted(groups.items()):
        cell = _cell(chosen, [], label, (task, str(hidden)), "dev")
        if cell.mean is not None:
            points[task][label].append((hidden, cell.mean))
    return {task: dict(lines) for task, lines in points.items()
            if len({h for line in lines.values() for h, _ in line}) > 1}


def _setting_text(trials: list[Trial], chosen: list[Trial]) -> str:
    """The chosen setting, by the parameters (not the seed) that differ among the candidates;
    "default" where the chosen trials did not log one (their stage's default)."""
    keys = sorted({k for t in trials for k in t.params} - {"seed"})
    varying = [k for k in keys if len({t.params.get(k) for t in trials}) > 1]
    return ", ".join(f"{k}={chosen[0].params.get(k, 'default')}" for k in varying) or "settings differ in name only"


def _cell(entries: list[tuple[Trial, str]], notes: list[str], row: str, col: tuple[str, str], split: str = "test") -> Cell:
    """Mean +- sd over seeds of the setting with the best mean dev score, on `split`."""
    if not entries:
        return Cell([], [], "not run")
    stage_of = {t.run_id: stage for t, stage in entries}
    dev_of = {t.run_id: _scores(t, stage_of[t.run_id])[0] for t, _ in entries}
    trials = [t for t, _ in entries]
    if any(v is not None for v in dev_of.values()):
        chosen, settings, repeated = _select_by(trials, dev_of)
        if repeated:
            notes.append(repeats_note(f"{row}, {col[0]} {col[1]}", repeated))
        if settings > 1:
            notes.append(f"{row}, {col[0]} {col[1]}: best of {settings} settings by mean dev (those with the most "
                         f"seeds): {_setting_text(trials, chosen)}; {len(chosen)} seed(s)")
    else:
        chosen = trials
    index = 0 if split == "dev" else 1
    pairs = [(_scores(t, stage_of[t.run_id])[index], t.run_id) for t in chosen]
    pairs = [(v, r) for v, r in pairs if v is not None]
    return Cell([v for v, _ in pairs], [r for _, r in pairs], "" if pairs else f"no {split} score")


# ---------------------------------------------------------------------------------------------
# Table 6: approximate inference by method and N, score and mean energy (table6 / gd-oracle sweeps)
# ---------------------------------------------------------------------------------------------

TABLE6_COLUMNS = ("score", "energy")
# Metric prefixes of a table6 trial (core.table6.flat_metrics), in the paper's row order; the
# rows with an N ({n}) get one row per N the trials logged.
TABLE6_ROWS = (("gold standard", "gold"), ("Viterbi", "viterbi"), ("gradient descent (N = {n})", "gd_n{n}"),
               ("infnet", "infnet"), ("discretized infnet output", "infnet_discrete"),
               ("instance-tailored infnet (N = {n})", "tailored_n{n}"), ("infnet warm start for GD (N = {n})", "warmgd_n{n}"),
               ("infnet warm start for GD (N = {n}, oracle lr per sentence)", "warmgd_oracle_n{n}"))


def oracle_metric(stage: str, prefix: str, column: str) -> str | None:
    """The MLflow metric of a table6 row prefix and column, for a trial of `stage`: table6 logs
    core.table6.flat_metrics; gd-oracle (sweeps.trainables._oracle) logs score_nN / energy_nN and
    viterbi_score / viterbi_energy, and has no other rows (None)."""
    if stage == "table6":
        return f"{prefix}_{column}"
    if prefix == "viterbi":
        return f"viterbi_{column}"
    if prefix.startswith("gd_n"):
        return f"{column}_n{prefix[4:]}"
    return None


def gd_steps_logged(stage: str, metrics: dict[str, float], prefix: str = "gd") -> list[int]:
    """The N of every `prefix` row (gd, tailored, warmgd, warmgd_oracle) a trial logged, increasing."""
    if stage != "table6" and prefix != "gd":
        return []
    pattern = re.compile(rf"^{prefix}_n(\d+)_score$" if stage == "table6" else r"^score_n(\d+)$")
    return sorted(int(m.group(1)) for key in metrics if (m := pattern.match(key)))


def table6_sources(sweeps: list[Sweep], crf_stage_of: dict[str, str]) -> tuple[dict[str, Sweep], list[str]]:
    """The sweeps Table 6 comes from, each under its column label: per task, its table6 sweeps, else
    its gd-oracle sweeps against a CRF+ (GD and Viterbi rows only), else against any CRF (said in a
    note). The label is the task, or "task (sweep)" where a task has several: sweeps of different
    networks or energies are never pooled as if they were seeds."""
    sources, notes = {}, []
    for task in sorted({s.task for s in sweeps if s.stage in ("table6", "gd-oracle")}):
        table6 = [s for s in sweeps if s.task == task and s.stage == "table6"]
        oracle = [s for s in sweeps if s.task == task and s.stage == "gd-oracle"]
        plus = [s for s in oracle if crf_stage_of.get(s.name) == "crf+"]
        chosen = table6 or plus or oracle
        crf_only = not table6 and not plus
        if crf_only:
            notes.append(f"{task}: GD and Viterbi rows from gd-oracle sweep(s) "
                         f"{', '.join(s.name for s in oracle)} against a BLSTM-CRF, not a CRF+; the paper's Table 6 "
                         f"is on the CRF+, so its values are not set beside them")
        for sweep in chosen:
            # The column label is what the references are keyed by ("<task> score"): a BLSTM-CRF
            # column is named apart so that the paper's CRF+ values never stand beside it.
            if len(chosen) > 1:
                label = f"{task} ({sweep.name})"
            else:
                label = f"{task} (BLSTM-CRF)" if crf_only else task
            sources[label] = sweep
    return sources, notes


def table6(sweeps: list[Sweep], crf_stage_of: dict[str, str] | None = None, title: str = "") -> Table:
    """Tu & Gimpel's Table 6 from table6 (or gd-oracle) sweeps: rows as the paper's, columns
    (task, score) and (task, energy); each cell the mean +- sd over the finished trials of its
    sweep's setting (all parameters but the seed) with the best mean dev_score, as the other
    layouts select."""
    sources, notes = table6_sources(sweeps, crf_stage_of or {})
    chosen = {label: _best_setting([t for t in sweep.trials if t.status == "FINISHED"], sweep.stage, label, notes)
              for label, sweep in sources.items()}
    stage_of = {label: sweep.stage for label, sweep in sources.items()}
    columns = [(label, column) for label in sources for column in TABLE6_COLUMNS]
    table = Table(title=title or "Tu & Gimpel (2019) Table 6 layout: score (%) and mean energy", columns=columns,
                  rows=[], column_names=("task", "quantity"), row_header="method", notes=notes, refs_key="Table 6",
                  scales=[100.0 if column == "score" else 1.0 for _, column in columns])
    for title_pattern, prefix_pattern in TABLE6_ROWS:
        family = prefix_pattern.split("_n{n}")[0]
        steps = sorted({n for label, trials in chosen.items() for t in trials
                        for n in gd_steps_logged(stage_of[label], t.metrics, family)})
        for n in steps if "{n}" in prefix_pattern else [None]:
            prefix = prefix_pattern.format(n=n)
            cells = [_metric_cell(chosen[label], oracle_metric(stage_of[label], prefix, column)) for label, column in columns]
            if any(cell.values for cell in cells):
                table.rows.append((title_pattern.format(n=n), cells))
    table.metric_keys = ["" for _ in columns]  # per row: each cell names its metric
    return table


def _best_setting(trials: list[Trial], stage: str, label: str, notes: list[str]) -> list[Trial]:
    groups: dict[tuple, list[Trial]] = defaultdict(list)
    for trial in trials:
        groups[tuple(sorted((k, v) for k, v in trial.params.items() if k not in NOT_SELECTION_PARAMS))].append(trial)
    if len(groups) <= 1:
        return trials
    best = max(groups.values(), key=lambda g: statistics.fmean(t.metrics.get("dev_score", float("-inf")) for t in g))
    what = "the network's score on the split" if stage == "table6" else "the oracle score on the split"
    notes.append(f"{label}: best of {len(groups)} settings by mean dev_score ({what}); {len(best)} trial(s)")
    return best


def _metric_cell(trials: list[Trial], key: str | None) -> Cell:
    pairs = [(t.metrics.get(key), t.run_id) for t in trials] if key else []
    pairs = [(v, r) for v, r in pairs if v is not None]
    return Cell([v for v, _ in pairs], [r for _, r in pairs], "" if pairs else "not run", key or "")


# ---------------------------------------------------------------------------------------------
# Table 3 and Figure 2: inference speed and the speed/accuracy trade-off (speed sweeps, core.speed)
# ---------------------------------------------------------------------------------------------

TABLE3_BATCH = 10  # the paper's minibatch size: the batch Figure 2 is drawn at when the trials have it
# Table 3's columns: (label, the metric prefix of core.speed.flat_metrics, the architectures it takes).
TABLE3_COLUMNS = tuple((label, "infnet", archs) for label, archs in ARCH_COLUMNS) + (
    ("Viterbi", "viterbi", None), ("GD", "gd", None))


def _speed_default(field: str):
    from core.speed import SpeedConfig

    return SpeedConfig.__dataclass_fields__[field].default


def _speed_trials(sweeps: list[Sweep]) -> list[tuple[Sweep, Trial]]:
    return [(s, t) for s in sweeps if s.stage == "speed" for t in s.trials if t.status == "FINISHED"]


def speed_batch_sizes(trials: list[Trial]) -> list[int]:
    """Every batch size a speed trial logged examples/s for, increasing."""
    pattern = re.compile(r"^infnet_b(\d+)_eps$")
    return sorted({int(m.group(1)) for t in trials for key in t.metrics if (m := pattern.match(key))})


PLUS_ROW = "{task} (CRF+)"  # the row of "+" networks and their BLSTM-CRF+ energy (not the paper's Table 3)


def _speed_rows(sweeps: list[Sweep]) -> dict[str, dict[str, list[Trial]]]:
    """{row: {column label: trials}}: a trial's network goes in its architecture's column, its
    Viterbi and GD (on the network's CRF energy) in theirs; the row is the task, or PLUS_ROW for a
    "+" network, whose Viterbi and GD run on the costlier BLSTM-CRF+ energy."""
    from core.speed import ARCH_PARAM, PLUS_PARAM

    found: dict[str, dict[str, list[Trial]]] = defaultdict(lambda: defaultdict(list))
    for sweep, trial in _speed_trials(sweeps):
        arch = trial.params.get(ARCH_PARAM, "")
        row = PLUS_ROW.format(task=sweep.task) if _flag(trial.params, PLUS_PARAM) else sweep.task
        for label, prefix, archs in TABLE3_COLUMNS:
            if archs is None or arch in archs:
                found[row][label].append(trial)
    return found


def _speed_row_order(rows) -> list[str]:
    """The paper's tasks first, each followed by its "+" row; then any other rows."""
    order = [r for task in PAPER_TASKS for r in (task, PLUS_ROW.format(task=task)) if r in rows]
    return order + sorted(set(rows) - set(order))


def table3(sweeps: list[Sweep]) -> list[Table]:
    """Tu & Gimpel's Table 3 from speed sweeps: examples/s, rows task, columns CNN | BLSTM |
    seq2seq inference network, Viterbi, GD; one table per batch size the trials logged (the paper's
    is 10). A cell is the mean +- sd over its trials (several networks of a task each time Viterbi
    and GD on their own energy: those cells pool them, said in a note)."""
    found = _speed_rows(sweeps)
    trials = [t for _, t in _speed_trials(sweeps)]
    tasks = _speed_row_order(found)
    setting = sorted({tuple(str(t.params.get(name, _speed_default(name))) for name in ("split", "threads", "device"))
                      for t in trials})
    tables = []
    for size in speed_batch_sizes(trials):
        columns = [(label, f"b{size}") for label, _, _ in TABLE3_COLUMNS]
        table = Table(title=f"Tu & Gimpel (2019) Table 3 layout: inference speed (examples/s), batch size {size}",
                      columns=columns, rows=[], column_names=("method", "batch"), row_header="task", scale=1.0,
                      refs_key="Table 3", metric="examples_per_second")
        table.metric_keys = [f"{prefix}_b{size}_eps" for _, prefix, _ in TABLE3_COLUMNS]
        for task in tasks:
            cells = [_metric_cell(found[task].get(label, []), key) for (label, _), key in zip(columns, table.metric_keys)]
            table.rows.append((task, cells))
            pooled = len(found[task].get("Viterbi", []))
            if pooled > 1:
                table.notes.append(f"{task}: Viterbi and GD over {pooled} speed trials (one per network and its energy)")
        table.notes.append("split, threads, device: " + "; ".join(", ".join(s) for s in setting)
                           + " (the paper: test, a GPU, batch 10)")
        tables.append(table)
    return tables


def speed_batch_size(sweeps: list[Sweep], wanted: int = TABLE3_BATCH) -> int | None:
    """The batch size Figure 2 is drawn at: `wanted` if the speed trials logged it, else their smallest."""
    sizes = speed_batch_sizes([t for _, t in _speed_trials(sweeps)])
    return (wanted if wanted in sizes else sizes[0]) if sizes else None


def figure2_points(sweeps: list[Sweep], batch_size: int = TABLE3_BATCH) -> dict[str, dict[str, tuple[float, float]]]:
    """{task: {method label: (seconds per sentence, score)}} at `batch_size` (else the smallest the
    trials logged): each the mean over the trials of its Table 3 column. Tu & Gimpel's Figure 2
    puts total test-set time on x; per sentence is that divided by the split's size (same shape on
    a log axis)."""
    found = _speed_rows(sweeps)
    size = speed_batch_size(sweeps, batch_size)
    if size is None:
        return {}
    points: dict[str, dict[str, tuple[float, float]]] = {}
    for task, columns in found.items():
        for label, prefix, archs in TABLE3_COLUMNS:
            pairs = [(t.metrics.get(f"{prefix}_b{size}_sps"), t.metrics.get(f"{prefix}_score")) for t in columns.get(label, [])]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            if pairs:
                name = f"infnet {label}" if archs is not None else label
                points.setdefault(task, {})[name] = (statistics.fmean(x for x, _ in pairs),
                                                     statistics.fmean(y for _, y in pairs))
    return points


# ---------------------------------------------------------------------------------------------
# §6.2: search error against sequence frequency (search-error sweeps, core.search_correlation)
# ---------------------------------------------------------------------------------------------

# (column label, core.search_correlation.ROW_KEYS key), in the order the table shows them.
SEARCH_ERROR_COLUMNS = (("mean error", "mean_search_error"), ("share with error", "share_with_search_error"),
                        ("rho word ppl", "rho_word_perplexity"), ("rho label ppl", "rho_label_perplexity"),
                        ("rho length", "rho_length"))
SEARCH_ERROR_ROWS = (("inference network", "infnet"), ("gradient descent", "gd"))


def search_error_table(sweeps: list[Sweep]) -> Table | None:
    """Tu & Gimpel's §6.2 from search-error sweeps: rows inference network and gradient descent,
    columns (task, quantity); a cell is the mean +- sd over the task's finished trials. Notes name
    each task's network architectures and GD's N and learning rate. None without such trials."""
    from core.speed import ARCH_PARAM

    found: dict[str, list[Trial]] = defaultdict(list)
    for sweep in sweeps:
        if sweep.stage == "search-error":
            found[sweep.task] += [t for t in sweep.trials if t.status == "FINISHED"]
    tasks = [t for t in PAPER_TASKS if found.get(t)] + sorted(t for t in found if found[t] and t not in PAPER_TASKS)
    if not tasks:
        return None
    columns = [(task, label) for task in tasks for label, _ in SEARCH_ERROR_COLUMNS]
    table = Table(title="Tu & Gimpel (2019) §6.2 layout: search error E(x, y) - E(x, y_Viterbi) (nats) and "
                        "Spearman's rho with LM perplexity", columns=columns, rows=[], column_names=("task", "quantity"),
                  row_header="method", scale=1.0, refs_key="§6.2", metric="search_error")
    keys = dict(SEARCH_ERROR_COLUMNS)
    for title, prefix in SEARCH_ERROR_ROWS:
        table.rows.append((title, [_metric_cell(found[task], f"{prefix}_{keys[label]}") for task, label in columns]))
    table.metric_keys = [f"{{infnet,gd}}_{keys[label]}" for _, label in columns]
    for task in tasks:
        archs = sorted({t.params.get(ARCH_PARAM, "?") for t in found[task]})
        gd = sorted({(t.metrics.get("gd_steps"), t.metrics.get("gd_lr")) for t in found[task]})
        table.notes.append(f"{task}: {len(found[task])} trial(s); network {', '.join(archs)}; GD N, lr = "
                           + "; ".join(f"{n:g}, {lr:g}" for n, lr in gd if n is not None and lr is not None))
    return table
