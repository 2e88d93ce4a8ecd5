"""Alpha / lambda schedules: values per epoch, parsing, serialisation, bad parameters."""
from __future__ import annotations

import math

import pytest

from core.schedules import Constant, Decay, Exponential, Linear, Steps, from_config


class TestSchedules:
    def test_constant(self):
        assert [Constant(2.0).at(e) for e in (1, 5, 100)] == [2.0, 2.0, 2.0]

    def test_linear_reaches_end_and_stays(self):
        s = Linear(1.0, 10.0, 4)
        assert [s.at(e) for e in (1, 2, 3, 4, 9)] == [1.0, 4.0, 7.0, 10.0, 10.0]

    def test_exponential_is_geometric(self):
        s = Exponential(1.0, 100.0, 3)
        assert [s.at(e) for e in (1, 2, 3, 7)] == pytest.approx([1.0, 10.0, 100.0, 100.0])

    def test_lambda_anneal_of_tu_and_gimpel(self):
        # lambda = exp(-0.01 t), t the epoch, with no end; LAM scales it.
        assert [Decay(1.0, 0.01).at(e) for e in (1, 50, 300)] == pytest.approx([math.exp(-0.01), math.exp(-0.5), math.exp(-3)])
        assert Decay(2.0, 0.01).at(10) == pytest.approx(2 * math.exp(-0.1))

    def test_steps_repeat_last(self):
        assert [Steps((1.0, 2.0, 5.0)).at(e) for e in (1, 2, 3, 4)] == [1.0, 2.0, 5.0, 5.0]


class TestFromConfig:
    @pytest.mark.parametrize("spec,expected", [
        (3, Constant(3.0)), ("2.5", Constant(2.5)), ("linear:1:10:20", Linear(1.0, 10.0, 20)),
        ("exp:1:100:10", Exponential(1.0, 100.0, 10)), ("steps:1,2,5", Steps((1.0, 2.0, 5.0))),
        ({"schedule": "exp", "start": 1, "end": 50, "epochs": 5}, Exponential(1, 50, 5)),
        ({"schedule": "steps", "values": [1, 3]}, Steps((1, 3))), ("decay:1:0.01", Decay(1.0, 0.01)),
    ])
    def test_parses(self, spec, expected):
        assert from_config(spec) == expected

    @pytest.mark.parametrize("schedule", [Constant(1.5), Linear(1, 2, 3), Exponential(0.5, 8, 4), Steps((1.0, 2.0)), Decay(1, 0.01)])
    def test_round_trips_through_dict(self, schedule):
        assert from_config(schedule.to_dict()) == schedule

    @pytest.mark.parametrize("spec,field", [
        ("exp:0:10:5", "start"), ("exp:1:10:0", "epochs"), ({"schedule": "cosine"}, "kind"),
        ({"schedule": "linear", "start": 1}, "linear"), ("nan", "value"), ("steps:", "values"), ("fast", "parse"),
        (True, "number"), ("decay:1:inf", "rate"), ("decay:1", "parse"),
    ])
    def test_bad_parameters_name_the_field(self, spec, field):
        with pytest.raises(ValueError, match=field):
            from_config(spec)
