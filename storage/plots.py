"""Plots of tracked sweeps (matplotlib, Agg backend, PNG), for reports and the MLflow UI.

    curves_plot(uri, sweep, path)        dev score per epoch, one line per trial; alpha or lambda
                                         (whichever the trials log) on a second axis, dashed
    param_plot(sweep, param, path)       final dev score against one searched parameter
    gd_plot(sweep, path)                 gd-oracle / table6: GD score and energy against N (log x)
    sweep_plots(uri, sweeps, folder)     both kinds for every sweep -> the PNG paths written
    hidden_size_plot(task, lines, path)  Tu & Gimpel's Figure 1: dev score against H, one line per
                                         method (storage.tables_tu.figure1_points)
    speed_plot(task, points, path)       Tu & Gimpel's Figure 2: score against seconds per sentence
                                         (log x), one labelled point per method (figure2_points)
"""
from __future__ import annotations

from pathlib import Path

import yaml

from storage.runs import Sweep

SCHEDULED = ("alpha", "lam")  # per-epoch schedule values the trials log (core.train epoch metrics)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: reports are made on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def curves_plot(uri: str, sweep: Sweep, path: Path) -> Path | None:
    """One line per trial: dev score (left axis) per epoch; the schedule (right axis), dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    twin, drawn = None, 0
    for trial in sweep.trials:
        points = trial.history(uri, "dev_score")
        if not points:
            continue
        line, = ax.plot(*zip(*points), marker="o", ms=3, label=trial.name)
        drawn += 1
        for key in SCHEDULED:
            schedule = trial.history(uri, key)
            if schedule:
                twin = twin or ax.twinx()
                twin.plot(*zip(*schedule), ls="--", color=line.get_color(), lw=1)
                twin.set_ylabel(key)
    if not drawn:
        plt.close(fig)
        return None
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set(xlabel="epoch", ylabel="dev score", title=f"{sweep.name}: dev score per epoch")
    ax.legend(fontsize=6, loc="lower right")
    return _save(fig, path)


def searched_params(sweep: Sweep) -> list[str]:
    spec = yaml.safe_load(sweep.spec_yaml) if sweep.spec_yaml and not sweep.spec_yaml.startswith("#") else {}
    return sorted((spec or {}).get("space", {}) or {})


def param_plot(sweep: Sweep, param: str, path: Path) -> Path | None:
    """Final dev score (the sweep's selection metric, best_dev_score) against `param`."""
    points = [(trial.params[param], trial.metrics["best_dev_score"]) for trial in sweep.trials
              if param in trial.params and "best_dev_score" in trial.metrics]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    try:
        xs = [float(x) for x, _ in points]
        ax.scatter(xs, [y for _, y in points])
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)  # long decimals (learning rates) stay apart
    except ValueError:  # categorical values (schedules, architectures)
        labels = sorted({x for x, _ in points})
        ax.scatter([labels.index(x) for x, _ in points], [y for _, y in points])
        ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=7)
    ax.set(xlabel=param, ylabel="best dev score", title=f"{sweep.name}: dev score vs {param}")
    return _save(fig, path)


def gd_plot(sweep: Sweep, path: Path) -> Path | None:
    """A gd-oracle or table6 sweep: gradient descent's score (%) and mean energy against its step
    count N (log x; the lr tuned per sentence), one line per trial, Viterbi's dashed in the same
    colour (Tu & Gimpel's Table 6 GD rows as curves)."""
    from storage.tables_tu import gd_steps_logged, oracle_metric

    series = []
    for trial in sweep.trials:
        steps = [n for n in gd_steps_logged(sweep.stage, trial.metrics) if n > 0]  # log x: N = 0 has no place
        if steps:
            series.append((trial, steps))
    if not series:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for trial, steps in series:
        color = None
        for ax, column, scale in ((axes[0], "score", 100.0), (axes[1], "energy", 1.0)):
            values = [trial.metrics[oracle_metric(sweep.stage, f"gd_n{n}", column)] * scale for n in steps]
            line, = ax.plot(steps, values, marker="o", ms=3, color=color, label=trial.name)
            color = line.get_color()
            viterbi = trial.metrics.get(oracle_metric(sweep.stage, "viterbi", column))
            if viterbi is not None:
                ax.axhline(viterbi * scale, ls="--", lw=1, color=color)
    for ax, label in zip(axes, ("score (%)", "mean energy")):
        ax.set_xscale("log")
        ax.set(xlabel="GD steps N", ylabel=label)
    axes[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"{sweep.name}: gradient descent (oracle lr per sentence) by N; dashed: Viterbi", fontsize=9)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    _pyplot().close(fig)
    return path


def sweep_plots(uri: str, sweeps: list[Sweep], folder: Path) -> list[Path]:
    written = []
    for sweep in sweeps:
        if sweep.stage in ("gd-oracle", "table6"):  # one report, no curves: GD against N instead
            written.append(gd_plot(sweep, folder / f"{sweep.name}-gd.png"))
        elif sweep.stage not in ("speed", "search-error"):  # one report each: Figure 2 and §6.2's table show them
            written.append(curves_plot(uri, sweep, folder / f"{sweep.name}-curves.png"))
        written += [param_plot(sweep, p, folder / f"{sweep.name}-{p}.png") for p in searched_params(sweep)]
    return [p for p in written if p is not None]


def hidden_size_plot(task: str, lines: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Dev score (%) against the hidden size H, one line per method and architecture."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, points in sorted(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, [100 * y for y in ys], marker="o", ms=3, ls="--" if label.startswith("local") else "-", label=label)
    ax.set(xlabel="hidden size H", ylabel="dev score (%)", title=f"{task}: dev score vs H (Tu & Gimpel Fig. 1)")
    ax.legend(fontsize=6)
    return _save(fig, path)


def speed_plot(task: str, points: dict[str, tuple[float, float]], path: Path, batch_size: int | None = None) -> Path:
    """Score (%) against seconds per sentence (log x), one labelled point per inference method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (seconds, score) in sorted(points.items()):
        ax.scatter([seconds], [100 * score], label=label)
        ax.annotate(label, (seconds, 100 * score), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    # Points less than a decade apart get labelled minor ticks ("2x10^-4 3x10^-4 ..."), which
    # overlap: label 1, 2 and 5 of each decade instead, as plain numbers.
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    batch = f", batch {batch_size}" if batch_size else ""
    ax.set(xlabel=f"seconds per sentence (log{batch})", ylabel="score (%)",
           title=f"{task}: score vs inference time (Tu & Gimpel Fig. 2)")
    ax.title.set_fontsize(9)
    return _save(fig, path)
