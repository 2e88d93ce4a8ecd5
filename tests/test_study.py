"""Studies: validation as a whole (one `error: FIELD: ...` line per problem, exit 2, nothing
started), overrides, dependency order; end to end on the synthetic task (CE -> DL -> report, slow),
and a study killed mid-stage and resumed giving the same table."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from storage import tracking
from storage.runs import load_sweep
from sweeps.study import StudyError, load_study, select_stages
from sweeps.study_status import spec_drift

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "sweeps" / "studies").glob("*.yaml"))
BEAMTUNE = Path(sys.executable).with_name("beamtune")
TINY = {"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4, "batch_size": 64,
        "patience": 0}


def ce_spec(**extra) -> dict:
    return {"task": "synthetic", "stage": "ce", "epochs": 1, "fixed": dict(TINY), "num_samples": 2, "max_concurrent": 2,
            "space": {"lr": {"loguniform": [3.0e-3, 3.0e-2]}}, "search": {"seed": 1}, "scheduler": {"type": "fifo"}, **extra}


def dl_spec(**extra) -> dict:
    return {"task": "synthetic", "stage": "dl", "epochs": 2, "fixed": {"batch_size": 64, "beam_size": 2, "patience": 0},
            "space": {"alpha": {"grid": ["1", "exp:1:100:2"]}}, "search": {"algorithm": "grid"},
            "scheduler": {"type": "fifo"}, "max_concurrent": 2, **extra}


def write_study(tmp_path: Path, stages: dict, **extra) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "stages": stages, **extra}, sort_keys=False))
    return path


def problems_of(path: Path, overrides=None) -> list[str]:
    with pytest.raises(StudyError) as info:
        load_study(path, overrides)
    return info.value.problems


class TestLoadStudy:
    def test_valid_order_and_names(self, tmp_path):
        # dl listed first: it still runs after the stage it warm-starts from
        path = write_study(tmp_path, {"dl": {"spec": dl_spec(), "warm_start": {"stage": "ce"}}, "ce": {"spec": ce_spec()}})
        study = load_study(path)
        assert list(study.stages) == ["ce", "dl"]
        assert study.stages["dl"].spec.warm_start.sweep == "s-ce" and study.stages["dl"].after == "ce"
        assert study.sweep_name("dl") == "s-dl" and not study.reduced

    def test_spec_from_a_path(self, tmp_path):
        (tmp_path / "ce.yaml").write_text(yaml.safe_dump(ce_spec()))
        study = load_study(write_study(tmp_path, {"ce": {"spec": "ce.yaml"}}))
        assert study.stages["ce"].spec.task == "synthetic"

    def test_every_problem_one_line(self, tmp_path):
        path = write_study(tmp_path, {
            "ce": {"spec": ce_spec(metric="accuracy", fixed={**TINY, "hidden": 3})},
            "dl": {"spec": dl_spec(), "warm_start": {"stage": "cee"}},
            "x": {"spec": dl_spec()},
        }, colour="red")
        problems = problems_of(path)
        assert "colour: unknown field; a study has about, experiment, name, references, stages" in problems
        assert any(p.startswith("stages.dl.warm_start.stage: unknown stage 'cee'") for p in problems)
        assert any(p.startswith("stages.ce.spec.fixed.hidden: unknown parameter") for p in problems)
        assert any(p.startswith("stages.ce.spec.metric: 'accuracy' is not reported") for p in problems)
        assert any(p.startswith("stages.x.spec.warm_start: stage 'dl' must start from a checkpoint") for p in problems)

    def test_cycle(self, tmp_path):
        path = write_study(tmp_path, {"a": {"spec": dl_spec(), "warm_start": {"stage": "b"}},
                                      "b": {"spec": dl_spec(), "warm_start": {"stage": "a"}}})
        assert problems_of(path) == ["stages.a.warm_start: cycle a -> b -> a"]

    def test_incompatible_warm_start(self, tmp_path):
        crf = {"task": "synthetic", "stage": "crf", "epochs": 1, "fixed": {"batch_size": 64}, "scheduler": {"type": "fifo"}}
        path = write_study(tmp_path, {"crf": {"spec": crf}, "dl": {"spec": dl_spec(), "warm_start": {"stage": "crf"}}})
        assert problems_of(path) == ["stages.dl.warm_start.stage: stage 'dl' (dl) cannot start from stage 'crf' (crf): "
                                     "it starts from ce, dl, hinge"]

    def test_structured_warm_starts(self, tmp_path):
        """An inference network and the GD oracle start from a CRF stage (crf or crf+), not a local baseline."""
        def spec(stage, **fixed):
            return {"task": "synthetic", "stage": stage, "epochs": 1, "fixed": {"batch_size": 64, **fixed},
                    "scheduler": {"type": "fifo"}}
        stages = {"crf": {"spec": spec("crf+")}, "local": {"spec": spec("local")},
                  "infnet": {"spec": spec("infnet", arch="cnn13"), "warm_start": {"stage": "crf"}},
                  "gd": {"spec": {**spec("gd-oracle", split="dev"), "fixed": {"split": "dev"}}, "warm_start": {"stage": "crf"}}}
        assert list(load_study(write_study(tmp_path, stages)).stages) == ["crf", "local", "infnet", "gd"]
        bad = {**stages, "infnet": {**stages["infnet"], "warm_start": {"stage": "local"}}}
        assert problems_of(write_study(tmp_path, bad)) == [
            "stages.infnet.warm_start.stage: stage 'infnet' (infnet) cannot start from stage 'local' (local): it starts from crf, crf+"]


    def test_a_spec_may_name_its_own_warm_start_checkpoint(self, tmp_path):
        """What the warm_start error message advises ("a checkpoint path goes in the spec") validates;
        a path that is not a checkpoint is one problem naming the spec's field."""
        checkpoint = tmp_path / "ce"
        checkpoint.mkdir()
        (checkpoint / "checkpoint.json").write_text("{}")
        study = load_study(write_study(tmp_path, {"dl": {"spec": dl_spec(warm_start={"checkpoint": str(checkpoint)})}}))
        assert study.stages["dl"].spec.warm_start.checkpoint == str(checkpoint) and study.stages["dl"].after is None
        bad = write_study(tmp_path, {"dl": {"spec": dl_spec(warm_start={"checkpoint": str(tmp_path / "nothing")})}})
        assert problems_of(bad) == [f"stages.dl.spec.warm_start.checkpoint: {tmp_path / 'nothing'} is not a checkpoint "
                                    "directory (no checkpoint.json)"]

    def test_warm_start_where(self, tmp_path):
        """`where` reaches the sweep spec; a parameter the source stage neither fixes nor searches is refused."""
        dl = {"spec": dl_spec(), "warm_start": {"stage": "ce", "where": {"lr": 0.01, "word_dim": 8}}}
        study = load_study(write_study(tmp_path, {"ce": {"spec": ce_spec()}, "dl": dl}))
        warm = study.stages["dl"].spec.warm_start
        assert (warm.sweep, warm.where) == ("s-ce", {"lr": 0.01, "word_dim": 8})
        bad = {**dl, "warm_start": {"stage": "ce", "where": {"arch": "blstm"}}}
        assert problems_of(write_study(tmp_path, {"ce": {"spec": ce_spec()}, "dl": bad})) == [
            "stages.dl.warm_start.where.arch: stage 'ce' neither fixes nor searches 'arch'"]
    def test_yaml_error_names_the_line(self, tmp_path):
        path = tmp_path / "bad.yaml"
        path.write_text("name: s\nstages:\n  ce: {spec: [\n")
        [problem] = problems_of(path)
        assert problem.startswith(f"study: {path}: line 4, column 1: not valid YAML")

    def test_overrides(self, tmp_path):
        path = write_study(tmp_path, {"ce": {"spec": ce_spec()}, "dl": {"spec": dl_spec(), "warm_start": {"stage": "ce"}}})
        study = load_study(path, ["epochs=3", "stages.ce.num_samples=1", "stages.dl.fixed.lr=0.01"])
        assert [s.spec.epochs for s in study.stages.values()] == [3, 3]
        assert study.stages["ce"].spec.num_samples == 1 and study.stages["dl"].spec.fixed["lr"] == 0.01
        assert study.reduced
        assert problems_of(path, ["stages.nope.epochs=1"]) == ["--set stages.nope.epochs=1: stages.NAME.FIELD with NAME one of ce, dl"]
        assert problems_of(path, ["epochs=0"]) == ["stages.ce.spec.epochs: Input should be greater than or equal to 1",
                                                   "stages.dl.spec.epochs: Input should be greater than or equal to 1"]
        assert problems_of(path, ["epochs"]) == ["--set epochs: expected KEY=VALUE"]

    @pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
    def test_cli_invalid_study_exits_2_and_starts_nothing(self, tmp_path):
        path = write_study(tmp_path, {"dl": {"spec": dl_spec(), "warm_start": {"stage": "cee"}}})
        result = subprocess.run([str(BEAMTUNE), "study", "run", str(path), "--storage", str(tmp_path / "sweeps"),
                                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == ["error: stages.dl.warm_start.stage: unknown stage 'cee'; stages: dl"]
        assert not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()


class TestLoadWithoutData:
    """load_study(need_data=False): what `beamtune report --study` uses, since a report reads MLflow only."""

    def test_a_missing_data_root_is_an_error_for_running(self, monkeypatch):
        monkeypatch.delenv("BEAMTUNE_DATA", raising=False)
        with pytest.raises(StudyError) as error:
            load_study(ROOT / "sweeps" / "studies" / "tu_ccg.yaml")
        assert any(p.endswith("needs a data root (data_root: or $BEAMTUNE_DATA)") for p in error.value.problems)

    def test_but_not_for_reading(self, monkeypatch):
        monkeypatch.delenv("BEAMTUNE_DATA", raising=False)
        study = load_study(ROOT / "sweeps" / "studies" / "tu_ccg.yaml", need_data=False)
        assert "crfplus" in study.stages

    def test_other_problems_are_still_found(self, tmp_path, monkeypatch):
        monkeypatch.delenv("BEAMTUNE_DATA", raising=False)
        path = tmp_path / "s.yaml"
        path.write_text("name: s\nstages:\n  a: {spec: {task: twitter_pos, stage: crf, space: {lr: {grid: [0.1]}}, colour: red}}\n")
        with pytest.raises(StudyError) as error:
            load_study(path, need_data=False)
        assert any("colour" in p for p in error.value.problems)
        assert not any("data_root" in p for p in error.value.problems)


class TestTitle:
    """Study.title, the report's first header line."""

    def title(self, about: str) -> str:
        from sweeps.study import Study
        return Study(name="x", path=Path("x.yaml"), about=about, references=None, stages={}).title

    def test_first_sentence_across_line_breaks(self):
        about = "Tu & Gimpel (2019), CCG (task ccgbank400:\n  sections 02-21), accuracy. Tables 1 and 2.\n"
        assert self.title(about) == "Tu & Gimpel (2019), CCG (task ccgbank400: sections 02-21), accuracy."

    def test_et_al_does_not_end_a_sentence(self):
        assert self.title("Goyal et al. (2018) Table 2 on NER. More.") == "Goyal et al. (2018) Table 2 on NER."

    def test_decimal_point_does_not_end_a_sentence(self):
        assert self.title("lr 0.01 and H = 512 throughout") == "lr 0.01 and H = 512 throughout"

    def test_no_about_gives_the_name(self):
        assert self.title("") == "study x"


class TestSpecDrift:
    """A stage whose sweep ran under another spec is named, and not skipped or resumed as if it
    were this spec's (sweeps.study_run.spec_drift)."""

    def spec(self, tmp_path, overrides=()):
        return load_study(write_study(tmp_path, {"ce": {"spec": ce_spec()}}), list(overrides)).stages["ce"].spec

    def saved(self, spec) -> dict:
        return yaml.safe_load(spec.to_yaml())

    def test_its_own_yaml_is_no_drift(self, tmp_path):
        spec = self.spec(tmp_path)
        assert spec_drift(self.saved(spec), spec) == ()

    def test_result_fields_are_named_with_both_values(self, tmp_path):
        saved = self.saved(self.spec(tmp_path))
        now = self.spec(tmp_path, ["epochs=3", "stages.ce.fixed.batch_size=32", "stages.ce.num_samples=4"])
        assert spec_drift(saved, now) == ("epochs: 1 -> 3", "fixed.batch_size: 64 -> 32", "num_samples: 2 -> 4")

    def test_a_grid_given_more_seeds(self, tmp_path):
        grid = ["stages.ce.search.algorithm=grid", "stages.ce.num_samples=1"]
        saved = self.saved(self.spec(tmp_path, [*grid, "stages.ce.space={seed: {grid: [1]}}"]))
        now = self.spec(tmp_path, [*grid, "stages.ce.space={seed: {grid: [1, 2, 3]}}"])
        assert spec_drift(saved, now) == ("space.seed.grid: [1] -> [1, 2, 3]",)

    def test_a_field_only_one_side_has(self, tmp_path):
        saved = self.saved(self.spec(tmp_path))
        now = self.spec(tmp_path, ["stages.ce.fixed.train_limit=500"])
        assert spec_drift(saved, now) == ("fixed.train_limit: (unset) -> 500",)

    def test_how_it_runs_is_not_drift(self, tmp_path):
        saved = self.saved(self.spec(tmp_path))
        now = self.spec(tmp_path, ["max_concurrent=1", "resources.cpu=2", "stages.ce.max_failures=0"])
        assert spec_drift(saved, now) == ()

    def test_a_field_added_since_at_its_default_is_not_drift(self, tmp_path):
        spec = self.spec(tmp_path)
        saved = self.saved(spec)
        del saved["max_trials"], saved["scheduler"]["reduction_factor"]
        assert spec_drift(saved, spec) == ()

    def test_a_saved_spec_that_no_longer_validates(self, tmp_path):
        spec = self.spec(tmp_path)
        drift = spec_drift({**self.saved(spec), "beam": 3}, spec)
        assert len(drift) == 1 and drift[0].startswith("its spec.yaml no longer validates: ")

    def test_a_stage_without_a_search_space(self, tmp_path):
        """GD, Table 6 and speed stages have no space: their saved spec.yaml compares as no drift, in
        today's form (no `space`) and as sweeps saved it before (`space: {}`), and resumes."""
        from sweeps.launch import load_sweep_spec
        from sweeps.study_status import stage_status

        study = load_study(write_study(tmp_path, {"ce": {"spec": {k: v for k, v in ce_spec().items() if k != "space"}}}), [])
        spec = study.stages["ce"].spec
        assert "space" not in self.saved(spec) and spec_drift(self.saved(spec), spec) == ()
        folder = tmp_path / "sweeps" / "s-ce"
        folder.mkdir(parents=True)
        (folder / "spec.yaml").write_text(spec.to_yaml() + "space: {}\n")  # the form sweeps saved before
        assert stage_status(study, tmp_path / "sweeps")["ce"].drift == ()
        assert load_sweep_spec("s-ce", tmp_path / "sweeps") == spec

    def test_run_refuses_before_anything_starts(self, tmp_path):
        """An interrupted sweep (spec.yaml, no trials file, no driver) under epochs 1, run with epochs 2:
        one problem naming the stage, the field and the folder; no MLflow store, no study state."""
        from sweeps.study_run import run_study
        from sweeps.study_status import stage_status

        folder = tmp_path / "sweeps" / "s-ce"
        folder.mkdir(parents=True)
        (folder / "spec.yaml").write_text(self.spec(tmp_path).to_yaml())
        study = load_study(tmp_path / "study.yaml", ["epochs=2"])
        assert stage_status(study, tmp_path / "sweeps")["ce"].line("ce", "dev_score").endswith(
            "interrupted; ran under another spec (epochs: 1 -> 2)")
        with pytest.raises(StudyError) as info:
            run_study(study, storage=tmp_path / "sweeps", tracking_uri=f"sqlite:///{tmp_path}/m.db")
        assert info.value.problems == [f"stages.ce: its sweep s-ce interrupted under another spec (epochs: 1 -> 2): run "
                                       f"it with the spec it ran under, or remove {folder} (or use another sweeps folder) "
                                       f"to run this one"]
        assert not (tmp_path / "m.db").exists() and not (tmp_path / "sweeps" / ".studies").exists()
        assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"]


    def test_run_refuses_a_stage_another_process_drives(self, tmp_path):
        """A stage's sweep whose driver lock another process holds (a second `study run` beside the
        first): one problem naming it, before the study's MLflow run, which the first driver is
        using, is touched."""
        import fcntl

        from storage.best import DRIVER_LOCK
        from sweeps.study_run import run_study

        folder = tmp_path / "sweeps" / "s-ce"
        folder.mkdir(parents=True)
        (folder / "spec.yaml").write_text(self.spec(tmp_path).to_yaml())
        study = load_study(tmp_path / "study.yaml")
        with open(folder / DRIVER_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as sweeps.launch.driver_lock holds it
            with pytest.raises(StudyError) as info:
                run_study(study, storage=tmp_path / "sweeps", tracking_uri=f"sqlite:///{tmp_path}/m.db")
        assert info.value.problems == ["stages.ce: its sweep s-ce is being run by another process: wait for it, or run "
                                       "the stages that do not need it (--stages)"]
        assert not (tmp_path / "m.db").exists() and not (tmp_path / "sweeps" / ".studies").exists()


class TestSelectStages:
    def study(self, tmp_path):
        return load_study(write_study(tmp_path, {
            "ce": {"spec": ce_spec()}, "dl": {"spec": dl_spec(), "warm_start": {"stage": "ce"}},
            "hinge": {"spec": dl_spec(stage="hinge"), "warm_start": {"stage": "ce"}}, "ce2": {"spec": ce_spec()}}))

    def test_a_stage_brings_what_it_starts_from(self, tmp_path):
        study = self.study(tmp_path)
        assert select_stages(study, ["dl"]) == ["ce", "dl"]
        assert select_stages(study, ["ce2", "hinge"]) == ["ce", "hinge", "ce2"]  # the study's order
        assert select_stages(study, ["ce"]) == ["ce"]

    def test_unknown_stage(self, tmp_path):
        study = self.study(tmp_path)
        with pytest.raises(StudyError) as info:
            select_stages(study, ["dl", "dll"])
        assert info.value.problems == ["--stages dl,dll: unknown stage 'dll'; stages: ce, dl, hinge, ce2"]

    @pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
    def test_cli_missing_embeddings_exits_2_before_ray(self, tmp_path):
        """Checked for the stages to run only (here ce and dl, not ce2), before Ray starts."""
        missing = {**TINY, "embeddings": "embeddings/nope.txt.gz"}
        path = write_study(tmp_path, {"ce": {"spec": ce_spec(fixed=missing)}, "dl": {"spec": dl_spec(), "warm_start": {"stage": "ce"}},
                                      "ce2": {"spec": ce_spec(fixed=missing)}})
        result = subprocess.run([str(BEAMTUNE), "study", "run", str(path), "--stages", "dl", "--storage", str(tmp_path / "sweeps"),
                                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "BEAMTUNE_DATA": str(tmp_path)})
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: stages.ce.spec.fixed.embeddings: embeddings/nope.txt.gz: no such file (as given, or under the data root {tmp_path})"]
        assert not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()

    @pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
    def test_cli_unknown_stage_exits_2_and_starts_nothing(self, tmp_path):
        path = write_study(tmp_path, {"ce": {"spec": ce_spec()}})
        result = subprocess.run([str(BEAMTUNE), "study", "run", str(path), "--stages", "c", "--storage", str(tmp_path / "sweeps"),
                                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == ["error: --stages c: unknown stage 'c'; stages: ce"]
        assert not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.slow
def test_study_run_only_some_stages(tmp_path):
    """`--stages dl` runs ce (dl warm-starts from it) and dl, not ce2; the whole study is still
    validated (an invalid stage not asked for is an error)."""
    stages = {"ce": {"spec": ce_spec(num_samples=1)},
              "dl": {"spec": dl_spec(epochs=1, space={"alpha": {"grid": ["1"]}}), "warm_start": {"stage": "ce"}},
              "ce2": {"spec": ce_spec(num_samples=1)}}
    study = write_study(tmp_path, stages)
    common = ["--storage", str(tmp_path / "sweeps"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--num-cpus", "2",
              "--out", str(tmp_path / "report")]
    (tmp_path / "bad").mkdir()
    bad = write_study(tmp_path / "bad", {**stages, "ce2": {"spec": ce_spec(metric="accuracy")}})
    invalid = run_cli(["study", "run", str(bad), "--stages", "dl", *common], tmp_path, "bad")
    assert invalid.returncode == 2 and "stages.ce2.spec.metric" in invalid.stderr
    result = run_cli(["study", "run", str(study), "--stages", "dl", *common], tmp_path, "some")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage ce: starting" in result.stderr and "stage dl: starting" in result.stderr and "ce2" not in result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[:3]] == [["ce", "finished"], ["dl", "finished"],
                                                                             ["ce2", "pending"]]
    assert not (tmp_path / "sweeps" / "s-ce2").exists()
    assert "stages run (--stages): ce, dl" in (tmp_path / "report" / "report.md").read_text()
    # the finished ce asked for with more samples: refused, not skipped (TestSpecDrift)
    more = run_cli(["study", "run", str(study), "--stages", "dl", "--set", "stages.ce.num_samples=2", *common], tmp_path, "more")
    assert more.returncode == 2 and more.stderr.startswith("error: stages.ce: its sweep s-ce finished under another spec "
                                                            "(num_samples: 1 -> 2)")


def documented_command(about: str) -> list[str]:
    """The `beamtune study run ...` command of a study's header (continuation lines joined), split
    as a shell would split it."""
    import shlex

    text = about.replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("beamtune study run ")]
    assert len(lines) == 1, "a shipped study's header has exactly one `beamtune study run` command"
    return shlex.split(lines[0])


def command_options(words: list[str]) -> tuple[str, list[str], list[str] | None]:
    """(study file, --set overrides, --stages names or None) of a documented command."""
    path, overrides, stages = words[3], [], None
    rest = iter(words[4:])
    for word in rest:
        # options that say where and how it runs change nothing a study validates
        assert word in ("--set", "--stages", "--num-cpus"), f"unexpected {word!r} in the documented command"
        value = next(rest)
        if word == "--set":
            overrides.append(value)
        elif word == "--stages":
            stages = value.split(",")
    return path, overrides, stages


def test_documented_command_parsing():
    about = "Reduced:\n    beamtune study run sweeps/studies/x.yaml --set epochs=3 \\\n      --set 'stages.a.space.lr.grid=[0.1, 0.01]' --stages a,b\n"
    assert command_options(documented_command(about)) == ("sweeps/studies/x.yaml", ["epochs=3", "stages.a.space.lr.grid=[0.1, 0.01]"],
                                                          ["a", "b"])


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_studies_validate(path, monkeypatch, tmp_path):
    """Every shipped study validates as a whole, and so does the command its header documents (its
    `--set` overrides and `--stages`), so the documented reduced run cannot rot. Validation needs a
    data root to exist, not the data."""
    if not os.environ.get("BEAMTUNE_DATA"):
        monkeypatch.setenv("BEAMTUNE_DATA", str(tmp_path))
    study = load_study(path)
    assert study.about, "a shipped study says in its header what it reproduces"
    file, overrides, stages = command_options(documented_command(study.about))
    assert (ROOT / file).resolve() == path.resolve(), f"the header's command runs {file}, not this study"
    reduced = load_study(path, overrides)
    if stages is not None:
        select_stages(reduced, stages)
    if study.references is not None:
        from storage.report import load_refs

        assert load_refs(study.references)


def test_invalid_documented_override_is_caught(tmp_path):
    """What the test above relies on: an override naming a stage or field that does not exist is an error."""
    path = write_study(tmp_path, {"ce": {"spec": ce_spec()}})
    assert problems_of(path, ["stages.ce.space.lrr.grid=[0.1]"])[0].startswith("stages.ce.spec.space.lrr: unknown parameter")
    assert problems_of(path, ["stages.cee.epochs=1"]) == ["--set stages.cee.epochs=1: stages.NAME.FIELD with NAME one of ce"]


def table_rows(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| ")]


def run_cli(args: list[str], tmp_path: Path, log: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local"}
    return subprocess.run([str(BEAMTUNE), *args], env=env, capture_output=True, text=True, timeout=600, **kwargs)


def study_until_dl_checkpoint(args: list[str], storage: Path, log: Path) -> subprocess.Popen:
    """`beamtune study run ARGS` in a session of its own, returned once stage dl has its first
    checkpoint (asserting it is still running), for a test to kill or interrupt."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local"}
    driver = subprocess.Popen([str(BEAMTUNE), "study", "run", *args], env=env, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 400
    while not list((storage / "s-dl").glob("*/checkpoint_000000")):
        if driver.poll() is not None or time.monotonic() > deadline:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
            raise AssertionError(f"the DL stage made no checkpoint in time:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    return driver


@pytest.mark.slow
def test_study_end_to_end_and_resume(tmp_path):
    """CE -> DL -> report on the synthetic task: the report's cells are the MLflow metrics, the
    MLflow tree reads study -> stage -> trial; a second copy killed in the middle of the DL stage
    and run again ends with the same table."""
    study = write_study(tmp_path, {"ce": {"spec": ce_spec()}, "dl": {"spec": dl_spec(), "warm_start": {"stage": "ce"}}},
                        about="test study")

    def common(tag: str) -> list[str]:
        return ["--storage", str(tmp_path / tag / "sweeps"), "--tracking-uri", f"sqlite:///{tmp_path / tag}/m.db",
                "--num-cpus", "2", "--out", str(tmp_path / tag / "report")]

    whole = run_cli(["study", "run", str(study), *common("a")], tmp_path, "a")
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    md = (tmp_path / "a" / "report" / "report.md").read_text()
    uri = f"sqlite:///{tmp_path / 'a'}/m.db"

    # cells equal the MLflow metrics they came from (one seed per row here)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "a" / "report" / "report.csv").read_text())))
    client = tracking.client(uri)
    for row in rows:
        if row["run_ids"]:
            values = [client.get_run(r).data.metrics[row["mlflow_metric"]] for r in row["run_ids"].split()]
            assert float(row["mean"]) == pytest.approx(100 * sum(values) / len(values), abs=1e-3)
    assert sum(1 for r in rows if r["run_ids"]) == 3 * 6  # CE, DL alpha=1, DL annealed: 6 cells each

    # the tree: study run -> stage sweep runs -> trial runs
    ce, dl = load_sweep(uri, "s-ce"), load_sweep(uri, "s-dl")
    study_run = client.get_run(ce.run_id).data.tags[tracking.PARENT_TAG]
    assert client.get_run(dl.run_id).data.tags[tracking.PARENT_TAG] == study_run
    assert client.get_run(study_run).data.tags[tracking.STUDY_TAG] == "s"
    assert len(ce.trials) == 2 and len(dl.trials) == 2
    assert "G~DL annealed α" in client.get_run(dl.run_id).data.tags[tracking.DESCRIPTION_TAG]
    assert "G~DL annealed α" in client.get_run(study_run).data.tags[tracking.DESCRIPTION_TAG]
    artifacts = {a.path for a in client.list_artifacts(study_run)} | {a.path for a in client.list_artifacts(study_run, "report")}
    assert {"study.yaml", "report/report.html", "report/s-dl-curves.png"} <= artifacts

    # a second copy, killed once the DL stage has its first checkpoint, then run again
    storage = tmp_path / "b" / "sweeps"
    driver = study_until_dl_checkpoint([str(study), *common("b")], storage, tmp_path / "b.log")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    status = run_cli(["study", "status", str(study), "--storage", str(storage)], tmp_path, "status")
    assert status.stdout.splitlines()[0].split()[:2] == ["ce", "finished"]
    assert status.stdout.splitlines()[1].split()[1] == "interrupted"  # its driver is gone
    dl_state = json.loads((storage / "s-dl" / "beamtune_sweep.json").read_text())
    dl_run = tracking.client(f"sqlite:///{tmp_path / 'b'}/m.db").get_run(dl_state["parent_run_id"])
    assert dl_run.info.status == "KILLED" and "beamtune sweep --resume s-dl" in dl_run.data.tags[tracking.INCOMPLETE_TAG]
    again = run_cli(["study", "run", str(study), *common("b")], tmp_path, "b2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "stage ce: finished before, skipped" in again.stderr and "stage dl: resuming" in again.stderr
    assert table_rows((tmp_path / "b" / "report" / "report.md").read_text()) == table_rows(md)


@pytest.mark.slow  # creates an MLflow SQLite store (seconds)
def test_a_study_run_again_with_other_overrides_says_so(tmp_path):
    # A study resumed with different --set overrides: its run (and so the report's header) shows the
    # latest invocation's, and keeps the earlier ones, under which finished stages ran.
    uri = f"sqlite:///{tmp_path}/m.db"
    experiment = tracking.ensure_experiment(uri, "x")
    run_id = tracking.start_study(uri, experiment, "s", "name: s\n", ["epochs=30", "stages.a.lr=0.1"])
    tracking.update_study(uri, run_id, "name: s  # edited\n", ["epochs=30", "stages.a.lr=0.01"])
    tags = tracking.client(uri).get_run(run_id).data.tags
    assert tags["beamtune.overrides"] == "epochs=30 stages.a.lr=0.01"
    assert tags["beamtune.overrides.previous"] == "epochs=30 stages.a.lr=0.1"
    local = tracking.client(uri).download_artifacts(run_id, "study.yaml", str(tmp_path))
    assert "edited" in Path(local).read_text()
    tracking.update_study(uri, run_id, "name: s\n", ["epochs=30", "stages.a.lr=0.01"])  # same again: nothing to add
    assert tracking.client(uri).get_run(run_id).data.tags["beamtune.overrides.previous"] == "epochs=30 stages.a.lr=0.1"


def test_goyal_ner_study_is_the_papers_setting_and_its_reduced_command_validates(tmp_path, monkeypatch):
    """Goyal et al. §3.1: the files' IOB1 labels, hidden 64, label embeddings 8, k = 3, the
    O-doubled Hamming cost, the four search-aware rows; the header's reduced command is valid."""
    if not os.environ.get("BEAMTUNE_DATA"):  # validation needs a data-root folder, not its files
        monkeypatch.setenv("BEAMTUNE_DATA", str(tmp_path))
    path = ROOT / "sweeps" / "studies" / "goyal_ner.yaml"
    study = load_study(path)
    assert {s.spec.task for s in study.stages.values()} == {"conll2003_en_iob1"}
    ce = study.stages["ce"].spec.fixed
    assert (ce["encoder_hidden"], ce["decoder_hidden"], ce["label_dim"]) == (64, 64, 8) and "embeddings" not in ce
    for stage in ("dl", "hinge"):
        spec = study.stages[stage].spec
        assert spec.fixed["cost"] == "hamming-o2" and spec.fixed["beam_size"] == 3
        assert study.stages[stage].after == "ce" and spec.space["alpha"].grid == ["1", "exp:1:100:10"]
    assert study.references.name == "goyal2018_ner.yaml"
    _, overrides, _ = command_options(documented_command(study.about))
    reduced = load_study(path, overrides)
    assert reduced.reduced and len(overrides) == 14
    assert reduced.stages["ce"].spec.epochs == 20 and reduced.stages["dl"].spec.max_concurrent == 1


@pytest.mark.slow
def test_study_parallel_runs_independent_stages_together_and_resumes(tmp_path):
    """--parallel: ce and ce2 (independent) start together and dl once ce has finished, each in its
    own driver on one local Ray. SIGUSR1 to the study while dl trains leaves no driver behind and
    dl resumable; run again, dl resumes and every stage's run nests under the study's MLflow run,
    as in a serial run. (That a resumed sweep ends with the uninterrupted one's results is
    run_sweep's, tested on the serial study above.)"""
    study = write_study(tmp_path, {"ce": {"spec": ce_spec(num_samples=1)}, "ce2": {"spec": ce_spec(num_samples=1)},
                                   "dl": {"spec": dl_spec(), "warm_start": {"stage": "ce"}}})
    storage, uri = tmp_path / "sweeps", f"sqlite:///{tmp_path}/m.db"
    common = ["--parallel", "--storage", str(storage), "--tracking-uri", uri, "--num-cpus", "2", "--out", str(tmp_path / "report")]
    driver = study_until_dl_checkpoint([str(study), *common], storage, tmp_path / "first.log")
    try:
        os.kill(driver.pid, signal.SIGUSR1)
        assert driver.wait(timeout=300) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    said = [line for line in (tmp_path / "first.log").read_text().splitlines() if line.startswith("stage ")]
    position = {" ".join(line.split()[:3]): i for i, line in enumerate(said)}
    assert position["stage ce2: starting"] < position["stage ce: finished"] < position["stage dl: starting"], said
    assert "stage dl: interrupting" in position, said
    status = run_cli(["study", "status", str(study), "--storage", str(storage)], tmp_path, "status")
    assert status.stdout.splitlines()[2].split()[:2] == ["dl", "interrupted"]  # its driver is gone, not "running"
    dl_state = json.loads((storage / "s-dl" / "beamtune_sweep.json").read_text())
    dl_run = tracking.client(uri).get_run(dl_state["parent_run_id"])
    assert dl_run.info.status == "KILLED" and "beamtune sweep --resume s-dl" in dl_run.data.tags[tracking.INCOMPLETE_TAG]

    again = run_cli(["study", "run", str(study), *common], tmp_path, "again")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "stage dl: resuming" in again.stderr and "stage ce2: finished before, skipped" in again.stderr
    assert [line.split()[:2] for line in again.stdout.splitlines()[:3]] == [["ce", "finished"], ["ce2", "finished"],
                                                                            ["dl", "finished"]]
    client = tracking.client(uri)
    parents = {client.get_run(load_sweep(uri, f"s-{name}").run_id).data.tags[tracking.PARENT_TAG]
               for name in ("ce", "ce2", "dl")}
    assert len(parents) == 1 and client.get_run(parents.pop()).info.status == "FINISHED"
    assert len(table_rows((tmp_path / "report" / "report.md").read_text())) > 2


@pytest.mark.slow  # two Python subprocesses, one importing sweeps (seconds)
def test_a_stage_driver_is_interrupted_when_its_study_dies(tmp_path):
    """sweeps.study_parallel._die_with_parent: the kernel sends SIGINT to a stage driver whose study
    process was killed (Linux), so it leaves its sweep as an interrupted one."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    flag = tmp_path / "interrupted"
    child = (f"import os, sys, time\nfrom sweeps.study_parallel import _die_with_parent\n"
             f"try:\n    _die_with_parent({{parent}})\n    print('ready', flush=True)\n    time.sleep(60)\n"
             f"except KeyboardInterrupt:\n    open({str(flag)!r}, 'w').close()\n")
    middle = ("import os, subprocess, sys\n"
              "code = sys.argv[1].replace('{parent}', str(os.getpid()))\n"
              "grandchild = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)\n"
              "print(grandchild.stdout.readline().strip(), grandchild.pid, flush=True)\n"
              "os.kill(os.getpid(), 9)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", middle, child], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split()[0] == "ready", result.stderr
    deadline = time.monotonic() + 30
    while not flag.exists():
        assert time.monotonic() < deadline, "the stage driver was not interrupted when its parent died"
        time.sleep(0.1)


class TestParallelSchedule:
    """sweeps.study_parallel._schedule with stand-in stage drivers (a process that sleeps and exits):
    which stage starts when, and what a failed stage stops. The real drivers: the slow test above."""

    def schedule(self, tmp_path, monkeypatch, outcome: dict[str, tuple[float, int]]) -> tuple[list[str], list[str]]:
        import sweeps.study_parallel as parallel
        from sweeps.study_status import StageRun, StageStatus

        study = load_study(write_study(tmp_path, {
            "a": {"spec": ce_spec()}, "b": {"spec": ce_spec()},
            "c": {"spec": dl_spec(), "warm_start": {"stage": "b"}}, "d": {"spec": dl_spec(), "warm_start": {"stage": "a"}}}))

        def start(run, root, **_):
            seconds, code = outcome[run.name]
            return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds}); raise SystemExit({code})"])

        def ended(study, root, name):
            if outcome[name][1]:
                raise StudyError([f"stages.{name}: failed"])
            return StageStatus("finished", trials=1, best_trial="t", best_value=0.5)

        monkeypatch.setattr(parallel, "POLL_S", 0.05)
        monkeypatch.setattr(parallel, "_start_driver", start)
        monkeypatch.setattr(parallel, "check_stage_ended", ended)
        monkeypatch.setattr(parallel, "plan_stage", lambda study, root, name, retry, say: StageRun(name, study.stages[name].spec, False, False))
        said: list[str] = []
        problems = parallel._schedule(study, tmp_path, list(study.stages), {}, uri="", study_run="", address="",
                                      verbose=0, say=said.append, retry_failed=False)
        return [line.split(" sweep")[0].split(" (")[0] for line in said], problems

    def test_each_stage_starts_once_its_warm_start_has_finished(self, tmp_path, monkeypatch):
        said, problems = self.schedule(tmp_path, monkeypatch, {"a": (1.0, 0), "b": (0.0, 0), "c": (0.0, 0), "d": (0.0, 0)})
        assert problems == []
        assert said[:2] == ["stage a: starting", "stage b: starting"]
        assert said.index("stage b: finished") < said.index("stage c: starting") < said.index("stage a: finished")
        assert said.index("stage a: finished") < said.index("stage d: starting")
        assert sorted(said) == sorted(f"stage {s}: {w}" for s in "abcd" for w in ("starting", "finished"))

    def test_a_failed_stage_starts_nothing_new_and_the_running_ones_end(self, tmp_path, monkeypatch):
        said, problems = self.schedule(tmp_path, monkeypatch, {"a": (0.0, 1), "b": (0.6, 0), "c": (0.0, 0), "d": (0.0, 0)})
        assert problems == ["stages.a: failed"]
        assert said == ["stage a: starting", "stage b: starting", "stage a: its driver ended with status 1: stages.a: failed",
                        "stage b: finished"]
