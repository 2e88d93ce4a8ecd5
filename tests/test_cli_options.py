"""`beamtune train` options: choices come from core, and a flag the chosen model ignores is an error."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sweeps.cli import app


@pytest.mark.parametrize("args,flag", [
    (["--objective", "crf", "--dropout", "0.3"], "--dropout"),
    (["--objective", "crf", "--attention", "dot"], "--attention"),
    (["--objective", "crf", "--label-dim", "4"], "--label-dim"),
    (["--objective", "crf", "--char-filters", "0"], "--char-filters"),
    (["--objective", "ce", "--lam", "2"], "--lam"),
    (["--objective", "local", "--arch", "cnn13", "--layers", "2"], "--layers"),
    (["--objective", "local", "--arch", "blstm", "--cnn-activation", "relu"], "--cnn-activation"),
    (["--objective", "crf", "--cnn-activation", "relu"], "--cnn-activation"),
])
def test_flags_a_model_ignores_are_errors(tmp_path, args, flag):
    result = CliRunner().invoke(app, ["train", "--task", "synthetic", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert f"{flag}: not used by objective" in result.output and not (tmp_path / "x").exists()


def test_choices_are_core_tuples():
    from core.decoding import DECODERS, STRUCTURED_DECODERS
    from core.infnets import ARCHITECTURES
    from core.stages import OBJECTIVES
    from sweeps.cli import decode, train

    assert [m.value for m in train.Objective] == list(OBJECTIVES)
    assert [m.value for m in train.Arch] == list(ARCHITECTURES)
    assert [m.value for m in decode.Decoder] == list(DECODERS + STRUCTURED_DECODERS)


def test_cnn_activation_reaches_the_network(tmp_path):
    import json

    result = CliRunner().invoke(app, ["train", "--task", "synthetic", "--objective", "local", "--arch", "cnn15",
                                      "--cnn-activation", "relu", "--epochs", "1", "--out", str(tmp_path / "x"), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "x" / "checkpoint.json").read_text())
    assert saved["model_config"]["cnn_activation"] == "relu"
