"""`beamtune train --objective crf|infnet`, `beamtune decode --decoder viterbi|...`, `beamtune gd-oracle`,
`beamtune search-error`."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from storage.tables import read_rows
from sweeps.cli import app

pytestmark = pytest.mark.slow  # trains several models (seconds each)

SMALL = ["--task", "synthetic", "--epochs", "1", "--encoder-hidden", "8", "--word-dim", "8", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--objective", "crf", "--out", str(root / "crf"), *SMALL])
    assert result.exit_code == 0, result.output
    assert "test  viterbi" in result.output
    result = runner.invoke(app, ["train", "--objective", "infnet", "--arch", "cnn13", "--energy", str(root / "crf"),
                                 "--lam", "decay:0.5:0.01", "--out", str(root / "inf"), *SMALL])
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("decoder", ["infnet", "gd", "tailored", "infnet-gd", "viterbi"])
def test_decode(checkpoints, decoder):
    result = CliRunner().invoke(app, ["decode", "--checkpoint", str(checkpoints / "inf"), "--decoder", decoder,
                                      "--steps", "3", "--lr", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"decoder={decoder}" in result.output and "viterbi_energy=" in result.output


def test_decode_by_coverage_splits_the_accuracy(checkpoints):
    """The classes' shares weight their accuracies back to the split's token accuracy; the synthetic
    task has no pretrained vectors, so both vector classes are empty."""
    result = CliRunner().invoke(app, ["decode", "--checkpoint", str(checkpoints / "crf"), "--decoder", "viterbi",
                                      "--by-coverage", "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    shares = {name: out[f"coverage.{name}.share"] for name in ("vectors_and_training", "vectors_only", "training_only", "neither")}
    assert shares["vectors_and_training"] == shares["vectors_only"] == 0.0 and sum(shares.values()) == pytest.approx(1.0)
    weighted = sum(share * out[f"coverage.{name}.accuracy"] for name, share in shares.items() if share)
    assert weighted == pytest.approx(out["accuracy"])


def test_gd_oracle_writes_parquet(checkpoints, tmp_path):
    out = tmp_path / "gd.parquet"
    result = CliRunner().invoke(app, ["gd-oracle", "--checkpoint", str(checkpoints / "crf"), "--out", str(out),
                                      "--steps", "2,4", "--lrs", "10,1", "--quiet"])
    assert result.exit_code == 0, result.output
    rows, meta = read_rows(out)
    assert len(rows) == meta["cost"]["sentences"] and {r["steps"] for r in rows} <= {2, 4}
    assert [t["steps"] for t in meta["table6"]] == [2, 4]
    assert out.with_suffix(".json").is_file()


@pytest.mark.parametrize("args,message", [
    (["decode", "--decoder", "infnet"], "needs an inference network"),
    (["decode", "--decoder", "greedy"], "holds a 'crf' model, expected 'seq2seq'"),
    (["train", "--objective", "infnet", *SMALL], "needs energy"),
])
def test_one_line_errors(checkpoints, tmp_path, args, message):
    if args[0] == "decode":
        args = [*args, "--checkpoint", str(checkpoints / "crf"), "--quiet"]
    else:
        args = [*args, "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_train_without_sizes_uses_the_stage_defaults(tmp_path):
    # The CLI must not impose the seq2seq tagger's sizes (H = 128) on the structured models: with
    # no --encoder-hidden / --word-dim a local baseline gets the paper's H = 100, as in a sweep.
    from core.checkpoint import load_checkpoint

    out = tmp_path / "local"
    result = CliRunner().invoke(app, ["train", "--objective", "local", "--task", "synthetic", "--epochs", "1",
                                      "--train-limit", "200", "--threads", "1", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = load_checkpoint(out, kind="infnet").meta["model_config"]
    assert (config["hidden"], config["word_dim"]) == (100, 100)



def test_search_error(checkpoints, tmp_path):
    out = tmp_path / "se.json"
    result = CliRunner().invoke(app, ["search-error", "--checkpoint", str(checkpoints / "inf"), "--gd-steps", "3",
                                      "--lm-epochs", "1", "--split", "dev", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "rho(word ppl)" in result.output and result.output.count("\n") == 3
    saved = json.loads(out.read_text())
    assert saved["gd"]["steps"] == 3 and saved["split"] == "dev" and saved["lm"]["epochs"] == 1
    crf_only = CliRunner().invoke(app, ["search-error", "--checkpoint", str(checkpoints / "crf"), "--lm-epochs", "1"])
    assert crf_only.exit_code == 2 and "needs an inference network and its CRF energy" in crf_only.output
