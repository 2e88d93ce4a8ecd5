"""Sweep specs: the shipped specs validate; every invalid spec fails before Ray, one line per problem."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import fake_sweep
from sweeps.spec import STAGES, SpecError, load_spec, validate

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "sweeps" / "specs").glob("*.yaml"))
BASE = {"name": "t", "task": "synthetic", "stage": "ce", "epochs": 2,
        "space": {"lr": {"loguniform": [1.0e-3, 1.0e-2]}}}


def problems(tmp_path, **changes) -> list[str]:
    data = {**BASE, **changes}
    with pytest.raises(SpecError) as error:
        validate(data, storage=tmp_path)
    return error.value.problems


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_validate(path, tmp_path, monkeypatch):
    data = yaml.safe_load(path.read_text())
    if data["task"] != "synthetic":
        monkeypatch.setenv("BEAMTUNE_DATA", str(tmp_path))  # only the folder's existence is checked here
    source = data.get("warm_start", {}).get("sweep")
    if source:  # a sweep folder as `beamtune sweep` leaves it, with one checkpointed trial
        fake_sweep(tmp_path, source)
    spec = load_spec(path, storage=tmp_path)
    assert spec.name == path.stem


def test_quickstart_param_space():
    spec = load_spec(ROOT / "sweeps" / "specs" / "quickstart.yaml")
    space = spec.param_space()
    assert spec.task == "synthetic" and spec.stage == "ce"
    assert space["batch_size"] == 32 and set(spec.space) <= set(space)
    assert isinstance(spec.space["lr"].loguniform[0], float)  # `1.0e-3` and `1e-3` both read as floats


def test_scientific_notation_reads_as_float(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: t\ntask: synthetic\nstage: ce\nepochs: 2\nfixed: {lr: 1e-3}\n")
    assert load_spec(path).fixed["lr"] == 0.001


@pytest.mark.parametrize("changes, field", [
    ({"stage": "beam-me-up"}, "stage:"),
    ({"task": "klingon_pos"}, "task:"),
    ({"fixed": {"eval_beam_size": -1}}, "fixed: eval_beam_size must be >= 1"),
    ({"space": {"eval_beam_size": {"choice": [3, -2]}}}, "space.eval_beam_size: value -2"),
    ({"space": {"lr": {"loguniform": [0.0, 0.1]}}}, "space.lr: loguniform: low (0.0) must be > 0"),
    ({"space": {"lr": {"uniform": [0.1, 0.01]}}}, "space.lr: uniform: low (0.1) must be < high (0.01)"),
    ({"fixed": {"hidden": 3}}, "fixed.hidden: unknown parameter"),
    ({"num_sample": 3}, "num_sample: Extra inputs are not permitted"),
    ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
    ({"resources": {"cpu": 1, "gpu": 1.5}}, "resources: gpu: more than one GPU must be a whole number"),
    ({"metric": "accuracy"}, "metric:"),
    ({"fixed": {"dropout": 1.5}}, "fixed: dropout must be in [0, 1)"),
    ({"search": {"algorithm": "grid"}}, "space.lr: search.algorithm grid needs a list of values"),
])
def test_invalid_spec_one_line_naming_the_field(tmp_path, changes, field):
    found = problems(tmp_path, **changes)
    assert len(found) == 1, found
    assert found[0].startswith(field), found


def test_warm_start_from_missing_sweep(tmp_path):
    found = problems(tmp_path, warm_start={"sweep": "never-ran"})
    assert any(p.startswith("warm_start.sweep: no sweep named 'never-ran'") for p in found), found


def test_warm_start_needs_one_source(tmp_path):
    assert problems(tmp_path, warm_start={}) == ["warm_start: give exactly one of checkpoint, sweep"]


def test_missing_warm_start(tmp_path):
    found = problems(tmp_path, stage="dl")
    assert len(found) == 1 and found[0].startswith("warm_start: stage 'dl' must start from a checkpoint"), found


def test_alpha_schedule_with_bad_parameters(tmp_path, monkeypatch):
    ckpt = tmp_path / "ce"
    ckpt.mkdir()
    (ckpt / "checkpoint.json").write_text("{}")
    found = problems(tmp_path, stage="dl", warm_start={"checkpoint": str(ckpt)},
                     space={"alpha": {"choice": ["exp:1:100:10", "exp:-1:100:10"]}})
    assert len(found) == 1 and found[0].startswith("space.alpha: value 'exp:-1:100:10'"), found


def test_several_problems_one_line_each(tmp_path):
    found = problems(tmp_path, stage="nope", task="nope", fixed={"bogus": 1})
    assert [p.split(":")[0] for p in found] == ["task", "stage", "fixed.bogus"]


@pytest.mark.slow  # a fresh interpreter importing torch
def test_cli_fails_before_ray_is_imported(tmp_path):
    """`beamtune sweep` with an invalid spec prints one `error:` line per problem and exits 2;
    Ray is made unimportable, so the check provably happens before Ray starts."""
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "stage": "nope", "fixed": {"eval_beam_size": 0}}))
    code = ("import sys; sys.modules['ray'] = None; sys.argv = ['beamtune', 'sweep', sys.argv[1], '--storage', sys.argv[2]]\n"
            "from sweeps.cli import app; app()")
    result = subprocess.run([sys.executable, "-c", code, str(spec), str(tmp_path / "sweeps")], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["error: stage: unknown stage 'nope'; available: "
                                                  + ", ".join(STAGES)]
    assert not (tmp_path / "sweeps").exists()


class TestStructuredStages:
    def test_crf_space_uses_crf_config_fields(self, tmp_path):
        spec = validate({**BASE, "stage": "crf", "space": {"hidden": {"choice": [50, 100]}, "lr": {"loguniform": [1e-4, 1e-2]}}},
                        storage=tmp_path)
        assert spec.stage == "crf"

    def test_seq2seq_field_is_unknown_for_crf(self, tmp_path):
        found = problems(tmp_path, stage="crf", space={"decoder_hidden": {"choice": [8, 16]}})
        assert found == ["space.decoder_hidden: unknown parameter; parameters are TrainConfig or CRFConfig fields"]

    def test_infnet_needs_a_crf_to_start_from(self, tmp_path):
        found = problems(tmp_path, stage="infnet", space={"lam": {"choice": [0.2, 0.5, 1, 2, 5]}})
        assert len(found) == 1 and found[0].startswith("warm_start: stage 'infnet' must start from a checkpoint")

    def test_crf_cannot_warm_start(self, tmp_path):
        found = problems(tmp_path, stage="crf", warm_start={"checkpoint": str(tmp_path)})
        assert any("trains from scratch" in p for p in found)


def _fake_checkpoint(tmp_path):
    (tmp_path / "crf").mkdir()
    (tmp_path / "crf" / "checkpoint.json").write_text("{}")
    return {"checkpoint": str(tmp_path / "crf")}


class TestOracleStage:
    def test_parameters_are_oracle_config_fields(self, tmp_path):
        found = problems(tmp_path, stage="gd-oracle", warm_start=_fake_checkpoint(tmp_path),
                         space={"lr": {"choice": [0.1, 1.0]}})
        assert found == ["space.lr: unknown parameter; parameters are OracleConfig fields"]

    def test_bad_value_names_the_field(self, tmp_path):
        found = problems(tmp_path, stage="gd-oracle", warm_start=_fake_checkpoint(tmp_path),
                         space={"momentum": {"choice": [0.5, 1.5]}})
        assert found == ["space.momentum: value 1.5: momentum must be in [0, 1)"]


class TestWarmStartWhere:
    """warm_start.where: the best trial among those with given parameter values (storage.best)."""

    def sweep(self, storage) -> None:
        import json

        from storage.best import SPEC_FILE, TRIAL_SIDECAR

        root = Path(storage) / "nets"
        root.mkdir(parents=True)
        (root / SPEC_FILE).write_text("name: nets\nmetric: dev_score\nmode: max\n")
        for i, (arch, hidden, value) in enumerate((("cnn13", 100, 0.8), ("blstm", 100, 0.7), ("blstm", 200, 0.75))):
            checkpoint = root / f"trial_{i}" / "checkpoint_000000"
            checkpoint.mkdir(parents=True)
            (checkpoint / "checkpoint.json").write_text(json.dumps({"files": {}}))
            (checkpoint / TRIAL_SIDECAR).write_text(json.dumps({
                "trial_id": f"t{i}", "trial_name": f"trial_{i}", "epoch": 1, "metrics": {"dev_score": value},
                "params": {"arch": arch, "hidden": hidden, "lr": 0.01}}))

    def test_best_among_the_matching_trials(self, tmp_path):
        from storage.best import best_checkpoint, trial_rankings

        self.sweep(tmp_path)
        assert best_checkpoint(tmp_path, "nets").trial_id == "t0"
        assert best_checkpoint(tmp_path, "nets", where={"arch": "blstm"}).trial_id == "t2"
        assert [t.trial_id for t in trial_rankings(tmp_path, "nets", where={"arch": "blstm"})] == ["t2", "t1"]
        # Values compare as text: YAML's 100 and 0.01 match the logged int and float.
        assert best_checkpoint(tmp_path, "nets", where={"arch": "blstm", "hidden": 100, "lr": 0.01}).trial_id == "t1"

    def test_no_matching_trial_names_the_filter(self, tmp_path):
        self.sweep(tmp_path)
        found = problems(tmp_path, stage="dl", space={"alpha": {"choice": ["1"]}},
                         warm_start={"sweep": "nets", "where": {"arch": "seq2seq"}})
        assert len(found) == 1 and found[0].startswith("warm_start.sweep: sweep 'nets'"), found
        assert found[0].endswith("among the trials with {'arch': 'seq2seq'}"), found

    def test_where_needs_a_sweep(self, tmp_path):
        found = problems(tmp_path, stage="dl", warm_start={"checkpoint": str(tmp_path), "where": {"arch": "blstm"}})
        assert found == ["warm_start: metric and where choose among a sweep's trials: give them with sweep, not checkpoint"]
