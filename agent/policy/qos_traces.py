"""Two more synthesized sensor traces for the simulator, where the device's compute changes under a workload.

Same format, helpers and honesty as ``agent/sensors/tracegen.py`` (**synthesized, not recorded**; seeded,
deterministic; parameters in the header). Regenerate with
``python -m agent.policy.qos_traces agent/sensors/traces``; a test checks the committed files match.

* ``chat_rising_heat.jsonl`` - a fanless laptop on battery runs a sustained chat from minute 2 to 34
  (40 min, 5 s steps): the chat keeps the CPU ~55 % busy at full clock (36 W package; busier and cooler as
  the clock drops); a slow first-order package model (R = 2.0 °C/W over 30 °C, τ = 240 s, fanless) passes the
  passive trip (80 °C) after ~6 min; the governor cuts the clock 5 % per 5 s step above the trip after 30 s
  (floor 45 %) and gives it back 5 % per step below 76 °C, so the level climbs none → light → moderate →
  severe and saw-tooths between light and severe (peak ≈ 84 °C) until the chat ends and the package cools.
* ``phone_day_bursts.jsonl`` - a phone through a 15 h day (30 s steps): idle at 0.35 W between ~70 short
  bursts of use (30 s to 6 min, 1.5-4.5 W, skin warms to light/moderate), a 40 min game at 6 W in the
  evening that reaches severe, a 30 min fast charge (18 W) at lunch; the 15 Wh battery ends near 12 %. Below
  20 % (discharging) **battery saver** caps the app's CPU at half the cores, which the trace carries as
  ``cpu.quota_cores`` (the form a cgroup quota takes live).
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

from agent.sensors.snapshot import BatteryState, CpuState, EnergyState, MemoryState, PowerState, Snapshot
from agent.sensors.trace import snapshot_to_record
from agent.sensors.tracegen import GIB, START_WALL, _header, _thermal, write_traces


def _dump(header: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    header = {**header, "generator": "agent/policy/qos_traces.py"}
    return "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in [header, *rows])


def chat_rising_heat(seed: int = 11) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = random.Random(seed)
    dt, minutes = 5.0, 40
    amb, r_th, tau = 30.0, 2.0, 240.0
    trips = (("passive", 80.0), ("critical", 100.0))
    temp, scale, soc_wh, full_wh, joules, busy = 40.0, 1.0, 40.0, 50.0, 0.0, 0.0
    above: float | None = None
    rows: list[dict[str, Any]] = []
    for i in range(int(minutes * 60 / dt) + 1):
        t = i * dt
        chatting = 120 <= t < 2040
        # the same chat work on a slower clock keeps the CPU busier; dynamic power follows the clock
        util = (55.0 + rng.gauss(0, 6)) / scale if chatting else 4.0 + rng.uniform(0, 2)
        util = max(1.0, min(100.0, util))
        power = (6.0 + 30.0 * scale + rng.gauss(0, 1.0)) if chatting else 6.0 + rng.uniform(0, 0.5)
        temp += (1 - math.exp(-dt / tau)) * (amb + r_th * power - temp) + rng.gauss(0, 0.15)
        if temp > 80.0:
            above = t if above is None else above
            if t - above >= 30:
                scale = max(0.45, scale - 0.05)
        else:
            above = None
            if temp < 76.0:
                scale = min(1.0, scale + 0.05)
        if i:
            joules += power * dt
        soc_wh = max(0.0, soc_wh - power * dt / 3600)
        busy += util / 100 * 4 * dt
        snap = Snapshot(
            mono_s=t, wall_s=START_WALL + t,
            battery=BatteryState(present=True, percent=round(100 * soc_wh / full_wh, 2), status="Discharging",
                                 power_w=round(power, 2), energy_wh=round(soc_wh, 3), energy_full_wh=full_wh, count=1),
            power=PowerState(on_ac=False, adapters=("ADP1",)),
            thermal=_thermal([("thermal_zone0", "x86_pkg_temp", temp, trips)]),
            memory=MemoryState(total_bytes=8 * GIB, available_bytes=int(4.2 * GIB), swap_used_bytes=0,
                               psi_some_avg10=0.0, psi_full_avg10=0.0),
            cpu=CpuState(load_1m=round(4 * util / 100, 2), util_percent=round(util, 1),
                         freq_mhz=round(3600 * scale if chatting else 1000, 0), online=4, busy_s_total=round(busy, 2)),
            energy=EnergyState(meter="battery", power_w=round(power, 2), joules_total=round(joules, 1)),
            source="synthesized", reasons=(("cpu.core_classes", "homogeneous (all cpu_capacity 1024)"),))
        rows.append(snapshot_to_record(snap, t))
    header = _header("chat_rising_heat", dt, "fanless laptop on battery, sustained chat from minute 2 to 34: heat "
                     "rises slowly past the passive trip, the clock throttles, then recovers; synthesized",
                     {"ambient_c": amb, "r_th_c_per_w": r_th, "tau_s": tau,
                      "throttle": "-5 % per 5 s above 80 C after 30 s, floor 45 %; +5 % below 76 C", "seed": seed})
    return header, rows


def phone_day_bursts(seed: int = 12) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = random.Random(seed)
    dt, hours = 30.0, 15.0
    full_wh, soc_wh, idle_w = 15.0, 15.0, 0.35
    charge = (6.0 * 3600, 6.5 * 3600)
    game = (12.5 * 3600, 12.5 * 3600 + 40 * 60)
    bursts: list[tuple[float, float, float]] = []
    t = 600.0
    while t < hours * 3600:
        length = rng.uniform(30, 360)
        bursts.append((t, t + length, rng.uniform(1.5, 4.5)))
        t += length + rng.uniform(3, 18) * 60
    trips = (("passive", 44.0), ("critical", 55.0))      # skin temperature
    temp, joules = 31.0, 0.0
    rows: list[dict[str, Any]] = []
    online = 8
    for i in range(int(hours * 3600 / dt) + 1):
        t = i * dt
        on_ac = charge[0] <= t < charge[1]
        extra = sum(w for a, b, w in bursts if a <= t < b) + (6.0 if game[0] <= t < game[1] else 0.0)
        power = idle_w + extra + rng.uniform(0, 0.05)
        util = max(1.0, min(100.0, 2.0 + extra * 14.0))
        heat = power + (4.0 if on_ac else 0.0)             # fast charging warms the phone too
        temp += (1 - math.exp(-dt / 180)) * ((30.0 + heat * 2.1) - temp)
        if on_ac:
            soc_wh = min(full_wh, soc_wh + max(0.0, 18.0 - power) * dt / 3600)
            status, bat_w, meter = ("Full" if soc_wh >= full_wh - 0.02 else "Charging"), -round(18.0 - power, 2), None
        else:
            soc_wh = max(0.0, soc_wh - power * dt / 3600)
            status, bat_w, meter = "Discharging", round(power, 2), "battery"
            if i:
                joules += power * dt
        pct = 100 * soc_wh / full_wh
        saver = not on_ac and pct < 20.0
        snap = Snapshot(
            mono_s=t, wall_s=START_WALL + t,
            battery=BatteryState(present=True, percent=round(pct, 2), status=status, power_w=bat_w,
                                 energy_wh=round(soc_wh, 3), energy_full_wh=full_wh, count=1),
            power=PowerState(on_ac=on_ac, adapters=("usb",)),
            thermal=_thermal([("thermal_zone0", "skin", temp, trips)]),
            memory=MemoryState(total_bytes=8 * GIB, available_bytes=int((3.4 - 0.12 * extra) * GIB), swap_used_bytes=0,
                               psi_some_avg10=0.0, psi_full_avg10=0.0),
            cpu=CpuState(load_1m=round(online * util / 100, 2), util_percent=round(util, 1),
                         freq_mhz=round(600 + util * 24, 0), online=online,
                         core_classes=(("performance", (4, 5, 6, 7)), ("efficiency", (0, 1, 2, 3))),
                         quota_cores=online / 2 if saver else None),
            energy=EnergyState(meter=meter, power_w=round(power, 2) if meter else None,
                               joules_total=round(joules, 1) if meter else None),
            source="synthesized",
            reasons=(("cpu.quota_cores", "battery saver: the app's CPU capped at half the cores"),) if saver else ())
        rows.append(snapshot_to_record(snap, t))
    header = _header("phone_day_bursts", dt, "phone through a 15 h day: idle between short bursts of use, a 30 min "
                     "fast charge at lunch, a 40 min game in the evening; battery saver (half the cores) below 20 %; "
                     "synthesized", {"battery_full_wh": full_wh, "idle_w": idle_w, "charge_s": charge, "game_s": game,
                                     "bursts": len(bursts), "seed": seed})
    return header, rows


TRACES = {"chat_rising_heat": chat_rising_heat, "phone_day_bursts": phone_day_bursts}


def render(name: str) -> str:
    return _dump(*TRACES[name]())


def main(argv: list[str] | None = None) -> int:
    return write_traces(TRACES, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
