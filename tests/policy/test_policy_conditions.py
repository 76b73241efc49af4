from __future__ import annotations

import pytest
from policy_helpers import make_snap

from agent.policy.conditions import Activation, Condition, ConditionError, UnknownReading, rewrite_levels
from agent.sensors.snapshot import THERMAL_LEVELS


@pytest.mark.parametrize("level,expected", [("none", False), ("light", False), ("moderate", False),
                                            ("severe", True), ("critical", True), ("emergency", True),
                                            ("shutdown", True)])
def test_thermal_level_compares_on_the_android_scale_not_alphabetically(level: str, expected: bool) -> None:
    # alphabetically "light" < "severe" but "moderate" < "severe" and "critical" < "severe": the scale must win
    c = Condition.compile('thermal.level >= "severe"')
    assert c.evaluate(Activation(make_snap(level=level))) == (expected, None)


def test_level_literal_on_the_left_flips_the_operator() -> None:
    c = Condition.compile("'moderate' < thermal.level")
    assert c.evaluate(Activation(make_snap(level="severe")))[0] is True
    assert c.evaluate(Activation(make_snap(level="light")))[0] is False


def test_level_equality_still_works() -> None:
    c = Condition.compile('thermal.level == "light"')
    assert c.evaluate(Activation(make_snap(level="light")))[0] is True


def test_every_level_has_a_rank() -> None:
    for i, name in enumerate(THERMAL_LEVELS):
        assert rewrite_levels(f'thermal.level == "{name}"') == f"thermal.level_rank == {i}"


def test_unknown_level_name_is_an_error() -> None:
    with pytest.raises(ConditionError, match=r"expected a thermal level.*got 'hot'"):
        Condition.compile('thermal.level > "hot"')


def test_ordering_thermal_level_against_a_non_literal_is_an_error() -> None:
    with pytest.raises(ConditionError, match="level name literal"):
        Condition.compile("thermal.level > battery.status")


def test_unknown_reading_makes_the_condition_false_and_says_which() -> None:
    c = Condition.compile("battery.percent < 20.0")
    value, err = c.evaluate(Activation(make_snap(pct=None)))
    assert value is False and isinstance(err, UnknownReading) and err == "unknown battery.percent"


def test_a_rule_on_thermal_without_a_thermal_sensor_is_unknown_not_an_error() -> None:
    c = Condition.compile('thermal.level >= "severe"')
    value, err = c.evaluate(Activation(make_snap(level=None)))
    assert value is False and isinstance(err, UnknownReading) and "thermal.level" in err


def test_null_guard_short_circuits_without_error() -> None:
    c = Condition.compile("battery.percent != null && battery.percent < 20.0")
    assert c.evaluate(Activation(make_snap(pct=None))) == (False, None)
    assert c.evaluate(Activation(make_snap(pct=10.0))) == (True, None)


def test_int_literal_compares_with_float_reading() -> None:
    c = Condition.compile("battery.percent < 20")
    assert c.evaluate(Activation(make_snap(pct=19.5)))[0] is True


@pytest.mark.parametrize("expr,msg", [
    ("battery.percent <", "syntax error"),
    ("battery.nope > 1.0", "no such field"),
    ('battery.percent < "x"', "expected a condition over the Snapshot"),
    ("battery.percent + 1.0", "expected a boolean condition, got float"),
])
def test_bad_conditions_are_rejected_at_compile_time(expr: str, msg: str) -> None:
    with pytest.raises(ConditionError, match=msg):
        Condition.compile(expr)


def test_fields_lists_the_readings_a_condition_uses() -> None:
    c = Condition.compile("battery.percent < 20.0 && !power.on_ac")
    assert c.fields == ("battery.percent", "power.on_ac")


def test_sample_snapshot_knows_every_field_so_rules_on_new_fields_type_check() -> None:
    import dataclasses

    from agent.policy.conditions import sample_snapshot

    snap = sample_snapshot()
    for section in ("battery", "power", "thermal", "memory", "cpu", "energy"):
        obj = getattr(snap, section)
        for f in dataclasses.fields(obj):
            assert getattr(obj, f.name) is not None, f"{section}.{f.name}"
            if f.type in ("float | None", "int | None"):
                Condition.compile(f"{section}.{f.name} >= 0")   # numeric fields compare with numbers
