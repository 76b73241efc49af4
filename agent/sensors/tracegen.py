"""Synthesize the shipped sensor traces from small physical models (deterministic, seeded).

These traces were **synthesized, not recorded**: the machine this project is built on has no battery,
thermal zones or RAPL. Each model is simple but physically plausible, and its parameters are written
into the trace header. Regenerate with ``python -m agent.sensors.tracegen agent/sensors/traces``.

* ``laptop_workday.jsonl`` – a 56 Wh laptop battery (energy form) through a 9 h day at 60 s steps:
  a base load (idle 4.5 W) plus work bursts (builds, video calls, 12–22 W), plugged in twice
  (a 20 min meeting and lunch) on a 45 W charger with constant-current/constant-voltage taper above
  80 %; it ends near 10 %. Energy meter: the battery while discharging (RAPL is root-only, the daemon
  is not root), none while on AC.
* ``thermal_sustained_load.jsonl`` – a laptop on AC running an all-core load from minute 5 to 25 (5 s
  steps). A first-order thermal model (package: R = 1.0 °C/W to a 32 °C heatsink/ambient, τ = 40 s;
  the ACPI zone follows it with τ = 150 s) heats past the passive trip (85 °C); the step-wise governor
  cuts frequency 10 % per 5 s above the trip after a 15 s polling delay, so the package overshoots
  into ``critical`` and settles near the trip (``severe``), then cools back to ``none`` after the load.
  Energy meter: RAPL.
* ``memory_pressure_bursts.jsonl`` – an 8 GiB device over 20 min at 2 s steps: four bursts in which
  another app allocates 2.5–4.5 GiB over ~20 s, holds it 30–80 s and frees it. Reclaim stalls start
  below 15 % available; PSI ``some avg10`` is the 10 s exponential average of the stalled share
  (``full`` ≈ 45 % of ``some``); swap takes what does not fit above a 5 % floor and drains
  slowly after. Our service's cgroup has a
  2 GiB limit.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.sensors.snapshot import (
    BatteryState,
    CpuState,
    EnergyState,
    MemoryState,
    PowerState,
    Snapshot,
    ThermalState,
    ThermalZone,
)
from agent.sensors.thermal import zone_level
from agent.sensors.trace import FORMAT, VERSION, snapshot_to_record

GIB = 1 << 30
BASE_W = 5.0
LOAD_W = 82.0
START_WALL = 1_795_500_000.0   # 2026-11-24 ~08:40 UTC; only gives replayed snapshots a wall clock


def _header(name: str, interval: float, note: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "interval_s": interval, "source": "synthesized",
            "started_wall": START_WALL, "name": name, "synthesized": True,
            "generator": "agent/sensors/tracegen.py", "note": note, "model": model}


def _thermal(zones: list[tuple[str, str, float, tuple[tuple[str, float], ...]]]) -> ThermalState:
    tz = tuple(ThermalZone(name=n, type=k, temp_c=round(t, 1), trips=trips) for n, k, t, trips in zones)
    from agent.sensors.snapshot import THERMAL_LEVELS
    best: tuple[int, float] | None = None
    for z in tz:
        lh = zone_level(z.temp_c or 0.0, z.trips)
        if lh:
            r = THERMAL_LEVELS.index(lh[0])
            best = (max(best[0], r), max(best[1], lh[1])) if best else (r, lh[1])
    assert best is not None
    return ThermalState(level=THERMAL_LEVELS[best[0]], headroom=round(best[1], 4),
                        max_c=max(z.temp_c or 0.0 for z in tz), zones=tz)


# ------------------------------------------------------------------------------------- workday

def laptop_workday(seed: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = random.Random(seed)
    dt, hours = 60.0, 9.0
    full_wh, soc_wh = 56.0, 56.0
    charger_w = 45.0
    plugged = [(2.0 * 3600, 2.0 * 3600 + 20 * 60), (4.0 * 3600, 4.5 * 3600)]   # meeting room, lunch
    bursts: list[tuple[float, float, float]] = []   # (start, end, extra watts)
    t = 0.0
    while t < hours * 3600:
        t += rng.uniform(10, 40) * 60
        length = rng.uniform(5, 30) * 60
        bursts.append((t, t + length, rng.uniform(7.5, 17.5)))
        t += length
    trips = (("passive", 85.0), ("critical", 100.0))
    acpi_trips = (("critical", 105.0),)
    temp, joules = 42.0, 0.0
    rows: list[dict[str, Any]] = []
    cpu_busy = 0.0
    prev_meter_w: float | None = None
    n = int(hours * 3600 / dt)
    for i in range(n + 1):
        t = i * dt
        on_ac = any(a <= t < b for a, b in plugged)
        extra = sum(w for a, b, w in bursts if a <= t < b)
        load_w = BASE_W + extra + rng.gauss(0, 0.4)
        util = max(1.0, min(100.0, (load_w - 3.5) / 18.0 * 100))
        cpu_busy += util / 100 * 8 * dt            # 8 logical CPUs
        temp += (1 - math.exp(-dt / 90)) * ((35 + load_w * 1.6) - temp)
        reasons: dict[str, str] = {}
        if on_ac:
            soc = soc_wh / full_wh
            charge_w = charger_w - load_w if soc < 0.8 else max(0.0, (charger_w - load_w) * (1 - soc) / 0.2)
            soc_wh = min(full_wh, soc_wh + charge_w * dt / 3600)
            status = "Full" if soc_wh >= full_wh - 0.05 else "Charging"
            bat_w = -round(charge_w, 2) if status == "Charging" else 0.0
            meter = None
            reasons["energy.meter"] = "no meter: RAPL root-only; battery not discharging"
            prev_meter_w = None
        else:
            soc_wh = max(0.0, soc_wh - load_w * dt / 3600)
            status, bat_w, meter = "Discharging", round(load_w, 2), "battery"
            if prev_meter_w is not None:
                joules += (load_w + prev_meter_w) / 2 * dt
            prev_meter_w = load_w
        snap = Snapshot(
            mono_s=t, wall_s=START_WALL + t,
            battery=BatteryState(present=True, percent=round(100 * soc_wh / full_wh, 2), status=status,
                                 power_w=bat_w, energy_wh=round(soc_wh, 3), energy_full_wh=full_wh, count=1),
            power=PowerState(on_ac=on_ac, adapters=("ADP1",)),
            thermal=_thermal([("thermal_zone0", "acpitz", temp - 4, acpi_trips),
                              ("thermal_zone1", "x86_pkg_temp", temp, trips)]),
            memory=MemoryState(total_bytes=16 * GIB, available_bytes=int((9.5 - extra * 0.15) * GIB),
                               swap_used_bytes=0, psi_some_avg10=0.0, psi_full_avg10=0.0),
            cpu=CpuState(load_1m=round(util / 100 * 8, 2), util_percent=round(util, 1),
                         freq_mhz=round(1200 + util * 30, 0), online=8,
                         core_classes=(("performance", (0, 1, 2, 3)), ("efficiency", (4, 5, 6, 7))),
                         busy_s_total=round(cpu_busy, 2)),
            energy=EnergyState(meter=meter, power_w=round(load_w, 2) if meter else None,
                               joules_total=round(joules, 1) if meter else None),
            source="synthesized", reasons=tuple(reasons.items()))
        rows.append(snapshot_to_record(snap, t))
    header = _header("laptop_workday", dt, "laptop unplugged through a 9 h workday, 100 % -> ~10 %, "
                     "plugged in for a 20 min meeting and a 30 min lunch; synthesized, not recorded",
                     {"battery_full_wh": full_wh, "charger_w": charger_w, "base_load_w": BASE_W,
                      "plugged_s": plugged, "seed": seed})
    return header, rows


# ------------------------------------------------------------------------------------- thermal

def thermal_sustained_load(seed: int = 2) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = random.Random(seed)
    dt, minutes = 5.0, 45
    amb, r_th, tau_pkg, tau_acpi = 32.0, 1.0, 40.0, 150.0
    trips = (("passive", 85.0), ("critical", 100.0))
    acpi_trips = (("active", 55.0), ("passive", 95.0), ("critical", 105.0))
    t_pkg, t_acpi, scale, joules, busy = 45.0, 42.0, 1.0, 0.0, 0.0
    above_since: float | None = None
    rows: list[dict[str, Any]] = []
    for i in range(int(minutes * 60 / dt) + 1):
        t = i * dt
        loaded = 300 <= t < 1500
        if loaded and t_pkg > 85.0:
            above_since = t if above_since is None else above_since
            if t - above_since >= 20:
                scale = max(0.4, scale - 0.1)
        else:
            above_since = None
            if t_pkg < 82.0:
                scale = min(1.0, scale + 0.05)
        util = 100.0 if loaded else 3.0 + rng.uniform(0, 2)
        power = (8.0 + (LOAD_W - 8.0) * scale) if loaded else 8.0 + rng.uniform(0, 1)
        t_pkg += (1 - math.exp(-dt / tau_pkg)) * (amb + r_th * power - t_pkg) + rng.gauss(0, 0.2)
        t_acpi += (1 - math.exp(-dt / tau_acpi)) * (t_pkg - 8.0 - t_acpi)
        if i:
            joules += power * dt
        busy += util / 100 * 8 * dt
        snap = Snapshot(
            mono_s=t, wall_s=START_WALL + t,
            battery=BatteryState(present=True, percent=100.0, status="Full", power_w=0.0,
                                 energy_wh=56.0, energy_full_wh=56.0, count=1),
            power=PowerState(on_ac=True, adapters=("AC",)),
            thermal=_thermal([("thermal_zone0", "acpitz", t_acpi, acpi_trips),
                              ("thermal_zone1", "x86_pkg_temp", t_pkg, trips)]),
            memory=MemoryState(total_bytes=16 * GIB, available_bytes=int(10 * GIB), swap_used_bytes=0,
                               psi_some_avg10=0.0, psi_full_avg10=0.0),
            cpu=CpuState(load_1m=round(8.0 * util / 100, 2), util_percent=round(util, 1),
                         freq_mhz=round(4200 * scale if loaded else 1100, 0), online=8,
                         busy_s_total=round(busy, 2)),
            energy=EnergyState(meter="rapl", power_w=round(power, 2), joules_total=round(joules, 1)),
            source="synthesized",
            reasons=(("cpu.core_classes", "homogeneous (all cpu_capacity 1024)"),))
        rows.append(snapshot_to_record(snap, t))
    header = _header("thermal_sustained_load", dt, "all-core load from minute 5 to 25 on a laptop on AC: "
                     "package temperature passes the passive trip, throttles, recovers; synthesized",
                     {"ambient_c": amb, "r_th_c_per_w": r_th, "tau_pkg_s": tau_pkg, "tau_acpi_s": tau_acpi,
                      "load_w": LOAD_W, "throttle": "-10 % per 5 s above 85 C after 20 s, floor 40 %",
                      "seed": seed})
    return header, rows


# ------------------------------------------------------------------------------------- memory

def memory_pressure_bursts(seed: int = 3) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = random.Random(seed)
    dt, minutes, total = 2.0, 20, 8 * GIB
    base_avail = 4.6 * GIB
    bursts = [(120.0, 2.5), (330.0, 3.6), (600.0, 4.5), (900.0, 4.1)]   # start s, GiB
    holds = [40.0, 60.0, 80.0, 30.0]
    some = full = 0.0
    swap = 0.0
    rows: list[dict[str, Any]] = []
    alpha = 1 - math.exp(-dt / 10.0)
    for i in range(int(minutes * 60 / dt) + 1):
        t = i * dt
        used = 0.0
        for (start, gib), hold in zip(bursts, holds, strict=True):
            ramp = 20.0
            if start <= t < start + ramp:
                used += gib * (t - start) / ramp
            elif start + ramp <= t < start + ramp + hold:
                used += gib
            elif start + ramp + hold <= t < start + ramp + hold + 6:
                used += gib * (1 - (t - start - ramp - hold) / 6)
        avail = base_avail - used * GIB + rng.gauss(0, 20e6)
        floor = 0.05 * total
        if avail < floor:      # reclaim swaps out the excess and keeps a little free memory
            swap = max(swap, floor - avail)
            avail = max(0.01 * total, floor - 0.3 * (floor - avail))
        else:                  # swapped pages come back slowly, as they are touched
            swap *= 0.97
        stall = min(0.9, max(0.0, (0.15 * total - avail) / (0.15 * total)) * 1.3)
        some += alpha * (100 * stall - some)
        full += alpha * (45 * stall - full)
        snap = Snapshot(
            mono_s=t, wall_s=START_WALL + t,
            power=PowerState(on_ac=True, adapters=("USB-C",)),
            memory=MemoryState(total_bytes=total, available_bytes=int(avail), swap_used_bytes=int(swap),
                               psi_some_avg10=round(some, 2), psi_full_avg10=round(full, 2),
                               cgroup_max_bytes=2 * GIB, cgroup_current_bytes=int(0.6 * GIB + rng.uniform(0, 4e7))),
            cpu=CpuState(load_1m=round(1.0 + 3 * stall, 2), util_percent=round(20 + 40 * stall, 1),
                         freq_mhz=1800.0, online=4,
                         core_classes=(("performance", (2, 3)), ("efficiency", (0, 1)))),
            source="synthesized",
            reasons=(("battery", "no power_supply of type Battery"), ("thermal", "no thermal zones"),
                     ("energy.meter", "no meter: missing /sys/class/powercap")))
        rows.append(snapshot_to_record(snap, t))
    header = _header("memory_pressure_bursts", dt, "8 GiB device, four bursts of another app allocating "
                     "2.5-4.5 GiB; PSI rises below 15 % available; synthesized, not recorded",
                     {"total_gib": 8, "bursts_start_s_gib": bursts, "holds_s": holds,
                      "psi": "avg10 = 10 s EWMA of stalled share", "seed": seed})
    return header, rows


TRACES = {"laptop_workday": laptop_workday, "thermal_sustained_load": thermal_sustained_load,
          "memory_pressure_bursts": memory_pressure_bursts}


def render(name: str) -> str:
    header, rows = TRACES[name]()
    return "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in [header, *rows])


def write_traces(names: Iterable[str], render_one: Callable[[str], str], argv: list[str] | None) -> int:
    """Write each named trace as ``OUT/<name>.jsonl`` (OUT: ``argv[0]``, else the shipped traces folder)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else Path(__file__).with_name("traces"))
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / f"{name}.jsonl").write_text(render_one(name), encoding="utf-8")
        print(out / f"{name}.jsonl")
    return 0


def main(argv: list[str] | None = None) -> int:
    return write_traces(TRACES, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())
