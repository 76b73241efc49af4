"""Fake sysfs/procfs trees for the sensor tests, built file by file in tmp_path."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest


class FakeTree:
    """A fake ``/sys`` (``.sys``) and ``/proc`` (``.proc``) under one temporary directory."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.sys.mkdir()
        self.proc.mkdir()

    # ------------------------------------------------------------------ generic
    def write(self, rel: str, content: object) -> Path:
        """Write ``content`` (plus a newline, like sysfs) at ``rel`` under the tree ("sys/..", "proc/..")."""
        p = self.sys.parent / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{content}\n")
        return p

    def make_unreadable(self, rel: str) -> Path:
        """Root ignores chmod 000, so put a directory where a file is expected."""
        p = self.sys.parent / rel
        if p.exists():
            p.unlink()
        p.mkdir(parents=True)
        return p

    # ------------------------------------------------------------------ power supplies
    def supply(self, name: str, **files: object) -> Path:
        d = self.sys / "class" / "power_supply" / name
        d.mkdir(parents=True, exist_ok=True)
        for k, v in files.items():
            (d / k).write_text(f"{v}\n")
        return d

    def battery_energy(self, name: str = "BAT0", *, status: str = "Discharging", energy_now: int = 30_000_000,
                       energy_full: int = 60_000_000, power_now: int = 12_000_000, capacity: int | None = None,
                       **extra: object) -> Path:
        files: dict[str, object] = {"type": "Battery", "status": status, "energy_now": energy_now,
                                        "energy_full": energy_full, "power_now": power_now, "present": 1}
        files.update(extra)
        if capacity is not None:
            files["capacity"] = capacity
        return self.supply(name, **files)

    def battery_charge(self, name: str = "BAT0", *, status: str = "Charging", charge_now: int = 2_000_000,
                       charge_full: int = 4_000_000, current_now: int = 1_500_000,
                       voltage_now: int = 12_000_000, **extra: object) -> Path:
        return self.supply(name, type="Battery", status=status, charge_now=charge_now, charge_full=charge_full,
                           current_now=current_now, voltage_now=voltage_now, **extra)

    def adapter(self, name: str = "AC", *, online: int = 1, kind: str = "Mains") -> Path:
        return self.supply(name, type=kind, online=online)

    # ------------------------------------------------------------------ thermal
    def zone(self, idx: int, temp_c: float, trips: Iterable[tuple[str, float]] = (), kind: str = "x86_pkg_temp",
             **extra: object) -> Path:
        d = self.sys / "class" / "thermal" / f"thermal_zone{idx}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "type").write_text(kind + "\n")
        (d / "temp").write_text(f"{round(temp_c * 1000)}\n")
        for i, (ttype, tc) in enumerate(trips):
            (d / f"trip_point_{i}_type").write_text(ttype + "\n")
            (d / f"trip_point_{i}_temp").write_text(f"{round(tc * 1000)}\n")
        for k, v in extra.items():
            (d / k).write_text(f"{v}\n")
        return d

    # ------------------------------------------------------------------ RAPL
    def rapl(self, idx: int, energy_uj: int, *, name: str | None = None,
             max_uj: int = 262_143_328_850) -> Path:
        d = self.sys / "class" / "powercap" / f"intel-rapl:{idx}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text((name or f"package-{idx}") + "\n")
        (d / "energy_uj").write_text(f"{energy_uj}\n")
        (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
        return d

    # ------------------------------------------------------------------ procfs
    def meminfo(self, total_kb: int = 8_000_000, avail_kb: int = 5_000_000, swap_total_kb: int = 2_000_000,
                swap_free_kb: int = 1_500_000) -> None:
        self.write("proc/meminfo", f"MemTotal:       {total_kb} kB\nMemFree:        1000 kB\n"
                   f"MemAvailable:   {avail_kb} kB\nSwapTotal:      {swap_total_kb} kB\n"
                   f"SwapFree:       {swap_free_kb} kB")

    def psi(self, some: float = 1.5, full: float = 0.5) -> None:
        self.write("proc/pressure/memory",
                   f"some avg10={some:.2f} avg60=0.10 avg300=0.00 total=1234\n"
                   f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=99")

    def stat(self, user: int, system: int, idle: int) -> None:
        self.write("proc/stat", f"cpu  {user} 0 {system} {idle} 0 0 0 0 0 0\n"
                   f"cpu0 {user} 0 {system} {idle} 0 0 0 0 0 0\nintr 0")

    def desktop_basics(self) -> FakeTree:
        """A plausible procfs and cpu tree with no battery, thermal or RAPL at all."""
        self.meminfo()
        self.psi(0.0, 0.0)
        self.stat(100, 50, 1000)
        self.write("proc/loadavg", "0.42 0.30 0.20 1/123 4567")
        self.write("proc/self/cgroup", "0::/system.slice/agentd.service")
        self.write("sys/fs/cgroup/system.slice/agentd.service/memory.max", 2 * 1024**3)
        self.write("sys/fs/cgroup/system.slice/agentd.service/memory.current", 300 * 1024**2)
        self.write("sys/devices/system/cpu/online", "0-3")
        for c in range(4):
            self.write(f"sys/devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq", 2_000_000 + c * 100_000)
        return self


@pytest.fixture
def fake(tmp_path: Path) -> FakeTree:
    return FakeTree(tmp_path)


class ManualClock:
    """A clock tests advance by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
