"""Reports from a real MLflow store (SQLite): runs shaped exactly as sweeps log them (a parent run
per sweep, a child per trial with params, per-epoch metrics and final.<split>.<decoder>.<metric>)."""
from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import pytest
import yaml

from storage import tracking
from storage.report import build_report, format_cell, render_markdown
from storage.runs import SweepNotTracked, load_sweep
from storage.tables_goyal import alpha_row, goyal_table

DECODERS = ("greedy", "beam3", "soft_beam3")


def add_sweep(uri: str, name: str, stage: str, trials: list[dict], space: dict) -> str:
    """A parent run and one finished child per trial: {"params", "final" (split -> decoder -> score), "curve"}."""
    experiment = tracking.ensure_experiment(uri, "beamtune")
    spec = yaml.safe_dump({"name": name, "stage": stage, "task": "synthetic", "space": space})
    parent = tracking.start_parent(uri, experiment, name, {"beamtune.stage": stage, "beamtune.task": "synthetic"}, spec)
    for i, trial in enumerate(trials):
        journals = Path(uri.removeprefix("sqlite:///")).parent / "journals" / name
        run = tracking.TrialRun.open(uri, experiment, parent, f"t{i}", f"{name}-{i}", None,
                                     tags={tracking.SWEEP_TAG: name, "beamtune.stage": stage}, spool_directory=journals)
        run.log_params(trial["params"])
        for epoch, score in enumerate(trial.get("curve", [0.5, 0.6]), start=1):
            extra = {"alpha": float(epoch * 10)} if stage != "ce" else {}
            run.log_metrics({"dev_score": score, "best_dev_score": max(trial.get("curve", [0.5, 0.6])[:epoch]), **extra}, step=epoch)
        if "final" in trial:
            run.log_metrics({"final": trial["final"]}, step=1)
            run.finish("FINISHED")
        else:
            run.finish(trial.get("status", "FAILED"), "boom")
    tracking.end_run(uri, parent)
    return parent


def final(base: float) -> dict:
    return {split: {d: {"score": base + j / 100 + (0.001 if split == "test" else 0)} for j, d in enumerate(DECODERS)}
            for split in ("dev", "test")}


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    add_sweep(uri, "ce", "ce", [{"params": {"seed": 1, "lr": 0.01}, "final": final(0.80)},
                                {"params": {"seed": 2, "lr": 0.01}, "final": final(0.82)},
                                {"params": {"seed": 3, "lr": 0.1}, "final": final(0.70)},  # worse setting
                                {"params": {"seed": 4, "lr": 0.1}, "status": "FAILED"}],
              space={"seed": {"grid": [1, 2]}, "lr": {"grid": [0.01, 0.1]}})
    add_sweep(uri, "dl", "dl", [{"params": {"seed": 1, "alpha": "exp:1:100:10"}, "final": final(0.85)},
                                {"params": {"seed": 1, "alpha": "1"}, "final": final(0.83)}],
              space={"alpha": {"grid": ["1", "exp:1:100:10"]}})
    return uri


class TestAlphaRow:
    def test_rows(self):
        assert alpha_row("ce", {"alpha": "5"}) == "ce"
        assert alpha_row("dl", {"alpha": "1"}) == "dl alpha=1"
        assert alpha_row("dl", {"alpha": "1.0"}) == "dl alpha=1"
        assert alpha_row("hinge", {"alpha": "exp:1:100:10"}) == "hinge annealed"
        assert alpha_row("dl", {"alpha.schedule": "linear", "alpha.start": "1", "alpha.end": "50", "alpha.epochs": "10"}) == "dl annealed"
        assert alpha_row("dl", {}) == "dl alpha=1"  # core's default alpha


class TestGoyalTable:
    def test_cells_equal_mlflow_metrics(self, store):
        sweeps = [load_sweep(store, "ce"), load_sweep(store, "dl")]
        table = goyal_table(sweeps)
        rows = dict(table.rows)
        assert [title for title, _ in table.rows] == [
            "Baseline CE", "G~hinge annealed α", "G~hinge α = 1", "G~DL α = 1", "G~DL annealed α"]
        columns = [f"{d} {s}" for d, s in table.columns]
        ce = dict(zip(columns, rows["Baseline CE"]))
        # the lr=0.01 setting wins on mean dev (0.81 vs 0.70): seeds 1 and 2, mean and sd over them
        cell = ce["greedy dev"]
        metrics = {t.params["seed"]: t.metrics for t in sweeps[0].trials}
        assert sorted(cell.values) == sorted([metrics["1"]["final.dev.greedy.score"], metrics["2"]["final.dev.greedy.score"]])
        assert cell.mean == pytest.approx(0.81)
        assert cell.sd == pytest.approx(0.0141421, rel=1e-4)
        assert ce["hard beam (k = 3) test"].mean == pytest.approx(0.821)
        dl = dict(zip(columns, rows["G~DL annealed α"]))
        assert dl["soft beam (k = 3) dev"].values == [pytest.approx(0.87)]
        assert all(c.mean is None and c.note == "not run" for c in rows["G~hinge α = 1"])
        assert any("best of 2 hyperparameter settings" in n for n in table.notes)
        assert any("1 trial(s) left out (failed)" in n for n in table.notes)

    def test_markdown_and_refs(self, store):
        table = goyal_table([load_sweep(store, "ce")])
        text = render_markdown(table, {"Baseline CE": {"greedy dev": 80.15}})
        assert "| Baseline CE | 81.00 ± 1.41 (2) |" in text
        assert "| Baseline CE (paper, Δ) | 80.15 (+0.85) |" in text

    def test_format_cell_single_seed(self, store):
        table = goyal_table([load_sweep(store, "dl")])
        assert format_cell(dict(table.rows)["G~DL annealed α"][0], 100) == "85.00"

    def test_unknown_sweep(self, store):
        with pytest.raises(SweepNotTracked, match="no sweep named 'nope'"):
            load_sweep(store, "nope")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and zlib.crc32(data[12:16 + length]) == struct.unpack(">I", data[16 + length:20 + length])[0]
    return struct.unpack(">II", data[16:24])


class TestBuildReport:
    def test_files_plots_and_mlflow(self, store, tmp_path):
        report = build_report(store, ["ce", "dl"], tmp_path / "out", ui_url="http://127.0.0.1:5000")
        rows = list(csv.DictReader(io.StringIO(report.files["csv"].read_text())))
        ce_dev = next(r for r in rows if r["row"] == "Baseline CE" and r["decoder"] == "greedy" and r["split"] == "dev")
        assert float(ce_dev["mean"]) == pytest.approx(81.0) and ce_dev["n"] == "2"
        assert ce_dev["mlflow_metric"] == "final.dev.greedy.score"
        html = report.files["html"].read_text()
        assert "#/experiments/" in html and "data:image/png;base64," in html
        names = sorted(p.name for p in report.plots)
        assert names == ["ce-curves.png", "ce-lr.png", "ce-seed.png", "dl-alpha.png", "dl-curves.png"]
        for plot in report.plots:
            width, height = png_size(plot.read_bytes())
            assert width > 100 and height > 100
        # logged to each sweep's parent run: artifacts and the description
        c = tracking.client(store)
        parent = load_sweep(store, "dl")
        artifacts = {a.path for a in c.list_artifacts(parent.run_id, "report")}
        assert {"report/report.md", "report/report.html", "report/dl-curves.png"} <= artifacts
        assert "G~DL annealed α" in c.get_run(parent.run_id).data.tags[tracking.DESCRIPTION_TAG]

    def test_curve_series(self, store, tmp_path):
        """The curves plot draws one dev line per trial that logged dev scores, plus a dashed alpha
        line per trial for the soft-beam stage."""
        from storage import plots

        sweep = load_sweep(store, "dl")
        plt = plots._pyplot()
        seen = []
        original = plots._save

        def capture(fig, path):
            seen.append([len(ax.get_lines()) for ax in fig.axes])
            return original(fig, path)

        plots._save = capture
        try:
            plots.curves_plot(store, sweep, tmp_path / "c.png")
        finally:
            plots._save = original
            plt.close("all")
        assert seen == [[2, 2]]


class TestTrialLabel:
    def test_searched_values_then_seed(self):
        from storage.tracking import trial_label

        params = {"lr": 0.00234, "encoder_hidden": 32, "seed": 161, "batch_size": 32, "alpha": "exp:1:100:10"}
        assert trial_label("ce", params, ["encoder_hidden", "lr", "seed"]) == "ce H=32 lr=0.0023 seed=161"
        assert trial_label("dl", params, ["alpha"]) == "dl alpha=exp:1:100:10 seed=161"
        assert trial_label("crf", {}, []) == "crf"


def structured_final(decoder: str, dev: float, test: float) -> dict:
    return {"dev": {decoder: {"score": dev}}, "test": {decoder: {"score": test}}}


class TestTuTable:
    def test_methods_by_task_and_architecture(self, tmp_path):
        from storage.report import layouts

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        space = {"seed": {"grid": [1, 2]}}
        add_sweep(uri, "crf", "crf", [{"params": {"seed": 1}, "final": structured_final("viterbi", 0.88, 0.87)}], space)
        add_sweep(uri, "local", "local", [
            {"params": {"arch": "cnn13", "seed": 1}, "final": structured_final("infnet", 0.86, 0.85)},
            {"params": {"arch": "cnn13", "seed": 2}, "final": structured_final("infnet", 0.87, 0.86)},
            {"params": {"arch": "blstm", "plus": True, "seed": 1}, "final": structured_final("infnet", 0.80, 0.79)}], space)
        add_sweep(uri, "inf", "infnet", [
            {"params": {"arch": "blstm", "lam": 1.0, "seed": 1}, "final": structured_final("infnet", 0.90, 0.89)},
            {"params": {"arch": "blstm", "lam": 5.0, "seed": 1}, "final": structured_final("infnet", 0.91, 0.84)},
            {"params": {"arch": "blstm", "layers": 2, "lam_anneal": True, "seed": 1},
             "final": structured_final("infnet", 0.92, 0.91)}], space)
        [table] = layouts(uri, [load_sweep(uri, n) for n in ("crf", "local", "inf")])
        columns = [f"{t} {a}" for t, a in table.columns]
        assert columns == ["synthetic blstm", "synthetic cnn13", "synthetic CRF"]
        rows = {title: dict(zip(columns, cells)) for title, cells in table.rows}
        assert list(rows) == ["local baseline", "local baseline+", "infnet", "infnet (2-layer, λ annealed)", "Viterbi"]
        assert rows["local baseline"]["synthetic cnn13"].mean == pytest.approx(0.855)
        assert rows["local baseline"]["synthetic cnn13"].n == 2
        assert rows["infnet"]["synthetic blstm"].values == [pytest.approx(0.84)]  # lam 5 wins on dev (0.91 > 0.90)
        assert rows["Viterbi"]["synthetic CRF"].values == [pytest.approx(0.87)]
        assert rows["Viterbi"]["synthetic blstm"].note == "not run"
        assert any("best of 2 settings by mean dev" in n for n in table.notes)


class TestNotStarted:
    def test_a_study_stage_not_started_is_named_not_an_error(self, store, tmp_path):
        report = build_report(store, ["ce", "later"], tmp_path / "out", plots=False, log=False, not_started_ok=True)
        assert "not started yet: later" in report.files["md"].read_text()
        with pytest.raises(SweepNotTracked, match="no sweep named 'later'"):
            build_report(store, ["ce", "later"], tmp_path / "out2", plots=False, log=False)


def test_refs_in_one_metric_go_beside_that_table_only(tmp_path):
    """Goyal et al. report NER in macro F1: paper values marked `metric: macro_f1` sit beside the
    macro F1 table, not beside the micro F1 one that the same sweeps also give."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    scores = {split: {d: {"score": 0.60, "macro_f1": 0.50} for d in DECODERS} for split in ("dev", "test")}
    add_sweep(uri, "ner-ce", "ce", [{"params": {"seed": 1}, "final": scores}], space={"seed": {"grid": [1]}})
    refs = tmp_path / "refs.yaml"
    refs.write_text("metric: macro_f1\nBaseline CE:\n  greedy dev: 50.21\n", encoding="utf-8")
    report = build_report(uri, ["ner-ce"], tmp_path / "out", refs=refs, plots=False, log=False)
    assert [t.metric for t in report.tables] == ["macro_f1", "score"]
    macro, micro = report.files["md"].read_text().split("**Goyal")[1:]
    assert "| Baseline CE (paper, Δ) | 50.21 (-0.21) |" in macro and "paper" not in micro
    refs.write_text("metric: [macro_f1]\nBaseline CE:\n  greedy dev: 50.21\n", encoding="utf-8")
    with pytest.raises(ValueError, match="metric: expected a metric name"):
        build_report(uri, ["ner-ce"], tmp_path / "out2", refs=refs, plots=False, log=False)
