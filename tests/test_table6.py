"""Tu & Gimpel's Table 6 (core.table6): every row against what core's decoders give directly, the
N = 0 limits (tailoring = the network, warm-started GD = its output), dev tuning, the energy of a
moved study; the report's Table 6 layout and GD-against-N plot from a real MLflow store (SQLite);
and the table6 stage end to end through a real local Ray sweep (slow)."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
import torch

from core.data import load_task, make_batches
from core.decoding import score_decoder
from core.loading import load_for_decoding
from core.oracle import one_lr_per_step, run_oracle_grid
from core.table6 import Table6Config, flat_metrics, run_table6
from helpers import train_tiny
from storage import tracking
from storage.best import SweepNotFound, export_energy, find_energy
from storage.report import render_csv, render_markdown
from storage.runs import load_sweep
from storage.tables_tu import table6

SMALL = dict(gd_steps=(5, 20), gd_lrs=(100.0, 1.0), tailor_steps=(0, 2), tailor_lrs=(1e-2, 1e-1), warm_steps=(0, 2),
             warm_lrs=(100.0, 1.0), threads=1, device="cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny CRF energy under a sweep-like folder and a CNN inference network trained against it."""
    root = tmp_path_factory.mktemp("t6")
    crf = train_tiny(root / "storage" / "s-crf" / "warm_start", "crf")
    infnet = train_tiny(root / "inf", "infnet", arch="cnn13", energy=str(crf))
    return root, crf, infnet


@pytest.fixture(scope="module")
def result(checkpoints):
    _, _, infnet = checkpoints
    return run_table6(Table6Config(checkpoint=str(infnet), split="test", **SMALL))


def rows_of(result, method):
    return {r["steps"]: r for r in result["rows"] if r["method"] == method}


@pytest.mark.slow  # trains a tiny CRF and inference network, then every Table 6 row (~10 s)
class TestRows:
    def test_every_row_and_metric(self, result):
        methods = [r["method"] for r in result["rows"]]
        assert methods == ["gold standard", "Viterbi", "gradient descent", "gradient descent", "infnet",
                           "discretized infnet", "instance-tailored infnet", "instance-tailored infnet",
                           "infnet warm-starts GD", "infnet warm-starts GD",
                           "infnet warm-starts GD (oracle lr per sentence)", "infnet warm-starts GD (oracle lr per sentence)"]
        metrics = result["metrics"]
        assert metrics == flat_metrics(result["rows"])
        assert {"gold_energy", "viterbi_score", "gd_n5_score", "gd_n20_energy", "infnet_energy", "infnet_discrete_energy",
                "infnet_discrete_score", "tailored_n2_lr", "warmgd_n2_score", "warmgd_oracle_n2_energy"} <= set(metrics)
        assert "viterbi_discrete_energy" not in metrics  # a discrete output has one energy

    def test_viterbi_infnet_gd_equal_core_decoders(self, checkpoints, result):
        _, _, infnet_dir = checkpoints
        crf, infnet, vocabs, _ = load_for_decoding(infnet_dir, None)
        task = load_task("synthetic")
        viterbi = score_decoder(task.test, vocabs, task.metric, "viterbi", crf=crf)
        assert result["metrics"]["viterbi_score"] == pytest.approx(viterbi["score"])
        assert result["metrics"]["viterbi_energy"] == pytest.approx(viterbi["energy"], abs=1e-4)
        own = score_decoder(task.test, vocabs, task.metric, "infnet", crf=crf, infnet=infnet)
        assert result["metrics"]["infnet_score"] == pytest.approx(own["score"])
        assert result["metrics"]["infnet_energy"] == pytest.approx(own["relaxed_energy"], abs=1e-4)
        assert result["metrics"]["infnet_discrete_energy"] == pytest.approx(own["energy"], abs=1e-4)
        grid = run_oracle_grid(crf, task.test, vocabs, task.metric, (5, 20), (100.0, 1.0))
        for row in grid["table6"]:
            assert rows_of(result, "gradient descent")[row["steps"]]["score"] == pytest.approx(row["score"])
            assert rows_of(result, "gradient descent")[row["steps"]]["energy"] == pytest.approx(row["energy"], abs=1e-4)

    def test_gold_energy_is_the_crf_energy_of_the_gold_tags(self, checkpoints, result):
        _, _, infnet_dir = checkpoints
        crf, _, vocabs, _ = load_for_decoding(infnet_dir, None)
        task = load_task("synthetic")
        energies = []
        with torch.no_grad():
            for sentence in task.test:  # one sentence at a time: no padding, no batching
                [batch] = make_batches([sentence], vocabs, 1)
                unary = crf.unary(batch.words, batch.chars, batch.lengths)  # (1, T, L)
                energies.append(float(crf.energy(unary, batch.labels, batch.mask)))
        assert result["gold_sentences"] == len(task.test)
        assert result["metrics"]["gold_energy"] == pytest.approx(sum(energies) / len(energies), abs=1e-4)
        assert result["metrics"]["gold_score"] == 1.0

    def test_gold_energy_leaves_out_sentences_with_an_unseen_tag(self, checkpoints):
        from core.data import Sentence
        from core.table6 import gold_energy

        _, _, infnet_dir = checkpoints
        crf, _, vocabs, _ = load_for_decoding(infnet_dir, None)
        known = load_task("synthetic").test[:3]
        unseen = Sentence(known[0].words, (*known[0].tags[:-1], "NEVER-SEEN"))
        alone, counted = gold_energy(crf, known, vocabs)
        mixed, counted_mixed = gold_energy(crf, [unseen, *known], vocabs)
        assert (counted, counted_mixed) == (3, 3) and mixed == pytest.approx(alone, abs=1e-5)
        assert gold_energy(crf, [unseen], vocabs)[1] == 0

    def test_viterbi_energy_is_the_lowest_discrete_energy(self, result):
        viterbi = result["metrics"]["viterbi_energy"]
        for r in result["rows"]:
            assert r["discrete_energy"] >= viterbi - 1e-4, r  # every sentence's at least Viterbi's, so the means

    def test_zero_steps_are_the_network_itself(self, result):
        infnet, discrete = rows_of(result, "infnet")[None], rows_of(result, "discretized infnet")[None]
        tailored = rows_of(result, "instance-tailored infnet")[0]
        assert tailored["score"] == infnet["score"]
        assert tailored["energy"] == pytest.approx(infnet["energy"], abs=1e-4)
        assert tailored["discrete_energy"] == pytest.approx(discrete["energy"], abs=1e-4)
        for method in ("infnet warm-starts GD", "infnet warm-starts GD (oracle lr per sentence)"):
            warm = rows_of(result, method)[0]  # GD from the logits, no step: softmax(logits) is the relaxed output
            assert warm["score"] == discrete["score"]
            assert warm["discrete_energy"] == pytest.approx(discrete["energy"], abs=1e-4)
            assert warm["energy"] == pytest.approx(infnet["energy"], abs=1e-4)

    def test_steps_lower_the_warm_start_energy(self, result):
        warm = rows_of(result, "infnet warm-starts GD (oracle lr per sentence)")
        assert warm[2]["energy"] < warm[0]["energy"]

    def test_tailoring_lr_is_the_best_on_dev(self, checkpoints, result):
        _, _, infnet_dir = checkpoints
        crf, infnet, vocabs, _ = load_for_decoding(infnet_dir, None)
        task = load_task("synthetic")
        dev = {lr: score_decoder(task.dev, vocabs, task.metric, "tailored", crf=crf, infnet=infnet, steps=2, lr=lr,
                                 batch_size=32) for lr in SMALL["tailor_lrs"]}
        best = max(SMALL["tailor_lrs"], key=lambda lr: (dev[lr]["score"], -dev[lr]["energy"]))
        row = rows_of(result, "instance-tailored infnet")[2]
        assert row["lr"] == best
        test = score_decoder(task.test, vocabs, task.metric, "tailored", crf=crf, infnet=infnet, steps=2, lr=best, batch_size=32)
        assert row["score"] == pytest.approx(test["score"])

    def test_warm_start_lr_is_the_best_on_dev(self, checkpoints, result):
        # Through the infnet-gd decoder (one lr at a time), not the batched grid the stage runs.
        _, _, infnet_dir = checkpoints
        crf, infnet, vocabs, _ = load_for_decoding(infnet_dir, None)
        task = load_task("synthetic")
        dev = {lr: score_decoder(task.dev, vocabs, task.metric, "infnet-gd", crf=crf, infnet=infnet, steps=2, lr=lr)
               for lr in SMALL["warm_lrs"]}
        assert dev[100.0]["score"] != dev[1.0]["score"]  # the choice matters on this data
        best = max(SMALL["warm_lrs"], key=lambda lr: (dev[lr]["score"], -dev[lr]["energy"]))
        row = rows_of(result, "infnet warm-starts GD")[2]
        assert row["lr"] == best
        test = score_decoder(task.test, vocabs, task.metric, "infnet-gd", crf=crf, infnet=infnet, steps=2, lr=best)
        assert row["score"] == pytest.approx(test["score"])
        assert row["discrete_energy"] == pytest.approx(test["energy"], abs=1e-4)
        oracle = rows_of(result, "infnet warm-starts GD (oracle lr per sentence)")[2]
        assert oracle["score"] >= row["score"]  # the per-sentence choice includes the dev-tuned lr


class TestOneLrPerStep:
    def test_best_score_then_lower_energy_then_earlier_lr(self):
        grid = [{"steps": 3, "lr": 10.0, "score": 0.5, "discrete_energy": -1.0},
                {"steps": 3, "lr": 1.0, "score": 0.7, "discrete_energy": -1.0},
                {"steps": 5, "lr": 10.0, "score": 0.7, "discrete_energy": -1.0},
                {"steps": 5, "lr": 1.0, "score": 0.7, "discrete_energy": -2.0},
                {"steps": 10, "lr": 10.0, "score": 0.6, "discrete_energy": -2.0},
                {"steps": 10, "lr": 1.0, "score": 0.6, "discrete_energy": -2.0}]
        chosen = one_lr_per_step(grid)
        assert {n: e["lr"] for n, e in chosen.items()} == {3: 1.0, 5: 1.0, 10: 10.0}


class TestStudyStage:
    def stages(self, source_stage: str) -> dict:
        def spec(stage, **extra):
            return {"task": "synthetic", "stage": stage, "epochs": 1, "scheduler": {"type": "fifo"}, **extra}

        return {"crfplus": {"spec": spec("crf+")}, "localplus": {"spec": spec("local")},
                "infnetplus": {"spec": spec("infnet"), "warm_start": {"stage": "crfplus"}},
                "table6": {"spec": spec("table6", fixed={"tailor_steps": [3, 5, 10], "split": "test"}),
                           "warm_start": {"stage": source_stage}}}

    def test_after_an_infnet_stage(self, tmp_path):
        import yaml

        from sweeps.study import load_study

        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "stages": self.stages("infnetplus")}))
        study = load_study(path)
        assert list(study.stages)[-1] == "table6" and study.stages["table6"].spec.warm_start.sweep == "s-infnetplus"

    @pytest.mark.parametrize("source", ["crfplus", "localplus"])
    def test_not_after_a_crf_or_a_local_baseline(self, tmp_path, source):
        import yaml

        from sweeps.study import StudyError, load_study

        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "stages": self.stages(source)}))
        with pytest.raises(StudyError) as error:
            load_study(path)
        assert error.value.problems == [f"stages.table6.warm_start.stage: stage 'table6' (table6) cannot start from stage "
                                        f"{source!r} ({'crf+' if source == 'crfplus' else 'local'}): it starts from infnet"]


class TestConfig:
    @pytest.mark.parametrize("field,value", [("split", "train"), ("gd_steps", (20, 5)), ("tailor_lrs", (0.0,)),
                                             ("warm_steps", ()), ("tailor_batch_size", 0)])
    def test_bad_values_name_the_field(self, field, value):
        from core.config import ConfigError

        with pytest.raises(ConfigError) as error:
            Table6Config(checkpoint="x", **{field: value})
        assert error.value.field == field

    @pytest.mark.slow  # trains tiny checkpoints
    def test_a_crf_checkpoint_is_refused(self, checkpoints):
        from core.checkpoint import CheckpointError

        _, crf, _ = checkpoints
        with pytest.raises(CheckpointError, match="needs an inference-network checkpoint"):
            run_table6(Table6Config(checkpoint=str(crf), **SMALL))


@pytest.mark.slow  # trains tiny checkpoints
class TestEnergyAfterAMove:
    def test_found_under_the_new_storage_root(self, checkpoints, tmp_path):
        root, crf, infnet = checkpoints
        moved = tmp_path / "elsewhere"
        shutil.copytree(root / "storage", moved)  # the sweeps as another machine mounts them
        shutil.copytree(infnet, tmp_path / "inf")
        shutil.move(str(crf), str(tmp_path / "gone"))  # the recorded path no longer exists
        try:
            assert find_energy(tmp_path / "inf", moved) == moved / "s-crf" / "warm_start"
            copy = export_energy(tmp_path / "inf", moved, tmp_path / "sweep" / "warm_start_energy")
            crf_model, _, _, _ = load_for_decoding(tmp_path / "inf", copy)
            assert crf_model is not None
            with pytest.raises(SweepNotFound, match="neither at"):
                find_energy(tmp_path / "inf", tmp_path / "nowhere")
        finally:
            shutil.move(str(tmp_path / "gone"), str(crf))

    def test_a_different_crf_in_its_place_is_not_taken(self, checkpoints, tmp_path):
        root, crf, infnet = checkpoints
        other = train_tiny(tmp_path / "storage" / "s-crf" / "warm_start", "crf", seed=7)
        shutil.copytree(infnet, tmp_path / "inf")
        shutil.move(str(crf), str(tmp_path / "gone"))
        try:
            with pytest.raises(SweepNotFound, match="with the recorded weights"):
                find_energy(tmp_path / "inf", tmp_path / "storage")
        finally:
            shutil.move(str(tmp_path / "gone"), str(crf))
        assert other.is_dir()


# ---------------------------------------------------------------------------------------------
# The report's Table 6 and plot, from runs shaped as the table6 and gd-oracle trials log them
# ---------------------------------------------------------------------------------------------


def add_eval_sweep(uri: str, name: str, stage: str, trials: list[dict], task: str = "synthetic",
                   warm_sweep: str | None = None) -> None:
    """A parent run and one finished child per trial: {"params", "metrics" (logged at step 1)}."""
    import yaml

    experiment = tracking.ensure_experiment(uri, "beamtune")
    spec = yaml.safe_dump({"name": name, "stage": stage, "task": task,
                           **({"warm_start": {"sweep": warm_sweep}} if warm_sweep else {})})
    parent = tracking.start_parent(uri, experiment, name, {"beamtune.stage": stage, "beamtune.task": task}, spec)
    journals = Path(uri.removeprefix("sqlite:///")).parent / "journals" / name
    for i, trial in enumerate(trials):
        run = tracking.TrialRun.open(uri, experiment, parent, f"t{i}", f"{name}-{i}", None,
                                     tags={tracking.SWEEP_TAG: name, "beamtune.stage": stage}, spool_directory=journals)
        run.log_params(trial["params"])
        run.log_metrics(trial["metrics"], step=1)
        run.finish("FINISHED")
    tracking.end_run(uri, parent)


def table6_metrics(shift: float) -> dict[str, float]:
    rows = [{"method": "gold standard", "steps": None, "lr": None, "score": 1.0, "energy": -10.0 + shift, "discrete_energy": -10.0 + shift},
            {"method": "Viterbi", "steps": None, "lr": None, "score": 0.9 + shift, "energy": -12.0, "discrete_energy": -12.0}]
    rows += [{"method": "gradient descent", "steps": n, "lr": None, "score": 0.8 + n / 1000 + shift, "energy": -11.0 - n / 100,
              "discrete_energy": -11.5} for n in (10, 20)]
    rows += [{"method": "infnet", "steps": None, "lr": None, "score": 0.85, "energy": -9.0 + shift, "discrete_energy": -11.0},
             {"method": "discretized infnet", "steps": None, "lr": None, "score": 0.85, "energy": -11.0, "discrete_energy": -11.0}]
    rows += [{"method": "instance-tailored infnet", "steps": n, "lr": 0.01, "score": 0.86, "energy": -11.2, "discrete_energy": -11.3}
             for n in (3, 5)]
    rows += [{"method": m, "steps": 3, "lr": lr, "score": 0.87, "energy": -11.9, "discrete_energy": -11.9}
             for m, lr in (("infnet warm-starts GD", 100.0), ("infnet warm-starts GD (oracle lr per sentence)", None))]
    return {"dev_score": 0.85, "best_dev_score": 0.85, **flat_metrics(rows)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    add_eval_sweep(uri, "t6", "table6", [{"params": {"seed": 1}, "metrics": table6_metrics(0.0)},
                                         {"params": {"seed": 2}, "metrics": table6_metrics(0.02)}])
    add_eval_sweep(uri, "t6b", "table6", [{"params": {"seed": 1}, "metrics": table6_metrics(0.05)}])  # another network
    add_eval_sweep(uri, "crfp", "crf+", [], task="pos")
    add_eval_sweep(uri, "gd", "gd-oracle", [{"params": {"split": "test"},
                                             "metrics": {"dev_score": 0.7, "best_dev_score": 0.7, "viterbi_score": 0.6,
                                                         "viterbi_energy": -5.0, "score_n5": 0.65, "energy_n5": -4.9,
                                                         "score_n10": 0.66, "energy_n10": -4.95}}],
                   task="pos", warm_sweep="crfp")
    add_eval_sweep(uri, "crfn", "crf", [], task="ner")  # Table 1's BLSTM-CRF: not the paper's Table 6 energy
    add_eval_sweep(uri, "gdn", "gd-oracle", [{"params": {"split": "test"},
                                              "metrics": {"dev_score": 0.8, "best_dev_score": 0.8, "viterbi_score": 0.84,
                                                          "viterbi_energy": -150.0, "score_n10": 0.80, "energy_n10": -149.0}}],
                   task="ner", warm_sweep="crfn")
    return uri


class TestTable6Layout:
    def test_cells_equal_mlflow_metrics(self, store):
        sweep = load_sweep(store, "t6")
        table = table6([sweep])
        assert table.columns == [("synthetic", "score"), ("synthetic", "energy")]
        rows = dict(table.rows)
        assert list(rows) == ["gold standard", "Viterbi", "gradient descent (N = 10)", "gradient descent (N = 20)", "infnet",
                              "discretized infnet output", "instance-tailored infnet (N = 3)", "instance-tailored infnet (N = 5)",
                              "infnet warm start for GD (N = 3)", "infnet warm start for GD (N = 3, oracle lr per sentence)"]
        logged = {t.run_id: t.metrics for t in sweep.trials}
        for title, key in (("gradient descent (N = 20)", "gd_n20"), ("infnet", "infnet"), ("gold standard", "gold"),
                           ("instance-tailored infnet (N = 5)", "tailored_n5"), ("infnet warm start for GD (N = 3)", "warmgd_n3")):
            for cell, column in zip(rows[title], ("score", "energy")):
                assert cell.metric == f"{key}_{column}"
                assert sorted(cell.values) == sorted(logged[r][f"{key}_{column}"] for r in cell.run_ids)
                assert cell.n == 2
        energy = rows["infnet"][1]
        assert energy.mean == pytest.approx(-8.99) and energy.sd == pytest.approx(0.0141421, rel=1e-4)

    def test_markdown_csv_scales_and_refs(self, store):
        table = table6([load_sweep(store, "t6")])
        text = render_markdown(table, {"infnet": {"synthetic score": 91.3, "synthetic energy": -9.5}})
        assert "| method | synthetic score | synthetic energy |" in text
        assert "| infnet | 85.00 ± 0.00 (2) | -8.99 ± 0.01 (2) |" in text
        assert "| infnet (paper, Δ) | 91.30 (-6.30) | -9.50 (+0.51) |" in text
        rows = list(csv.DictReader(io.StringIO(render_csv(table))))
        gd = next(r for r in rows if r["row"] == "gradient descent (N = 10)" and r["quantity"] == "energy")
        assert float(gd["mean"]) == pytest.approx(-11.1) and gd["mlflow_metric"] == "gd_n10_energy"
        score = next(r for r in rows if r["row"] == "gradient descent (N = 10)" and r["quantity"] == "score")
        assert float(score["mean"]) == pytest.approx(82.0)

    def test_gd_oracle_sweeps_give_gd_and_viterbi_rows(self, store):
        from storage.report import layouts

        tables = layouts(store, [load_sweep(store, n) for n in ("t6", "gd", "crfp")])
        [t6] = [t for t in tables if t.title.startswith("Tu & Gimpel (2019) Table 6")]
        columns = [f"{a} {b}" for a, b in t6.columns]
        assert columns == ["pos score", "pos energy", "synthetic score", "synthetic energy"]
        rows = {title: dict(zip(columns, cells)) for title, cells in t6.rows}
        assert rows["gradient descent (N = 5)"]["pos energy"].values == [-4.9]
        assert rows["gradient descent (N = 5)"]["pos energy"].metric == "energy_n5"
        assert rows["gradient descent (N = 5)"]["synthetic score"].note == "not run"
        assert rows["Viterbi"]["pos score"].values == [0.6]
        assert rows["infnet"]["pos score"].note == "not run"
        assert not any("not a CRF+" in n for n in t6.notes)  # the gd-oracle sweep's CRF is the crf+ stage's

    def test_gd_against_a_blstm_crf_stands_without_the_papers_crf_plus_values(self, store):
        from storage.report import layouts

        tables = layouts(store, [load_sweep(store, n) for n in ("gd", "crfp", "gdn", "crfn")])
        [t6] = [t for t in tables if t.title.startswith("Tu & Gimpel (2019) Table 6")]
        assert [f"{a} {b}" for a, b in t6.columns] == ["ner (BLSTM-CRF) score", "ner (BLSTM-CRF) energy",
                                                      "pos score", "pos energy"]
        assert dict(t6.rows)["Viterbi"][0].values == [0.84]
        assert any("ner: GD and Viterbi rows" in n and "not set beside them" in n for n in t6.notes)
        text = render_markdown(t6, {"Viterbi": {"ner score": 91.6, "ner energy": -231.53, "pos score": 70.0}})
        assert "91.60" not in text and "-231.53" not in text  # the CRF+ paper values are not compared with a CRF
        assert "| Viterbi (paper, Δ) | — | — | 70.00 (-10.00) | — |" in text

    def test_two_sweeps_of_one_task_are_not_pooled(self, store):
        t6 = table6([load_sweep(store, "t6"), load_sweep(store, "t6b")])
        assert [f"{a} {b}" for a, b in t6.columns] == ["synthetic (t6) score", "synthetic (t6) energy",
                                                       "synthetic (t6b) score", "synthetic (t6b) energy"]
        viterbi = dict(t6.rows)["Viterbi"]
        assert [c.n for c in viterbi] == [2, 2, 1, 1] and viterbi[2].values == [pytest.approx(0.95)]

    def test_plot_of_gd_against_n(self, store, tmp_path):
        from storage import plots

        seen = []
        original = plots._save

        def capture(fig, path):
            seen.append([(ax.get_xscale(), len(ax.get_lines())) for ax in fig.axes])
            return original(fig, path)

        plots._save = capture
        try:
            written = plots.sweep_plots(store, [load_sweep(store, "t6"), load_sweep(store, "gd")], tmp_path / "plots")
        finally:
            plots._save = original
        assert [p.name for p in written] == ["t6-gd.png", "gd-gd.png"]
        # score and energy, log N; per trial a GD line and a dashed Viterbi line
        assert seen == [[("log", 4), ("log", 4)], [("log", 2), ("log", 2)]]
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


# ---------------------------------------------------------------------------------------------
# The stage end to end: a real local Ray sweep, MLflow, the report
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_table6_sweep_end_to_end(ray_local, checkpoints, tmp_path):
    from storage.report import build_report
    from sweeps.launch import run_sweep
    from sweeps.spec import validate

    _, _, infnet = checkpoints
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fixed = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items() if k != "device"}
    spec = validate({"name": "t6", "task": "synthetic", "stage": "table6", "epochs": 1, "fixed": fixed,
                     "warm_start": {"checkpoint": str(infnet)}, "scheduler": {"type": "fifo"}, "resources": {"cpu": 1}},
                    storage=tmp_path / "sweeps")
    outcome = run_sweep(spec, storage=tmp_path / "sweeps", tracking_uri=uri, verbose=0)
    assert outcome.trials == 1 and outcome.errors == 0
    assert (tmp_path / "sweeps" / "t6" / "warm_start_energy" / "checkpoint.json").is_file()  # the sweep's own copy
    client = tracking.client(uri)
    [child] = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    metrics = child.data.metrics
    direct = run_table6(Table6Config(checkpoint=str(infnet), **SMALL))["metrics"]
    assert {k: pytest.approx(v, abs=1e-5) for k, v in direct.items()} == {k: metrics[k] for k in direct}
    assert metrics["dev_score"] == metrics["infnet_score"]
    tables = {Path(a.path).name for a in client.list_artifacts(child.info.run_id, "tables")}
    assert tables == {"table6_test.parquet", "table6_test.json"}
    report = build_report(uri, ["t6"], tmp_path / "report")
    [t6] = [t for t in report.tables if "Table 6" in t.title]
    rows = dict(t6.rows)
    assert rows["gradient descent (N = 20)"][1].values == [metrics["gd_n20_energy"]]
    assert rows["instance-tailored infnet (N = 2)"][0].values == [metrics["tailored_n2_score"]]
    assert [p.name for p in report.plots] == ["t6-gd.png"]
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id, "report")}
    assert "report/t6-gd.png" in artifacts
