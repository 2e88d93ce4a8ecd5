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


def add_sweep(uri: str, name: str, stage: str, trials: list[dict], space: dict, task: str = "synthetic",
              spec_extra: dict | None = None) -> str:
    """A parent run and one finished child per trial: {"params", "final" (split -> decoder -> score), "curve"}."""
    experiment = tracking.ensure_experiment(uri, "beamtune")
    spec = yaml.safe_dump({"name": name, "stage": stage, "task": task, "space": space, **(spec_extra or {})})
    parent = tracking.start_parent(uri, experiment, name, {"beamtune.stage": stage, "beamtune.task": task}, spec)
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


def net(dev: float, test: float, **params) -> dict:
    return {"params": {"seed": 1, **params}, "final": structured_final("infnet", dev, test)}


@pytest.fixture(scope="module")
def tu_store(tmp_path_factory):
    """A Tu & Gimpel study's sweeps on twitter_pos, each cell's winner with a distinct score (read
    only by the tests, so built once)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('tu') / 'mlflow.db'}"
    space, pos = {"seed": {"grid": [1, 2]}}, {"task": "twitter_pos"}
    glove = {"embeddings": "embeddings/glove.6B.50d.txt.gz"}
    add_sweep(uri, "crf", "crf", [{"params": {"seed": 1, **glove}, "final": structured_final("viterbi", 0.880, 0.870)},
                                  {"params": {"seed": 2, **glove}, "final": structured_final("viterbi", 0.882, 0.874)}], space, **pos)
    add_sweep(uri, "crfplus", "crf+", [{"params": {"seed": 1, **glove}, "final": structured_final("viterbi", 0.900, 0.909)}],
              space, **pos)
    # an embeddings ablation (tu_pos embed_none / embed_tuned): better on dev, but not the paper's CRF
    add_sweep(uri, "embed_none", "crf", [{"params": {"seed": 1}, "final": structured_final("viterbi", 0.950, 0.501)}], space, **pos)
    add_sweep(uri, "embed_tuned", "crf", [{"params": {"seed": 1, "finetune_embeddings": True, **glove},
                                           "final": structured_final("viterbi", 0.940, 0.502)}], space, **pos)
    add_sweep(uri, "local", "local", [
        net(0.860, 0.851, arch="cnn13", lr=0.1), net(0.870, 0.861, arch="cnn13", lr=0.1, seed=2),
        net(0.850, 0.899, arch="cnn15", lr=0.1),  # worse on dev: not the CNN cell, but Table 2's {1,5}
        net(0.820, 0.812, arch="blstm", lr=0.1), net(0.830, 0.823, arch="seq2seq", lr=0.1)], space, **pos)
    add_sweep(uri, "localplus", "local", [
        net(0.910, 0.913, arch="cnn13", plus=True, lr=0.1), net(0.890, 0.903, arch="blstm", plus=True, lr=0.1)], space, **pos)
    add_sweep(uri, "infnet", "infnet", [
        net(0.861, 0.800, arch="cnn13", lam=1), net(0.880, 0.892, arch="cnn15", lam=1),
        net(0.870, 0.801, arch="blstm", lam=1), net(0.875, 0.884, arch="blstm", lam=5)], space, **pos)
    add_sweep(uri, "infnetplus", "infnet", [net(0.915, 0.914, arch="cnn13", plus=True, lam=1)], space, **pos)
    add_sweep(uri, "layers", "infnet", [
        net(0.901, 0.905, arch="blstm", plus=True, lam="decay:1:0.01", layers=1),
        net(0.905, 0.911, arch="blstm", plus=True, lam="decay:1:0.01", layers=2)], space, **pos)
    for name, energy in (("gd", "crf"), ("gdplus", "crfplus")):  # one oracle score (dev_score) on test
        add_sweep(uri, name, "gd-oracle", [{"params": {"split": "test"}, "final": {}, "curve": [0.891 if name == "gd" else 0.908]}],
                  {}, spec_extra={"warm_start": {"sweep": energy}}, **pos)
    return uri


def tu_sweeps(uri: str) -> list:
    return [load_sweep(uri, n) for n in ("crf", "crfplus", "local", "localplus", "infnet", "infnetplus", "layers", "gd", "gdplus",
                                         "embed_none", "embed_tuned")]


def cells_of(table) -> dict[str, dict[str, object]]:
    return {title: {f"{t} {a}": cell for (t, a), cell in zip(table.columns, cells)} for title, cells in table.rows}


class TestTuTables:
    def test_tables_1_2_4_5_cells_are_the_winning_trials_metrics(self, tu_store):
        from storage.report import layouts

        sweeps = tu_sweeps(tu_store)
        metric = {(s.name, t.params.get("arch", ""), t.params.get("layers", "1"), t.params.get("lam", ""), t.seed): t.metrics
                  for s in sweeps for t in s.trials}
        tables = layouts(tu_store, sweeps)
        assert [t.refs_key for t in tables] == ["Table 1", "Table 2", "Table 4", "Table 5", "Word vectors"]
        one, two, four, five, vectors = (cells_of(t) for t in tables)
        assert list(tables[0].columns) == [("twitter_pos", "CNN"), ("twitter_pos", "BLSTM"), ("twitter_pos", "seq2seq"),
                                           ("twitter_pos", "CRF")]
        assert list(one) == ["local baseline", "infnet", "gradient descent", "Viterbi"]
        test = "final.test.infnet.score"
        # CNN: cnn13 (mean dev 0.865) beats cnn15 (0.850); mean and sd over its two seeds
        cnn = one["local baseline"]["twitter_pos CNN"]
        assert sorted(cnn.values) == sorted([metric[("local", "cnn13", "1", "", "1")][test], metric[("local", "cnn13", "1", "", "2")][test]])
        assert cnn.mean == pytest.approx(0.856) and cnn.n == 2
        assert one["infnet"]["twitter_pos CNN"].values == [metric[("infnet", "cnn15", "1", "1", "1")][test]]
        assert one["infnet"]["twitter_pos BLSTM"].values == [pytest.approx(0.884)]  # lam 5 wins on dev
        assert one["local baseline"]["twitter_pos seq2seq"].values == [pytest.approx(0.823)]
        assert one["infnet"]["twitter_pos seq2seq"].note == "not run"
        assert one["gradient descent"]["twitter_pos CRF"].values == [pytest.approx(0.891)]
        assert one["Viterbi"]["twitter_pos CRF"].mean == pytest.approx(0.872)
        assert one["Viterbi"]["twitter_pos CNN"].mean is None and one["Viterbi"]["twitter_pos CNN"].note == ""
        assert one["local baseline"]["twitter_pos CRF"].note == ""
        # Table 2: dev scores per window
        assert two["local baseline"]["twitter_pos {1,3}-gram"].mean == pytest.approx(0.865)
        assert two["local baseline"]["twitter_pos {1,5}-gram"].values == [pytest.approx(0.850)]
        assert two["infnet"]["twitter_pos {1,5}-gram"].values == [pytest.approx(0.880)]
        # Table 4: the "+" energy; POS networks are CNNs
        assert tables[2].columns == [("twitter_pos", "CNN")]
        assert {k: v["twitter_pos CNN"].values for k, v in four.items()} == {
            "local baseline": [pytest.approx(0.913)], "infnet+": [pytest.approx(0.914)],
            "gradient descent": [pytest.approx(0.908)], "Viterbi": [pytest.approx(0.909)]}
        # Table 5: BLSTM networks, 1 and 2 layers
        assert {k: v["twitter_pos test"].values for k, v in five.items()} == {
            "local baseline (BLSTM)": [pytest.approx(0.903)], "infnet+ (1-layer BLSTM)": [pytest.approx(0.905)],
            "infnet+ (2-layer BLSTM)": [pytest.approx(0.911)], "Viterbi": [pytest.approx(0.909)]}
        assert tables[3].notes[0].startswith("λ of the infnet+ rows: annealed")
        # the ablation's CRFs stay out of Table 1 (above: Viterbi 0.872) and have their own table
        assert {k: (v["twitter_pos dev"].mean, v["twitter_pos test"].mean) for k, v in vectors.items()} == {
            "no pretrained vectors": (pytest.approx(0.950), pytest.approx(0.501)),
            "GloVe, fixed": (pytest.approx(0.881), pytest.approx(0.872)),
            "GloVe, fine-tuned": (pytest.approx(0.940), pytest.approx(0.502))}

    def test_only_the_tables_the_sweeps_have(self, tu_store):
        from storage.tables_tu import paper_tables

        crf_only = paper_tables([load_sweep(tu_store, "crfplus")])
        assert [t.refs_key for t in crf_only] == ["Table 4"]
        assert [t.refs_key for t in paper_tables([load_sweep(tu_store, n) for n in ("crf", "infnet")])] == ["Table 1", "Table 2"]

    def test_references_per_table(self, tu_store, tmp_path):
        refs = tmp_path / "refs.yaml"
        refs.write_text("Table 1:\n  Viterbi: {twitter_pos CRF: 89.2}\nTable 4:\n  Viterbi: {twitter_pos CNN: 90.9}\n")
        report = build_report(tu_store, ["crf", "crfplus"], tmp_path / "out", refs=refs, plots=False, log=False)
        text = report.files["md"].read_text()
        assert "| Viterbi (paper, Δ) | — | — | — | 89.20 (-2.00) |" in text  # ours 87.20
        assert "| Viterbi (paper, Δ) | 90.90 (+0.00) |" in text

    def test_one_lucky_seed_does_not_outrank_a_mean_over_seeds(self, tmp_path):
        """Figure 1's side sweeps (other H, one seed) sit beside Table 1's trials: a cell picks among
        the settings with the most seeds, so H = 400's single seed (dev 0.90) loses to H = 100's two."""
        from storage.tables_tu import figure1_points, paper_tables

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        add_sweep(uri, "local", "local", [net(0.86, 0.851, arch="blstm", hidden=100), net(0.84, 0.853, arch="blstm", hidden=100, seed=2)],
                  {"seed": {"grid": [1, 2]}}, task="twitter_pos")
        add_sweep(uri, "fig1", "local", [net(0.90, 0.70, arch="blstm", hidden=400)], {"hidden": {"grid": [400]}}, task="twitter_pos")
        sweeps = [load_sweep(uri, "local"), load_sweep(uri, "fig1")]
        [one, *_] = paper_tables(sweeps)
        blstm = cells_of(one)["local baseline"]["twitter_pos BLSTM"]
        assert (blstm.n, blstm.mean) == (2, pytest.approx(0.852))
        assert any("best of 2 settings by mean dev (those with the most seeds): hidden=100; 2 seed(s)" in n for n in one.notes)
        # Figure 1 still shows H = 400 at its own point
        assert figure1_points(sweeps)["twitter_pos"]["local baseline blstm"] == [(100, pytest.approx(0.85)), (400, pytest.approx(0.90))]

    def test_a_seed_run_again_in_another_sweep_counts_once(self, tmp_path):
        """A scan (one seed per setting) that includes the main setting, reported beside the main
        sweep's three seeds: the repeated seed 1 is the same sample, not a fourth seed. Session
        15's case: counted twice, lr 0.005 had "4 seeds" and won the cell from lr 0.01's three with
        the better mean dev, by the most-seeds rule. The note names the run left out (the later
        one in the sweeps' order), also when its setting lost."""
        from storage.tables_tu import paper_tables

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        add_sweep(uri, "main", "local", [net(0.90, test, arch="blstm", lr=0.005, seed=seed)
                                         for seed, test in ((1, 0.85), (2, 0.86), (3, 0.87))],
                  {"seed": {"grid": [1, 2, 3]}}, task="twitter_pos")
        add_sweep(uri, "scan", "local", [net(0.90, 0.85, arch="blstm", lr=0.005), net(0.80, 0.99, arch="blstm", lr=0.02)],
                  {"lr": {"grid": [0.005, 0.02]}}, task="twitter_pos")
        add_sweep(uri, "best", "local", [net(0.92, 0.88, arch="blstm", lr=0.01, seed=s) for s in (1, 2, 3)],
                  {"seed": {"grid": [1, 2, 3]}}, task="twitter_pos")

        def cell_and_notes(names):
            [one, *_] = paper_tables([load_sweep(uri, n) for n in names])
            return cells_of(one)["local baseline"]["twitter_pos BLSTM"], one.notes

        blstm, notes = cell_and_notes(["main", "scan"])
        assert (blstm.n, blstm.mean) == (3, pytest.approx(0.86))
        assert any("counts each seed once" in n and "left out: scan-0 (scan)" in n for n in notes), notes
        blstm, notes = cell_and_notes(["scan", "main"])
        assert blstm.n == 3 and any("left out: main-0 (main)" in n for n in notes), notes
        blstm, notes = cell_and_notes(["main", "scan", "best"])
        assert (blstm.n, blstm.mean) == (3, pytest.approx(0.88))
        assert any("left out: scan-0 (scan)" in n for n in notes), notes

    def test_networks_of_other_vectors_have_their_own_table(self, tmp_path):
        """Networks with fine-tuned vectors (an ablation) stay out of Table 1 and Figure 1 where the
        paper's fixed-vector networks ran, however good on dev, and get a table beside them."""
        from storage.tables_tu import figure1_points, paper_tables

        uri, glove = f"sqlite:///{tmp_path / 'mlflow.db'}", {"embeddings": "embeddings/glove.6B.50d.txt.gz"}
        seeds, pos = {"seed": {"grid": [1]}}, {"task": "twitter_pos"}
        add_sweep(uri, "local", "local", [net(0.86, 0.851, arch="blstm", hidden=100, **glove)], seeds, **pos)
        add_sweep(uri, "local_tuned", "local", [net(0.95, 0.701, arch="blstm", hidden=400, finetune_embeddings=True,
                                                    **glove)], seeds, **pos)
        add_sweep(uri, "infnet", "infnet", [net(0.87, 0.801, arch="blstm", lam=1, **glove)], seeds, **pos)
        add_sweep(uri, "infnet_tuned", "infnet", [net(0.96, 0.711, arch="blstm", lam=1, finetune_embeddings=True,
                                                      **glove)], seeds, **pos)
        sweeps = [load_sweep(uri, n) for n in ("local", "local_tuned", "infnet", "infnet_tuned")]
        one, vectors = paper_tables(sweeps)
        assert vectors.refs_key == "Network word vectors"
        assert {k: v["twitter_pos BLSTM"].values for k, v in cells_of(one).items() if k != "Viterbi"} == {
            "local baseline": [pytest.approx(0.851)], "infnet": [pytest.approx(0.801)], "gradient descent": []}
        assert {k: v["twitter_pos BLSTM"].values for k, v in cells_of(vectors).items()} == {
            "local baseline (GloVe, fixed)": [pytest.approx(0.851)], "local baseline (GloVe, fine-tuned)": [pytest.approx(0.701)],
            "infnet (GloVe, fixed)": [pytest.approx(0.801)], "infnet (GloVe, fine-tuned)": [pytest.approx(0.711)]}
        assert figure1_points(sweeps) == {}  # H = 400 ran with other vectors only: no second point
        # without the paper's setting, the fine-tuned networks are Table 1's
        [alone, *_] = paper_tables([load_sweep(uri, "local_tuned")])
        assert cells_of(alone)["local baseline"]["twitter_pos BLSTM"].values == [pytest.approx(0.701)]

    def test_figure1_dev_score_against_hidden_size(self, tmp_path):
        from storage.tables_tu import figure1_points

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        add_sweep(uri, "fig1", "local", [net(0.80, 0.1, arch="blstm", hidden=50), net(0.84, 0.1, arch="blstm", hidden=50, seed=2),
                                         net(0.86, 0.1, arch="blstm", hidden=100), net(0.70, 0.1, arch="cnn13", hidden=100)],
                  {"hidden": {"grid": [50, 100]}}, task="twitter_pos")
        assert figure1_points([load_sweep(uri, "fig1")]) == {"twitter_pos": {
            "local baseline blstm": [(50, pytest.approx(0.82)), (100, pytest.approx(0.86))],
            "local baseline cnn13": [(100, pytest.approx(0.70))]}}
        report = build_report(uri, ["fig1"], tmp_path / "out", log=False)
        [figure] = [p for p in report.plots if p.name == "figure1-twitter_pos.png"]
        assert min(png_size(figure.read_bytes())) > 100


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
