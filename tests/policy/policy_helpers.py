"""Helpers shared by the policy tests (a uniquely named module: several test folders have a conftest)."""

from __future__ import annotations

from pathlib import Path

from agent.sensors.snapshot import BatteryState, MemoryState, PowerState, Snapshot, ThermalState

REPO = Path(__file__).resolve().parents[2]


def make_snap(t: float = 0.0, pct: float | None = 80.0, on_ac: bool | None = False, level: str | None = "none",
              avail_mb: float | None = 4000.0, psi: float | None = 0.0) -> Snapshot:
    return Snapshot(
        mono_s=t, wall_s=t,
        battery=BatteryState(present=pct is not None, percent=pct),
        power=PowerState(on_ac=on_ac),
        thermal=ThermalState(level=level),
        memory=MemoryState(total_bytes=8_000_000_000,
                           available_bytes=None if avail_mb is None else int(avail_mb * 1e6),
                           psi_some_avg10=psi),
    )
