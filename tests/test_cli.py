"""The `beamtune` console commands, run as a user runs them (a subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # trains several models (seconds each)

SMALL = ["--encoder-hidden", "16", "--decoder-hidden", "16", "--label-dim", "8", "--word-dim", "16", "--char-filters", "8"]


def beamtune(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *map(str, args)], capture_output=True, text=True, env=env)


def _write_twitter_root(root):
    """A tiny data root laid out like shared/data, holding a Twitter-POS-format task."""
    folder = root / "twitter_pos"
    folder.mkdir(parents=True)
    train = "\n\n".join(["the\tD\ndog\tN\nruns\tV", "a\tD\ncat\tN\nsleeps\tV", "@bob\t@\nlol\t!"] * 20) + "\n"
    (folder / "oct27.traindev").write_text(train)
    (folder / "oct27.test").write_text("the\tD\ncat\tN\nruns\tV\n\nlol\t!\n")
    (folder / "daily547.conll").write_text("a\tD\ndog\tN\nsleeps\tV\n")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    result = beamtune("train", "--task", "synthetic", "--objective", "ce", "--epochs", "2", "--out", out, "--quiet", *SMALL)
    assert result.returncode == 0, result.stderr
    return out


class TestTrainCommand:
    def test_prints_scores_and_writes_metrics(self, trained):
        metrics = json.loads((trained / "metrics.json").read_text())
        assert {"dev", "test", "best_epoch"} <= set(metrics)

    def test_reads_data_root_from_flag_and_environment(self, tmp_path):
        root = _write_twitter_root(tmp_path / "data")
        flag = beamtune("train", "--task", "twitter_pos", "--data-root", root, "--epochs", "1", "--out", tmp_path / "a", "--quiet", *SMALL)
        assert flag.returncode == 0, flag.stderr
        env = {**__import__("os").environ, "BEAMTUNE_DATA": str(root)}
        from_env = beamtune("train", "--task", "twitter_pos", "--epochs", "1", "--out", tmp_path / "b", "--quiet", *SMALL, env=env)
        assert from_env.returncode == 0, from_env.stderr
        assert "test  greedy" in from_env.stdout

    def test_missing_task_file_is_one_line(self, tmp_path):
        root = _write_twitter_root(tmp_path / "data")
        (root / "twitter_pos" / "daily547.conll").unlink()
        result = beamtune("train", "--task", "twitter_pos", "--data-root", root, "--out", tmp_path / "x", "--quiet")
        assert result.returncode == 2
        assert result.stderr.strip().count("\n") == 0 and "daily547.conll" in result.stderr

    def test_malformed_data_names_file_and_line(self, tmp_path):
        root = _write_twitter_root(tmp_path / "data")
        (root / "twitter_pos" / "oct27.test").write_text("the\tD\ncat\n")
        result = beamtune("train", "--task", "twitter_pos", "--data-root", root, "--out", tmp_path / "x", "--quiet")
        assert result.returncode == 2
        assert "oct27.test:2" in result.stderr and "Traceback" not in result.stderr

    def test_help_lists_every_option(self):
        result = beamtune("train", "--help")
        for option in ("--task", "--objective", "--data-root", "--embeddings", "--epochs", "--seed", "--out"):
            assert option in result.stdout


class TestDecodeCommand:
    def test_search_error(self, trained):
        """The synthetic task is built so that greedy locks into the wrong mode and beam search
        finds higher-scoring sequences: the table shows beam above greedy, and its shares add up."""
        result = beamtune("decode", "--checkpoint", trained, "--split", "dev", "--beam-size", "3", "--search-error",
                          "--json", "--quiet", "--threads", "1")
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        assert printed["search.sentences"] == 300 and printed["search.beam_size"] == 3
        assert printed["search.beam_minus_greedy"] > 0 and printed["search.beam_better"] > 0
        shares = ("search_error", "model_error", "beam_is_gold", "gold_unreachable")
        assert sum(printed[f"search.{k}"] for k in shares) == pytest.approx(1.0)
        refused = beamtune("decode", "--checkpoint", trained, "--decoder", "viterbi", "--search-error", "--quiet")
        assert refused.returncode == 2 and refused.stderr.startswith("error: --search-error needs a seq2seq")

    @pytest.mark.parametrize("decoder", ["greedy", "beam"])
    def test_json_metrics_match_training(self, trained, decoder):
        result = beamtune("decode", "--checkpoint", trained, "--decoder", decoder, "--beam-size", "3", "--split", "test", "--json", "--quiet", "--threads", "1")
        assert result.returncode == 0, result.stderr
        printed = json.loads(result.stdout)
        recorded = json.loads((trained / "metrics.json").read_text())["test"]["greedy" if decoder == "greedy" else "beam3"]
        assert printed["accuracy"] == pytest.approx(recorded["accuracy"])

    def test_predictions_file_is_conlleval_input(self, trained, tmp_path):
        path = tmp_path / "pred.txt"
        result = beamtune("decode", "--checkpoint", trained, "--split", "dev", "--predictions", path, "--quiet")
        assert result.returncode == 0, result.stderr
        blocks = path.read_text().strip("\n").split("\n\n")
        assert len(blocks) == 300  # synthetic dev size
        assert all(len(line.split(" ")) == 3 for line in blocks[0].splitlines())

    def test_corrupt_checkpoint_is_one_line(self, trained, tmp_path):
        import shutil

        broken = tmp_path / "broken"
        shutil.copytree(trained, broken)
        weights = next(broken.glob("weights-*.pt"))
        weights.write_bytes(weights.read_bytes()[:-10])
        result = beamtune("decode", "--checkpoint", broken, "--quiet")
        assert result.returncode == 2
        assert result.stderr.startswith("error: checkpoint") and "corrupt" in result.stderr

    def test_missing_checkpoint(self, tmp_path):
        result = beamtune("decode", "--checkpoint", tmp_path / "none")
        assert result.returncode == 2 and "no such directory" in result.stderr
