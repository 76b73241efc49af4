"""Energy per request: which meter, how many joules.

Use::

    meter = EnergyMeter()                      # or EnergyMeter(sysfs_root=..., procfs_root=...)
    acct = EnergyAccountant()
    r0 = meter.read()                          # before the request (cheap: RAPL / battery / NVML / stat)
    ...run it; the worker reports its CPU seconds...
    r1 = meter.read()
    joules, which = acct.joules(cpu_s=worker_cpu_s, wall_s=elapsed_s, start=r0, end=r1)

``start``/``end`` may also be two Snapshots (``EnergyReading.from_snapshot``), e.g. from a trace.

Rules (``which`` names the meter used):

* ``rapl`` / ``battery`` (whole-CPU or whole-system meters): average power P over the readings'
  window, and the system's busy core count B (from ``/proc/stat``) over the same window. The request
  gets ``P × wall_s × share`` with ``share = cpu_s / max(cpu_s, B × wall_s)``: its part of the busy CPU
  time while it ran (idle power included in proportion). Unknown B gives share 1.
* ``nvml`` / ``amdgpu`` (GPU meters): GPU power × ``wall_s`` (the GPU is assumed to serve the request)
  plus the CPU model for ``cpu_s``.
* ``model``: ``cpu_s × watts_per_busy_core``. The default, 5 W, is a mid-range laptop core at full
  load (15–28 W mobile packages over 4–8 cores); ``calibrate(start, end)`` fits it from metered
  intervals (least squares of power against busy cores) so the model tracks the machine once a meter
  has been seen.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from agent.errors import InvalidParams
from agent.sensors._io import Notes, read_str
from agent.sensors.battery import read_power_supplies
from agent.sensors.power import NvmlReader, RaplReader, read_amdgpu_power
from agent.sensors.snapshot import Snapshot

DEFAULT_WATTS_PER_BUSY_CORE = 5.0
CPU_METERS = ("rapl", "battery")
GPU_METERS = ("nvml", "amdgpu")


@dataclass(frozen=True)
class EnergyReading:
    mono_s: float
    meter: str | None                # rapl | battery | nvml | amdgpu | None
    joules_total: float | None       # the meter's counter, when it has one
    power_w: float | None
    busy_s_total: float | None       # system busy CPU seconds (all cores)

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> EnergyReading:
        e = snap.energy
        return cls(snap.mono_s, e.meter, e.joules_total, e.power_w, snap.cpu.busy_s_total)


class Attribution(NamedTuple):
    joules: float
    meter: str


def read_busy_s(procfs_root: str | Path = "/proc") -> float | None:
    text, _ = read_str(Path(procfs_root) / "stat")
    if not text:
        return None
    parts = text.split("\n", 1)[0].split()
    if len(parts) < 5 or parts[0] != "cpu":
        return None
    try:
        v = [int(x) for x in parts[1:9]]
    except ValueError:
        return None
    v += [0] * (8 - len(v))
    try:
        hz = int(os.sysconf("SC_CLK_TCK")) or 100
    except (ValueError, OSError):
        hz = 100
    return (sum(v) - v[3] - v[4]) / hz


class EnergyMeter:
    """Reads only what accounting needs, in priority order RAPL > battery > NVML > amdgpu."""

    def __init__(self, sysfs_root: str | Path = "/sys", procfs_root: str | Path = "/proc", *,
                 nvml: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.sysfs_root, self.procfs_root = Path(sysfs_root), Path(procfs_root)
        self._rapl = RaplReader(sysfs_root)
        self._nvml = NvmlReader() if nvml else None
        self._clock = clock
        self.last_notes = Notes()

    def read(self) -> EnergyReading:
        notes = Notes()
        now = self._clock()
        busy = read_busy_s(self.procfs_root)
        j = self._rapl.read(notes)
        if j is not None:
            reading = EnergyReading(now, "rapl", j, None, busy)
        else:
            bat, _, _ = read_power_supplies(self.sysfs_root)
            if bat.status == "Discharging" and bat.power_w is not None:
                reading = EnergyReading(now, "battery", None, bat.power_w, busy)
            else:
                gpu = self._nvml.read(notes) if self._nvml else {}
                if gpu.get("power_w") is not None:
                    reading = EnergyReading(now, "nvml", gpu.get("joules"), gpu["power_w"], busy)
                else:
                    amd = read_amdgpu_power(self.sysfs_root, notes)
                    reading = EnergyReading(now, "amdgpu" if amd is not None else None, None, amd, busy)
        self.last_notes = notes
        return reading

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()


def _check(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise InvalidParams(f"{name}: expected a finite number >= 0, got {v!r}")
    return float(v)


def _power(a: EnergyReading, b: EnergyReading) -> float | None:
    dt = b.mono_s - a.mono_s
    if a.joules_total is not None and b.joules_total is not None and dt > 0:
        dj = b.joules_total - a.joules_total
        if dj >= 0:
            return dj / dt
    ps = [p for p in (a.power_w, b.power_w) if p is not None and p >= 0]
    return sum(ps) / len(ps) if ps else None


class EnergyAccountant:
    """Attributes joules to requests; see the module docstring for the rules."""

    def __init__(self, watts_per_busy_core: float = DEFAULT_WATTS_PER_BUSY_CORE, *, window: int = 64) -> None:
        self.watts_per_busy_core = _check("watts_per_busy_core", watts_per_busy_core)
        self.calibrated_from: str | None = None
        self._obs: deque[tuple[float, float]] = deque(maxlen=window)   # (busy cores, watts)

    def model(self, cpu_s: float) -> float:
        return cpu_s * self.watts_per_busy_core

    def joules(self, cpu_s: float, wall_s: float, start: EnergyReading | Snapshot,
               end: EnergyReading | Snapshot) -> Attribution:
        cpu_s, wall_s = _check("cpu_s", cpu_s), _check("wall_s", wall_s)
        a = start if isinstance(start, EnergyReading) else EnergyReading.from_snapshot(start)
        b = end if isinstance(end, EnergyReading) else EnergyReading.from_snapshot(end)
        meter = b.meter if a.meter == b.meter else None
        power = _power(a, b) if meter else None
        if meter in CPU_METERS and power is not None:
            dt = b.mono_s - a.mono_s
            share = 1.0
            if a.busy_s_total is not None and b.busy_s_total is not None and dt > 0 and cpu_s > 0:
                busy_cores = max(0.0, b.busy_s_total - a.busy_s_total) / dt
                share = cpu_s / max(cpu_s, busy_cores * wall_s)
            elif cpu_s == 0:
                share = 0.0
            return Attribution(power * wall_s * share, meter)
        if meter in GPU_METERS and power is not None:
            return Attribution(power * wall_s + self.model(cpu_s), meter)
        return Attribution(self.model(cpu_s), "model")

    def calibrate(self, start: EnergyReading | Snapshot, end: EnergyReading | Snapshot) -> float | None:
        """Learn watts per busy core from a metered interval; returns the new value or None."""
        a = start if isinstance(start, EnergyReading) else EnergyReading.from_snapshot(start)
        b = end if isinstance(end, EnergyReading) else EnergyReading.from_snapshot(end)
        dt = b.mono_s - a.mono_s
        if a.meter != b.meter or a.meter not in CPU_METERS or dt < 0.5:
            return None
        if a.busy_s_total is None or b.busy_s_total is None:
            return None
        power = _power(a, b)
        if power is None:
            return None
        self._obs.append((max(0.0, b.busy_s_total - a.busy_s_total) / dt, power))
        if len(self._obs) < 3:
            return None
        xs, ys = [o[0] for o in self._obs], [o[1] for o in self._obs]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var < 0.05 * len(xs):           # busy level barely varied: slope is not identifiable
            return None
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        if not 0.2 <= slope <= 200.0:
            return None
        self.watts_per_busy_core = slope
        self.calibrated_from = a.meter
        return slope
