"""core/search_correlation.py (Tu & Gimpel §6.2) on the synthetic task; the search-error sweep stage
end to end (a real local Ray sweep, MLflow) and the report's §6.2 table."""
from __future__ import annotations

import pytest
import torch

from core.data import load_task
from core.decoding import decode_batches
from core.lm import LMConfig, sentence_perplexities, train_lm
from core.loading import load_for_decoding
from core.metrics import spearman
from core.search_correlation import ROW_KEYS, SearchErrorConfig, flat_metrics, run_search_error, search_error_correlations
from core.train import TrainConfig, train


SMALL = dict(task="synthetic", epochs=1, model={"hidden": 8, "word_dim": 8, "char_filters": 0}, threads=1, progress=False,
             batch_size=64)
LM = LMConfig(embedding_dim=8, hidden=16, epochs=2)


@pytest.fixture(scope="module")
def infnet(tmp_path_factory):  # trains a CRF, an inference network and two language models (seconds): slow tests only
    root = tmp_path_factory.mktemp("sc")
    train(TrainConfig(out=str(root / "crf"), objective="crf", **SMALL))
    train(TrainConfig(out=str(root / "inf"), objective="infnet", arch="blstm", energy=str(root / "crf"), **SMALL))
    return str(root / "inf")


@pytest.mark.slow
def test_correlations_are_those_of_the_per_sentence_search_errors(infnet):
    result = search_error_correlations(infnet, split="dev", gd_steps=5, lm=LM)
    # recompute independently: the LMs are seeded, decoding is deterministic
    crf, net, vocabs, _ = load_for_decoding(infnet, None, "cpu")
    task = load_task("synthetic")
    ppl = sentence_perplexities(train_lm([s.words for s in task.train], LM), [s.words for s in task.dev])
    out = decode_batches(task.dev, vocabs, "infnet", crf=crf, infnet=net)
    errors = (torch.tensor(out["energy"]) - torch.tensor(out["viterbi_energy"])).tolist()
    assert min(errors) > -1e-4  # Viterbi is exact: no discrete output has a lower energy
    assert result["infnet"]["rho_word_perplexity"] == pytest.approx(spearman(ppl, errors))
    assert result["infnet"]["mean_search_error"] == pytest.approx(sum(errors) / len(errors))
    for method in ("infnet", "gd"):
        row = result[method]
        assert row["mean_search_error"] > -1e-4 and 0.0 <= row["share_with_search_error"] <= 1.0
        assert all(-1.0 <= row[k] <= 1.0 for k in ("rho_word_perplexity", "rho_label_perplexity", "rho_length"))
    assert result["gd"]["steps"] == 5 and result["sentences"] == len(task.dev)
    assert result["lm"]["mean_word_perplexity"] >= 1.0


@pytest.mark.slow
def test_a_crf_checkpoint_alone_is_one_clear_error(infnet, tmp_path):
    crf = infnet[: -len("inf")] + "crf"
    with pytest.raises(ValueError, match="needs an inference network and its CRF energy"):
        search_error_correlations(crf, lm=LM)


class TestSearchErrorConfig:
    def test_defaults_are_the_lm_and_gd_defaults(self):
        config = SearchErrorConfig(checkpoint="x")
        assert (config.split, config.gd_steps, config.gd_lr, config.threads) == ("test", 20, None, 1)
        assert (config.lm_epochs, config.lm_hidden, config.lm_min_count) == (LMConfig.epochs, LMConfig.hidden, LMConfig.min_count)

    @pytest.mark.parametrize("field,value,message", [("split", "train", "split must be 'dev' or 'test'"),
                                                     ("gd_steps", 0, "gd_steps must be >= 1"),
                                                     ("gd_lr", 0.0, "gd_lr must be > 0"),
                                                     ("lm_epochs", 0, "lm_epochs must be >= 1")])
    def test_bad_value_names_the_field(self, field, value, message):
        from core.config import ConfigError

        with pytest.raises(ConfigError, match=message):
            SearchErrorConfig(checkpoint="x", **{field: value})

    def test_spec_validates_search_error_fields(self):
        from sweeps.spec import SpecError, validate

        base = {"name": "s", "task": "synthetic", "stage": "search-error", "epochs": 1,
                "warm_start": {"checkpoint": "/nowhere"}}
        with pytest.raises(SpecError, match="fixed.hidden: unknown parameter; parameters are SearchErrorConfig fields"):
            validate({**base, "fixed": {"hidden": 3}})
        with pytest.raises(SpecError, match="lm_epochs must be >= 1"):
            validate({**base, "fixed": {"lm_epochs": 0}})


@pytest.mark.slow
def test_run_search_error_is_the_core_function_and_flat_metrics_name_every_cell(infnet):
    config = SearchErrorConfig(checkpoint=infnet, split="dev", gd_steps=5, lm_epochs=2, lm_hidden=16, lm_embedding_dim=8)
    result = run_search_error(config)
    assert result == search_error_correlations(infnet, split="dev", gd_steps=5, lm=LMConfig(embedding_dim=8, hidden=16, epochs=2))
    metrics = flat_metrics(result)
    for method in ("infnet", "gd"):
        assert all(metrics[f"{method}_{key}"] == pytest.approx(result[method][key]) for key in ROW_KEYS)
    assert (metrics["gd_steps"], metrics["mean_word_perplexity"]) == (5, pytest.approx(result["lm"]["mean_word_perplexity"]))


@pytest.mark.slow
def test_search_error_sweep_end_to_end_and_its_report_table(ray_local, infnet, tmp_path):
    """The stage through a real local Ray sweep: its metrics are core's, the report's §6.2 cells are
    the logged metrics, with the paper's values from the references file beside them."""
    from storage import tracking
    from storage.report import build_report, render_markdown
    from sweeps.launch import run_sweep
    from sweeps.spec import validate

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fixed = {"split": "dev", "gd_steps": 5, "lm_epochs": 2, "lm_hidden": 16, "lm_embedding_dim": 8}
    spec = validate({"name": "se", "task": "synthetic", "stage": "search-error", "epochs": 1, "fixed": fixed,
                     "warm_start": {"checkpoint": infnet}, "scheduler": {"type": "fifo"}, "resources": {"cpu": 1}},
                    storage=tmp_path / "sweeps")
    outcome = run_sweep(spec, storage=tmp_path / "sweeps", tracking_uri=uri, verbose=0)
    assert outcome.trials == 1 and outcome.errors == 0
    [child] = tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id)
    direct = flat_metrics(run_search_error(SearchErrorConfig(checkpoint=infnet, threads=1, **fixed)))
    assert {k: child.data.metrics[k] for k in direct} == pytest.approx(direct)
    assert child.data.params["infnet_arch"] == "blstm"
    report = build_report(uri, ["se"], tmp_path / "report")
    [table] = [t for t in report.tables if t.refs_key == "§6.2"]
    rows = dict(table.rows)
    assert [title for title, _ in table.rows] == ["inference network", "gradient descent"]
    assert rows["inference network"][2].values == [pytest.approx(direct["infnet_rho_word_perplexity"])]
    assert rows["gradient descent"][0].values == [pytest.approx(direct["gd_mean_search_error"])]
    text = render_markdown(table, {"inference network": {"synthetic rho word ppl": 0.282}})
    assert "| inference network (paper, Δ) | — | — | 0.28 (" in text


def test_tu_pos_study_runs_section_6_2_on_table1s_blstm_network(monkeypatch, tmp_path):
    """§6.2 is the BLSTM inference network of Table 1 (its BLSTM-CRF), with GD at N = 20; the
    references file's §6.2 values sit under the report's column names."""
    import os
    from pathlib import Path

    from storage.report import load_refs
    from storage.tables_tu import SEARCH_ERROR_COLUMNS, SEARCH_ERROR_ROWS
    from sweeps.study import load_study

    if not os.environ.get("BEAMTUNE_DATA"):
        monkeypatch.setenv("BEAMTUNE_DATA", str(tmp_path))
    root = Path(__file__).resolve().parents[1]
    study = load_study(root / "sweeps" / "studies" / "tu_pos.yaml")
    stage = study.stages["search_error"]
    assert stage.spec.stage == "search-error" and stage.spec.fixed == {"split": "test", "gd_steps": 20}
    assert (stage.spec.warm_start.sweep, stage.spec.warm_start.where) == ("tu_pos-infnet", {"arch": "blstm"})
    refs, _ = load_refs(root / "benchmarks" / "references" / "tu2019_pos.yaml")
    columns = {f"twitter_pos {label}" for label, _ in SEARCH_ERROR_COLUMNS}
    assert set(refs["§6.2"]) == {title for title, _ in SEARCH_ERROR_ROWS}
    assert all(set(row) <= columns for row in refs["§6.2"].values())
    assert refs["§6.2"]["inference network"]["twitter_pos rho word ppl"] == 0.282
