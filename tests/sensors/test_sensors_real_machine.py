"""The real /sys and /proc of the machine running the tests: values or nulls with reasons, never errors."""

from __future__ import annotations

import os

from agent.sensors.live import LiveSensors


def _has(cls: str, pred) -> bool:
    base = f"/sys/class/{cls}"
    try:
        return any(pred(os.path.join(base, n)) for n in os.listdir(base))
    except OSError:
        return False


def _is_battery(d: str) -> bool:
    try:
        with open(os.path.join(d, "type")) as f:
            return f.read().strip() == "Battery"
    except OSError:
        return False


def test_real_machine_snapshot_has_values_or_nulls_with_reasons():
    live = LiveSensors()
    snap = live.read()
    live.close()
    reasons = dict(snap.reasons)
    if _has("power_supply", _is_battery):
        assert snap.battery.present
    else:                                       # this project's build machine: no battery
        assert snap.battery.present is False and snap.battery.percent is None
        assert snap.battery.status is None and snap.battery.power_w is None
        assert "battery" in reasons
    if _has("thermal", lambda d: os.path.basename(d).startswith("thermal_zone")):
        assert snap.thermal.zones
    else:                                       # no thermal zones here either
        assert snap.thermal.level is None and snap.thermal.max_c is None and "thermal" in reasons
    if snap.energy.meter is None:
        assert "energy.meter" in reasons
    assert snap.memory.total_bytes and snap.memory.available_bytes is not None
    assert snap.cpu.load_1m is not None and snap.cpu.online
