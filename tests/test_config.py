"""TrainConfig: shared fields and each stage's own, ConfigError naming the field, alpha and lambda
parsed by the same schedule code."""
from __future__ import annotations

import copy
import math
import pickle

import pytest

from core.config import ConfigError, SharedConfig
from core.stages import OBJECTIVES, STAGES, TrainConfig
from core.stages.infnet import InfnetFields
from core.stages.seq2seq import Seq2SeqFields


def test_every_objective_has_a_stage():
    assert set(OBJECTIVES) == set(STAGES) == {"ce", "dl", "hinge", "crf", "crf+", "local", "infnet"}


def test_fields_live_with_their_stage():
    import dataclasses

    names = lambda cls: {f.name for f in dataclasses.fields(cls)}  # noqa: E731
    assert {"alpha", "beam_size", "init", "cost"} <= names(Seq2SeqFields)
    assert {"lam", "energy", "arch"} <= names(InfnetFields)
    assert not (names(SharedConfig) & (names(Seq2SeqFields) | names(InfnetFields)))
    assert names(TrainConfig) == names(SharedConfig) | names(Seq2SeqFields) | names(InfnetFields)


@pytest.mark.parametrize("changes,field,message", [
    ({"lr": 0}, "lr", r"lr must be in \(0, 3e\+37\]"),
    ({"objective": "nope"}, "objective", "objective must be one of"),
    ({"objective": "dl"}, "init", "needs init"),
    ({"objective": "infnet"}, "energy", "needs energy"),
    ({"alpha": "exp:-1:100:10"}, "alpha", "alpha: schedule field 'start'"),
    ({"lam": "linear:1:-1:5"}, "lam", "lam must be >= 0"),
    ({"lam": "wobble:1"}, "lam", "lam: cannot parse schedule"),
])
def test_config_error_names_the_field(changes, field, message):
    with pytest.raises(ConfigError, match=message) as error:
        TrainConfig(task="synthetic", out="-", **changes)
    assert error.value.field == field and str(error.value).startswith("TrainConfig: ")


@pytest.mark.parametrize("rebuild", [copy.copy, lambda error: pickle.loads(pickle.dumps(error))], ids=["copy", "pickle"])
def test_config_error_survives_copy_and_pickle(rebuild):
    """Ray copies and pickles a trial's exception: it must arrive as itself, not as a TypeError."""
    error = rebuild(ConfigError("TrainConfig", "energy", "objective 'infnet' needs energy"))
    assert type(error) is ConfigError and error.field == "energy"
    assert str(error) == "TrainConfig: objective 'infnet' needs energy"


def test_lambda_is_a_schedule_like_alpha():
    config = TrainConfig(task="synthetic", out="-", objective="infnet", energy="crf", lam="decay:2:0.01", alpha="decay:2:0.01")
    assert config.lam_schedule == config.alpha_schedule
    assert config.lam_schedule.at(3) == pytest.approx(2 * math.exp(-0.03))
    assert TrainConfig(task="synthetic", out="-", lam=0.5).lam_schedule.at(7) == 0.5
