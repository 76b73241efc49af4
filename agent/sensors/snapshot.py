"""The frozen Snapshot of the device's state: what every reader produces and what policy reads.

All values are SI units (W, J, bytes, °C, seconds, fraction or percent as named). Unknown is ``None``,
never -1; ``reasons`` says why a value is unknown ("battery: no power_supply of type Battery").
``to_dict()`` gives the nested mapping that policy rules (CEL) see, e.g. ``battery.percent``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

THERMAL_LEVELS: tuple[str, ...] = (
    "none", "light", "moderate", "severe", "critical", "emergency", "shutdown",
)


@dataclass(frozen=True)
class BatteryState:
    present: bool = False
    percent: float | None = None          # 0..100, all batteries combined
    status: str | None = None             # "Discharging" | "Charging" | "Full" | "Not charging" | "Unknown"
    power_w: float | None = None          # discharge (+) / charge power, W
    energy_wh: float | None = None        # remaining energy, Wh
    energy_full_wh: float | None = None
    count: int = 0


@dataclass(frozen=True)
class PowerState:
    on_ac: bool | None = None             # any Mains/USB supply online; None when no supply is known
    adapters: tuple[str, ...] = ()


@dataclass(frozen=True)
class ThermalZone:
    name: str
    type: str
    temp_c: float | None
    trips: tuple[tuple[str, float], ...] = ()   # (trip type, °C)


@dataclass(frozen=True)
class ThermalState:
    level: str | None = None              # one of THERMAL_LEVELS
    headroom: float | None = None         # 1.0 means "severe"
    max_c: float | None = None
    zones: tuple[ThermalZone, ...] = ()


@dataclass(frozen=True)
class MemoryState:
    total_bytes: int | None = None
    available_bytes: int | None = None
    swap_used_bytes: int | None = None
    psi_some_avg10: float | None = None
    psi_full_avg10: float | None = None
    cgroup_max_bytes: int | None = None
    cgroup_current_bytes: int | None = None


@dataclass(frozen=True)
class CpuState:
    load_1m: float | None = None
    util_percent: float | None = None
    freq_mhz: float | None = None
    online: int | None = None
    core_classes: tuple[tuple[str, tuple[int, ...]], ...] = ()   # ("performance", (0,1)), ("efficiency", (2,3))
    busy_s_total: float | None = None     # system busy CPU seconds since boot, all cores (for energy sharing)
    quota_cores: float | None = None      # CPU quota of this process's cgroup, in cores (None = no limit)
    agent_util_percent: float | None = None  # the agent's own share of util_percent (set by the controller)


@dataclass(frozen=True)
class EnergyState:
    meter: str | None = None              # "rapl" | "battery" | "nvml" | "amdgpu" | "model"
    power_w: float | None = None          # system/package power from the best meter
    joules_total: float | None = None     # monotonic energy counter from the best meter
    gpu_power_w: float | None = None
    gpu_temp_c: float | None = None
    gpu_util_percent: float | None = None
    npu_busy_s: float | None = None
    gpu_joules_total: float | None = None # NVML total energy counter (Volta and later), J


@dataclass(frozen=True)
class Snapshot:
    mono_s: float
    wall_s: float
    battery: BatteryState = field(default_factory=BatteryState)
    power: PowerState = field(default_factory=PowerState)
    thermal: ThermalState = field(default_factory=ThermalState)
    memory: MemoryState = field(default_factory=MemoryState)
    cpu: CpuState = field(default_factory=CpuState)
    energy: EnergyState = field(default_factory=EnergyState)
    source: str = "live"                  # "live" | "trace:<file>"
    reasons: tuple[tuple[str, str], ...] = ()   # (field, why it is unknown)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["reasons"] = dict(self.reasons)
        return d
