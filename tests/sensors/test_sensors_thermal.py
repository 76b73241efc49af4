from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.sensors.snapshot import THERMAL_LEVELS
from agent.sensors.thermal import read_thermal, zone_level

PKG = (("passive", 85.0), ("critical", 100.0))


@pytest.mark.parametrize("temp, level", [
    (50.0, "none"), (80.0, "light"), (83.0, "moderate"), (88.0, "severe"),
    (93.0, "critical"), (97.0, "emergency"), (101.0, "shutdown"),
])
def test_package_zone_level_follows_the_documented_rule(fake, temp, level):
    fake.zone(0, temp, PKG)
    state, _ = read_thermal(fake.sys)
    assert state.level == level
    assert state.max_c == pytest.approx(temp)


def test_zone_past_passive_trip_is_severe_with_headroom_above_one(fake):
    fake.zone(0, 88.0, PKG)
    state, _ = read_thermal(fake.sys)
    assert state.level == "severe"
    assert state.headroom == pytest.approx((88 - 55) / 30)
    assert state.zones[0].trips == (("passive", 85.0), ("critical", 100.0))


def test_headroom_is_exactly_one_at_the_passive_trip(fake):
    fake.zone(0, 85.0, PKG)
    state, _ = read_thermal(fake.sys)
    assert state.headroom == pytest.approx(1.0) and state.level == "severe"


def test_critical_zone_is_shutdown(fake):
    fake.zone(0, 106.0, (("critical", 105.0),), kind="acpitz")
    state, _ = read_thermal(fake.sys)
    assert state.level == "shutdown"


def test_only_critical_trip_puts_severe_15_degrees_below_it(fake):
    fake.zone(0, 90.0, (("critical", 105.0),), kind="acpitz")
    state, _ = read_thermal(fake.sys)
    assert state.level == "severe" and state.headroom == pytest.approx(1.0)


def test_hot_trip_marks_emergency(fake):
    fake.zone(0, 96.0, (("passive", 80.0), ("hot", 95.0), ("critical", 110.0)))
    state, _ = read_thermal(fake.sys)
    assert state.level == "emergency"


def test_active_trips_alone_give_no_level_but_keep_temperature(fake):
    fake.zone(0, 70.0, (("active", 60.0),), kind="fan-zone")
    state, notes = read_thermal(fake.sys)
    assert state.level is None and state.headroom is None
    assert state.max_c == pytest.approx(70.0)
    assert notes.get("thermal.level")


def test_worst_zone_sets_the_device_level(fake):
    fake.zone(0, 45.0, (("critical", 105.0),), kind="acpitz")
    fake.zone(1, 88.0, PKG)
    fake.zone(2, 30.0, (("passive", 45.0),), kind="skin")
    state, _ = read_thermal(fake.sys)
    assert state.level == "severe"
    assert state.max_c == pytest.approx(88.0)
    assert [z.name for z in state.zones] == ["thermal_zone0", "thermal_zone1", "thermal_zone2"]


def test_zone_ten_sorts_after_zone_nine(fake):
    for i in (10, 9, 2):
        fake.zone(i, 40.0)
    state, _ = read_thermal(fake.sys)
    assert [z.name for z in state.zones] == ["thermal_zone2", "thermal_zone9", "thermal_zone10"]


@pytest.mark.parametrize("bad", ["abc", "", "-273200", "999999999"])
def test_malformed_temperature_is_null_with_reason(fake, bad):
    d = fake.zone(0, 50.0, PKG)
    (d / "temp").write_text(bad + "\n")
    state, notes = read_thermal(fake.sys)
    assert state.zones[0].temp_c is None and state.max_c is None and state.level is None
    assert "thermal_zone0" in (notes.get("thermal.thermal_zone0") or "")


def test_unreadable_temp_file_is_null_with_reason(fake):
    fake.zone(0, 50.0, PKG)
    fake.make_unreadable("sys/class/thermal/thermal_zone0/temp")
    state, notes = read_thermal(fake.sys)
    assert state.max_c is None and "directory" in (notes.get("thermal.thermal_zone0") or "")


def test_disabled_zone_is_skipped(fake):
    fake.zone(0, 120.0, PKG, mode="disabled")
    fake.zone(1, 40.0, PKG)
    state, _ = read_thermal(fake.sys)
    assert state.level == "none" and state.max_c == pytest.approx(40.0)


def test_trip_at_zero_or_garbage_is_ignored(fake):
    d = fake.zone(0, 60.0, (("passive", 0.0), ("critical", 100.0)))
    (d / "trip_point_2_type").write_text("passive\n")
    (d / "trip_point_2_temp").write_text("xyz\n")
    state, _ = read_thermal(fake.sys)
    assert state.zones[0].trips == (("critical", 100.0),)


def test_no_thermal_class_says_so(fake):
    state, notes = read_thermal(fake.sys)
    assert state.level is None and state.max_c is None and notes.get("thermal")


@settings(max_examples=200, deadline=None)
@given(passive=st.floats(40, 110), gap=st.floats(0.5, 40), t1=st.floats(-20, 160), t2=st.floats(-20, 160))
def test_level_and_headroom_never_fall_as_temperature_rises(passive, gap, t1, t2):
    trips = (("passive", passive), ("critical", passive + gap))
    lo, hi = sorted((t1, t2))
    a, b = zone_level(lo, trips), zone_level(hi, trips)
    assert a is not None and b is not None
    assert THERMAL_LEVELS.index(a[0]) <= THERMAL_LEVELS.index(b[0])
    assert a[1] <= b[1]
