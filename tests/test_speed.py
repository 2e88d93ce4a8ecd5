"""Tu & Gimpel's Table 3 and Figure 2 (core.speed): each method's score equals what core's decoders
give on the same batches, the timings are positive and finite (no wall-clock limits); the report's
Table 3 layout and Figure 2 plot from a real MLflow store (SQLite); the stage's config and its place
in a study; and the speed stage end to end through a real local Ray sweep (slow)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest

from core.config import ConfigError
from core.data import load_task
from core.decoding import score_decoder
from core.loading import load_for_decoding
from core.speed import ARCH_PARAM, METHODS, PLUS_PARAM, SpeedConfig, flat_metrics, run_speed
from helpers import train_tiny
from storage import tracking
from storage.report import render_csv, render_markdown
from storage.runs import load_sweep
from storage.tables_tu import figure2_points, table3

SMALL = dict(batch_sizes=(10, 64), gd_steps=5, repeats=1, threads=1, device="cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny CRF energy and a CNN inference network trained against it."""
    root = tmp_path_factory.mktemp("speed")
    crf = train_tiny(root / "crf", "crf")
    infnet = train_tiny(root / "inf", "infnet", arch="cnn13", energy=str(crf))
    return crf, infnet


@pytest.fixture(scope="module")
def result(checkpoints):
    _, infnet = checkpoints
    return run_speed(SpeedConfig(checkpoint=str(infnet), split="test", **SMALL))


@pytest.mark.slow  # trains a tiny CRF and inference network, then times three methods (~10 s)
class TestRunSpeed:
    def test_scores_equal_core_decoders_on_the_same_batches(self, checkpoints, result):
        _, infnet_dir = checkpoints
        crf, infnet, vocabs, _ = load_for_decoding(infnet_dir, None)
        task = load_task("synthetic")
        first = SMALL["batch_sizes"][0]  # the scores are the first batch size's tags
        for method, kwargs in (("infnet", {}), ("viterbi", {}), ("gd", {"steps": SMALL["gd_steps"]})):
            direct = score_decoder(task.test, vocabs, task.metric, method, crf=crf, infnet=infnet, batch_size=first, **kwargs)
            assert result["scores"][method] == pytest.approx(direct["score"]), method

    def test_gd_steps_are_the_configs(self, checkpoints):
        # Another N and batch size: the timed GD runs the config's N on the config's batches.
        _, infnet = checkpoints
        one = run_speed(SpeedConfig(checkpoint=str(infnet), **{**SMALL, "gd_steps": 1, "batch_sizes": (64,)}))
        crf, net, vocabs, _ = load_for_decoding(infnet, None)
        task = load_task("synthetic")
        direct = score_decoder(task.test, vocabs, task.metric, "gd", crf=crf, steps=1, batch_size=64)
        assert one["scores"]["gd"] == pytest.approx(direct["score"])

    def test_every_cell_is_positive_and_finite(self, result):
        assert [(r["method"], r["batch_size"]) for r in result["rows"]] == [
            (m, b) for m in METHODS for b in SMALL["batch_sizes"]]
        for r in result["rows"]:
            assert 0 < r["examples_per_second"] < math.inf and 0 < r["seconds"] < math.inf
            assert r["seconds_per_sentence"] == pytest.approx(1 / r["examples_per_second"])
            assert r["seconds"] == pytest.approx(r["seconds_per_sentence"] * result["sentences"])

    def test_flat_metrics(self, result):
        metrics = result["metrics"]
        assert metrics == flat_metrics(result["rows"], result["scores"])
        assert {f"{m}_b{b}_{q}" for m in METHODS for b in (10, 64) for q in ("eps", "sps")} | {
            f"{m}_score" for m in METHODS} == set(metrics)
        assert result["arch"] == "cnn13" and result["threads"] == 1 and result["sentences"] == len(load_task("synthetic").test)

    def test_a_crf_checkpoint_is_refused(self, checkpoints):
        from core.checkpoint import CheckpointError

        crf, _ = checkpoints
        with pytest.raises(CheckpointError, match="inference-network checkpoint"):
            run_speed(SpeedConfig(checkpoint=str(crf), **SMALL))


class TestConfig:
    @pytest.mark.parametrize("field, value", [("batch_sizes", ()), ("batch_sizes", (10, 0)), ("batch_sizes", (10, 10)),
                                              ("gd_steps", 0), ("gd_lr", 0.0), ("repeats", 0), ("split", "train"),
                                              ("momentum", 1.0), ("threads", -1)])
    def test_bad_values_name_the_field(self, field, value):
        with pytest.raises(ConfigError, match=field):
            SpeedConfig(checkpoint="x", **{field: value})

    def test_defaults(self):
        from core.decoding import DEFAULT_LR

        config = SpeedConfig(checkpoint="x", batch_sizes=[10, 256])
        assert (config.batch_sizes, config.gd_steps, config.gd_lr, config.threads, config.split) == (
            (10, 256), 20, DEFAULT_LR["gd"], 1, "test")

    def test_spec_validates_speed_fields(self):
        from sweeps.spec import SpecError, validate

        base = {"name": "s", "task": "synthetic", "stage": "speed", "epochs": 1, "warm_start": {"checkpoint": "/nowhere"}}
        with pytest.raises(SpecError, match="fixed.hidden: unknown parameter; parameters are SpeedConfig fields"):
            validate({**base, "fixed": {"hidden": 3}})
        with pytest.raises(SpecError, match="repeats must be >= 1"):
            validate({**base, "fixed": {"repeats": 0}})


class TestStudyStage:
    def stages(self, source_stage: str) -> dict:
        def spec(stage, **extra):
            return {"task": "synthetic", "stage": stage, "epochs": 1, "scheduler": {"type": "fifo"}, **extra}

        return {"crfplus": {"spec": spec("crf+")}, "localplus": {"spec": spec("local")},
                "infnetplus": {"spec": spec("infnet"), "warm_start": {"stage": "crfplus"}},
                "speed": {"spec": spec("speed", fixed={"batch_sizes": [10, 256]}), "warm_start": {"stage": source_stage}}}

    def test_after_an_infnet_stage(self, tmp_path):
        import yaml

        from sweeps.study import load_study

        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "stages": self.stages("infnetplus")}))
        study = load_study(path)
        assert study.stages["speed"].spec.warm_start.sweep == "s-infnetplus"

    def test_not_after_a_crf(self, tmp_path):
        import yaml

        from sweeps.study import StudyError, load_study

        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "stages": self.stages("crfplus")}))
        with pytest.raises(StudyError, match="stages.speed"):
            load_study(path)

    def test_tu_pos_study_has_a_speed_stage_after_infnetplus(self, monkeypatch, tmp_path):
        import os

        from sweeps.study import load_study

        if not os.environ.get("BEAMTUNE_DATA"):  # validation needs a data root to exist, not the data
            monkeypatch.setenv("BEAMTUNE_DATA", str(tmp_path))
        study = load_study(Path(__file__).resolve().parents[1] / "sweeps" / "studies" / "tu_pos.yaml")
        assert list(study.stages)[-1] == "speed"
        assert study.stages["speed"].spec.warm_start.sweep == f"{study.name}-infnetplus"

    @pytest.mark.parametrize("name,cnn", [("tu_pos", "cnn13"), ("tu_ner", "cnn15"), ("tu_ccg", "cnn15")])
    def test_tu_studies_time_table1s_networks_for_table3(self, name, cnn, monkeypatch, tmp_path):
        """Table 3 is the BLSTM-CRF's: one speed stage per architecture, each from that architecture's
        best network of the Table 1 `infnet` stage (the CNN with the paper's window for the task)."""
        import os

        from sweeps.study import load_study

        if not os.environ.get("BEAMTUNE_DATA"):
            monkeypatch.setenv("BEAMTUNE_DATA", str(tmp_path))
        study = load_study(Path(__file__).resolve().parents[1] / "sweeps" / "studies" / f"{name}.yaml")
        for column, arch in (("cnn", cnn), ("blstm", "blstm"), ("seq2seq", "seq2seq")):
            stage = study.stages[f"table3_{column}"]
            assert stage.spec.stage == "speed" and stage.spec.fixed["batch_sizes"] == [10, 256]
            assert (stage.spec.warm_start.sweep, stage.spec.warm_start.where) == (f"{name}-infnet", {"arch": arch})
            assert arch in study.stages["infnet"].spec.space["arch"].grid


# ---------------------------------------------------------------------------------------------
# The report's Table 3 and Figure 2, from runs shaped as speed trials log them
# ---------------------------------------------------------------------------------------------


def add_speed_sweep(uri: str, name: str, trials: list[dict], task: str = "synthetic") -> None:
    """A parent run and one finished child per trial: {"params", "metrics" (logged at step 1)}."""
    import yaml

    experiment = tracking.ensure_experiment(uri, "beamtune")
    spec = yaml.safe_dump({"name": name, "stage": "speed", "task": task})
    parent = tracking.start_parent(uri, experiment, name, {"beamtune.stage": "speed", "beamtune.task": task}, spec)
    journals = Path(uri.removeprefix("sqlite:///")).parent / "journals" / name
    for i, trial in enumerate(trials):
        run = tracking.TrialRun.open(uri, experiment, parent, f"t{i}", f"{name}-{i}", None,
                                     tags={tracking.SWEEP_TAG: name, "beamtune.stage": "speed"}, spool_directory=journals)
        run.log_params(trial["params"])
        run.log_metrics(trial["metrics"], step=1)
        run.finish("FINISHED")
    tracking.end_run(uri, parent)


def speed_metrics(infnet_eps: float, viterbi_eps: float, gd_eps: float, scores=(0.9, 0.92, 0.85)) -> dict[str, float]:
    rows = [{"method": m, "batch_size": b, "examples_per_second": eps * b / 10, "seconds_per_sentence": 10 / (eps * b)}
            for m, eps in (("infnet", infnet_eps), ("viterbi", viterbi_eps), ("gd", gd_eps)) for b in (10, 256)]
    metrics = flat_metrics(rows, dict(zip(METHODS, scores)))
    return {"dev_score": scores[0], "best_dev_score": scores[0], **metrics}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    add_speed_sweep(uri, "sp-cnn", [{"params": {ARCH_PARAM: "cnn13", "threads": 1}, "metrics": speed_metrics(1000, 200, 10)}],
                    task="twitter_pos")
    add_speed_sweep(uri, "sp-blstm", [{"params": {ARCH_PARAM: "blstm", "threads": 1},
                                       "metrics": speed_metrics(300, 220, 12, (0.88, 0.92, 0.86))}], task="twitter_pos")
    add_speed_sweep(uri, "sp-ner", [{"params": {ARCH_PARAM: "seq2seq", "threads": 1}, "metrics": speed_metrics(50, 40, 4)}],
                    task="conll2003_en")
    return uri


def sweeps_of(uri: str) -> list:
    return [load_sweep(uri, n) for n in ("sp-cnn", "sp-blstm", "sp-ner")]


class TestTable3Layout:
    def test_cells_equal_mlflow_metrics(self, store):
        sweeps = sweeps_of(store)
        b10, b256 = table3(sweeps)
        assert "batch size 10" in b10.title and "batch size 256" in b256.title
        assert b10.columns == [("CNN", "b10"), ("BLSTM", "b10"), ("seq2seq", "b10"), ("Viterbi", "b10"), ("GD", "b10")]
        assert b10.refs_key == "Table 3" and b10.scale == 1.0
        rows = {task: dict(zip([c for c, _ in b10.columns], cells)) for task, cells in b10.rows}
        assert list(rows) == ["twitter_pos", "conll2003_en"]  # the paper's order
        logged = {t.run_id: t.metrics for s in sweeps for t in s.trials}
        for task, cells in rows.items():
            for label, cell in cells.items():
                key = {"Viterbi": "viterbi", "GD": "gd"}.get(label, "infnet") + "_b10_eps"
                assert sorted(cell.values) == sorted(logged[r][key] for r in cell.run_ids)
        assert rows["twitter_pos"]["CNN"].values == [1000] and rows["twitter_pos"]["BLSTM"].values == [300]
        assert rows["twitter_pos"]["seq2seq"].note == "not run"
        assert sorted(rows["twitter_pos"]["Viterbi"].values) == [200, 220]  # both networks' energies, pooled
        assert any("twitter_pos: Viterbi and GD over 2" in n for n in b10.notes)
        big = {task: dict(zip([c for c, _ in b256.columns], cells)) for task, cells in b256.rows}
        assert big["conll2003_en"]["seq2seq"].values == [pytest.approx(50 * 25.6)]

    def test_markdown_csv_and_paper_values(self, store):
        b10, _ = table3(sweeps_of(store))
        text = render_markdown(b10, {"twitter_pos": {"CNN b10": 12500, "GD b10": 20}})
        assert "| task | CNN b10 | BLSTM b10 | seq2seq b10 | Viterbi b10 | GD b10 |" in text
        assert "| twitter_pos | 1000.00 | 300.00 | — (not run) | 210.00 ± 14.14 (2) | 11.00 ± 1.41 (2) |" in text
        assert "| twitter_pos (paper, Δ) | 12500.00 (-11500.00) | — | — | — | 20.00 (-9.00) |" in text
        rows = list(csv.DictReader(io.StringIO(render_csv(b10))))
        gd = next(r for r in rows if r["row"] == "conll2003_en" and r["method"] == "GD")
        assert float(gd["mean"]) == pytest.approx(4.0) and gd["mlflow_metric"] == "gd_b10_eps" and gd["batch"] == "b10"

    def test_layouts_choose_table3_for_speed_sweeps(self, store):
        from storage.report import layouts

        tables = layouts(store, sweeps_of(store))
        assert [t.refs_key for t in tables] == ["Table 3", "Table 3"]

    def test_references_files_have_table3(self):
        from storage.report import load_refs

        root = Path(__file__).resolve().parents[1] / "benchmarks" / "references"
        for name, task in (("pos", "twitter_pos"), ("ner", "conll2003_en"), ("ccg", "ccgbank400")):
            refs, _ = load_refs(root / f"tu2019_{name}.yaml")
            assert set(refs["Table 3"][task]) == {f"{c} b10" for c in ("CNN", "BLSTM", "seq2seq", "Viterbi", "GD")}

    def test_figure2_points(self, store):
        points = figure2_points(sweeps_of(store))
        assert set(points) == {"twitter_pos", "conll2003_en"}
        pos = points["twitter_pos"]
        assert set(pos) == {"infnet CNN", "infnet BLSTM", "Viterbi", "GD"}
        assert pos["infnet CNN"] == (pytest.approx(1 / 1000), pytest.approx(0.9))
        assert pos["Viterbi"] == (pytest.approx((1 / 200 + 1 / 220) / 2), pytest.approx(0.92))

    def test_plus_networks_have_rows_of_their_own(self, tmp_path):
        """Table 3 is the BLSTM-CRF's: a "+" network's timings (and its Viterbi and GD on the
        costlier CRF+ energy) go in a row of their own, not pooled into the task's."""
        from storage.report import _figure2

        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        add_speed_sweep(uri, "sp-cnn", [{"params": {ARCH_PARAM: "cnn13", PLUS_PARAM: False},
                                         "metrics": speed_metrics(1000, 200, 10)}], task="twitter_pos")
        add_speed_sweep(uri, "sp-plus", [{"params": {ARCH_PARAM: "cnn13", PLUS_PARAM: True},
                                          "metrics": speed_metrics(800, 100, 5)}], task="twitter_pos")
        sweeps = [load_sweep(uri, n) for n in ("sp-plus", "sp-cnn")]
        b10, _ = table3(sweeps)
        rows = {task: dict(zip([c for c, _ in b10.columns], cells)) for task, cells in b10.rows}
        assert list(rows) == ["twitter_pos", "twitter_pos (CRF+)"]
        assert rows["twitter_pos"]["Viterbi"].values == [200] and rows["twitter_pos (CRF+)"]["Viterbi"].values == [100]
        assert not any("pooled" in n or "over 2" in n for n in b10.notes)
        written = _figure2(sweeps, tmp_path / "plots")
        assert [p.name for p in written] == ["figure2-twitter_pos.png", "figure2-twitter_pos_CRFplus.png"]

    def test_figure2_plot_one_labelled_point_per_method(self, store, tmp_path):
        from storage import plots
        from storage.report import _figure2

        seen = []
        original = plots._save

        def capture(fig, path):
            [ax] = fig.axes
            seen.append((ax.get_xscale(), len(ax.collections), sorted(t.get_text() for t in ax.texts)))
            return original(fig, path)

        plots._save = capture
        try:
            written = _figure2(sweeps_of(store), tmp_path / "plots")
            assert plots.sweep_plots(store, sweeps_of(store), tmp_path / "plots") == []  # no curves for speed sweeps
        finally:
            plots._save = original
        assert [p.name for p in written] == ["figure2-conll2003_en.png", "figure2-twitter_pos.png"]
        assert seen == [("log", 3, ["GD", "Viterbi", "infnet seq2seq"]),
                        ("log", 4, ["GD", "Viterbi", "infnet BLSTM", "infnet CNN"])]
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


# ---------------------------------------------------------------------------------------------
# The stage end to end: a real local Ray sweep, MLflow, the report
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_speed_sweep_end_to_end(ray_local, checkpoints, tmp_path):
    from storage.report import build_report
    from sweeps.launch import run_sweep
    from sweeps.spec import validate

    crf_dir, infnet = checkpoints
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fixed = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items() if k != "threads"}
    spec = validate({"name": "sp", "task": "synthetic", "stage": "speed", "epochs": 1, "fixed": fixed,
                     "warm_start": {"checkpoint": str(infnet)}, "scheduler": {"type": "fifo"}, "resources": {"cpu": 1}},
                    storage=tmp_path / "sweeps")
    outcome = run_sweep(spec, storage=tmp_path / "sweeps", tracking_uri=uri, verbose=0)
    assert outcome.trials == 1 and outcome.errors == 0
    client = tracking.client(uri)
    [child] = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    metrics, params = child.data.metrics, child.data.params
    assert params[ARCH_PARAM] == "cnn13" and params[PLUS_PARAM] == "False" and params["threads"] == "1"
    direct = run_speed(SpeedConfig(checkpoint=str(infnet), **SMALL))
    for method in METHODS:  # scores are deterministic; timings are only checked to be there
        assert metrics[f"{method}_score"] == pytest.approx(direct["scores"][method])
        assert 0 < metrics[f"{method}_b10_eps"] < math.inf
    assert metrics["dev_score"] == metrics["infnet_score"]
    tables = {Path(a.path).name for a in client.list_artifacts(child.info.run_id, "tables")}
    assert tables == {"speed_test.parquet", "speed_test.json"}
    report = build_report(uri, ["sp"], tmp_path / "report")
    b10 = next(t for t in report.tables if t.refs_key == "Table 3" and "batch size 10" in t.title)
    [(task, cells)] = b10.rows
    assert task == "synthetic" and cells[0].values == [metrics["infnet_b10_eps"]]
    assert cells[3].values == [metrics["viterbi_b10_eps"]] and cells[4].values == [metrics["gd_b10_eps"]]
    assert [p.name for p in report.plots] == ["figure2-synthetic.png"]
