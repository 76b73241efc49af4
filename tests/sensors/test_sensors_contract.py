"""One contract, run against every SensorSource implementation (live on a fake tree, and trace replay)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agent.sensors.live import LiveSensors
from agent.sensors.snapshot import THERMAL_LEVELS, Snapshot
from agent.sensors.source import SensorSource
from agent.sensors.trace import TraceReplay, shipped


@pytest.fixture(params=["live", "trace-workday", "trace-thermal", "trace-memory"])
def source(request, fake, clock):
    if request.param == "live":
        fake.desktop_basics()
        fake.battery_energy()
        fake.adapter("ADP1", online=0)
        fake.zone(0, 60.0, (("passive", 85.0), ("critical", 100.0)))
        fake.rapl(0, 1_000)
        src = LiveSensors(fake.sys, fake.proc, nvml=False, clock=clock)
    else:
        name = {"trace-workday": "laptop_workday", "trace-thermal": "thermal_sustained_load",
                "trace-memory": "memory_pressure_bursts"}[request.param]
        src = TraceReplay(shipped(name), speed=600.0, clock=clock)
    yield src
    src.close()


def test_source_satisfies_the_protocol(source):
    assert isinstance(source, SensorSource)


def test_read_returns_frozen_snapshots_with_advancing_monotonic_time(source, clock):
    a = source.read()
    clock.advance(1.0)
    b = source.read()
    assert isinstance(a, Snapshot) and isinstance(b, Snapshot)
    assert b.mono_s > a.mono_s and b.wall_s > a.wall_s
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.mono_s = 0.0  # type: ignore[misc]


def test_snapshot_values_are_typed_and_in_range(source, clock):
    for _ in range(5):
        s = source.read()
        clock.advance(3.0)
        if s.battery.percent is not None:
            assert 0.0 <= s.battery.percent <= 100.0
        assert s.thermal.level is None or s.thermal.level in THERMAL_LEVELS
        assert s.thermal.headroom is None or s.thermal.headroom >= 0.0
        if s.memory.available_bytes is not None and s.memory.total_bytes is not None:
            assert 0 <= s.memory.available_bytes <= s.memory.total_bytes
        assert s.energy.meter in (None, "rapl", "battery", "nvml", "amdgpu")
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s.reasons)


def test_every_unknown_required_value_has_a_reason(source):
    s = source.read()
    d = s.to_dict()
    reasons = d["reasons"]
    for sec, key in [("battery", "percent"), ("thermal", "level"), ("memory", "available_bytes"),
                     ("energy", "meter")]:
        if d[sec][key] is None:
            assert any(r == sec or r.startswith(sec + ".") for r in reasons), (sec, key)


def test_snapshot_dict_is_json_serialisable(source):
    json.dumps(source.read().to_dict())


def test_close_is_idempotent(source):
    source.close()
    source.close()
