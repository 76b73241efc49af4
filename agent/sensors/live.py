"""LiveSensors: every reader combined into one Snapshot per ``read()``.

Readers that keep state (CPU counters, RAPL wrap-around, NVML handle, integrated battery/GPU energy)
live here, so one ``LiveSensors`` should be kept and read repeatedly. ``read()`` never raises: a
failing reader becomes ``None`` values and a reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent.sensors._io import Notes
from agent.sensors.battery import read_power_supplies
from agent.sensors.cpu import CpuReader
from agent.sensors.memory import MemoryReader
from agent.sensors.power import NvmlReader, RaplReader, read_amdgpu_power, read_npu_busy
from agent.sensors.snapshot import (
    BatteryState,
    CpuState,
    EnergyState,
    MemoryState,
    PowerState,
    Snapshot,
    ThermalState,
)
from agent.sensors.thermal import ThermalReader

log = logging.getLogger(__name__)


class LiveSensors:
    """The real device, read from ``sysfs_root``/``procfs_root`` (tests point these at fake trees)."""

    def __init__(self, sysfs_root: str | Path = "/sys", procfs_root: str | Path = "/proc", *,
                 nvml: bool = True, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.sysfs_root, self.procfs_root = Path(sysfs_root), Path(procfs_root)
        self._clock, self._wall = clock, wall
        self._cpu = CpuReader(sysfs_root, procfs_root)
        self._rapl = RaplReader(sysfs_root)
        self._thermal = ThermalReader(sysfs_root, clock=clock)
        self._memory = MemoryReader(sysfs_root, procfs_root, clock=clock)
        self._nvml: NvmlReader | None = NvmlReader() if nvml else None
        self._last: tuple[float, float, str] | None = None   # (mono, joules_total, meter)
        self._last_power: float | None = None
        self._integrated_j = 0.0

    def _energy(self, now: float, battery: BatteryState, notes: Notes) -> EnergyState:
        rapl_j = self._rapl.read(notes)
        gpu = self._nvml.read(notes) if self._nvml else {"power_w": None, "temp_c": None,
                                                         "util": None, "joules": None}
        if not self._nvml:
            notes.add("energy.gpu", "NVML disabled")
        amd = read_amdgpu_power(self.sysfs_root, notes)
        npu = read_npu_busy(self.sysfs_root, notes)
        meter: str | None = None
        power: float | None = None
        joules: float | None = None
        if rapl_j is not None:
            meter, joules = "rapl", rapl_j
        elif battery.status == "Discharging" and battery.power_w is not None:
            meter, power = "battery", battery.power_w
        elif gpu["power_w"] is not None:
            meter, power = "nvml", gpu["power_w"]
        elif amd is not None:
            meter, power = "amdgpu", amd
        else:
            notes.add("energy.meter", "no meter: " + "; ".join(
                why for why in (notes.get("energy.rapl"), notes.get("battery") or
                                f"battery {battery.status or 'unknown'}", notes.get("energy.gpu"))
                if why))
        last = self._last
        if meter is not None:
            same = last is not None and last[2] == meter and now > last[0]
            if meter == "rapl":
                if same and last is not None and joules is not None:
                    power = (joules - last[1]) / (now - last[0])
                elif not same:
                    notes.add("energy.power_w", "first RAPL read: power needs two reads")
            else:
                if same and last is not None and power is not None and self._last_power is not None:
                    self._integrated_j += (power + self._last_power) / 2 * (now - last[0])
                joules = self._integrated_j
            self._last = (now, joules if joules is not None else 0.0, meter)
            self._last_power = power
        else:
            self._last, self._last_power = None, None
        return EnergyState(meter=meter, power_w=power, joules_total=joules,
                           gpu_power_w=gpu["power_w"] if gpu["power_w"] is not None else amd,
                           gpu_temp_c=gpu["temp_c"], gpu_util_percent=gpu["util"], npu_busy_s=npu,
                           gpu_joules_total=gpu["joules"])

    def read(self) -> Snapshot:
        notes = Notes()
        now, wall = self._clock(), self._wall()
        battery, power, n = _guard("battery", lambda: read_power_supplies(self.sysfs_root),
                                   (BatteryState(), PowerState(), Notes()), notes)
        _merge(notes, n)
        thermal, n = _guard("thermal", self._thermal.read, (ThermalState(), Notes()), notes)
        _merge(notes, n)
        memory, n = _guard("memory", self._memory.read,
                           (MemoryState(), Notes()), notes)
        _merge(notes, n)
        cpu, n = _guard("cpu", self._cpu.read, (CpuState(), Notes()), notes)
        _merge(notes, n)
        energy = _guard("energy", lambda: self._energy(now, battery, notes), EnergyState(), notes)
        return Snapshot(mono_s=now, wall_s=wall, battery=battery, power=power, thermal=thermal,
                        memory=memory, cpu=cpu, energy=energy, source="live", reasons=notes.items())

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.close()


T = TypeVar("T")


def _guard(name: str, fn: Callable[[], T], default: T, notes: Notes) -> T:
    """Readers do not raise by design; this keeps a reader bug from ever reaching the daemon."""
    try:
        return fn()
    except Exception as e:  # pragma: no cover - defensive
        log.exception("%s reader failed", name)
        notes.add(name, f"reader error: {e!r}")
        return default


def _merge(into: Notes, other: Notes) -> None:
    for k, v in other.items():
        into.add(k, v)
