"""CPU: load, utilisation, frequency, online cores and core classes.

* ``load_1m`` from ``<procfs>/loadavg``; ``util_percent`` from the change of the aggregate ``cpu`` line of
  ``<procfs>/stat`` since the previous read (the reader keeps the last counters); ``busy_s_total`` is the
  system's busy CPU seconds since boot (all cores), which energy accounting uses to share a meter's
  joules between processes.
* ``freq_mhz``: mean of ``cpufreq/scaling_cur_freq`` over online cores, else mean ``cpu MHz`` of
  ``<procfs>/cpuinfo`` (VMs often have no cpufreq).
* ``online`` from ``<sysfs>/devices/system/cpu/online``.
* ``quota_cores``: the tightest CPU quota along this process's cgroup path (cgroup v2 ``cpu.max`` or v1
  ``cpu.cfs_quota_us / cpu.cfs_period_us`` under ``<sysfs>/fs/cgroup``, path from ``<procfs>/self/cgroup``);
  None when there is no limit (see ``agent/cpulimit.py``).
* ``core_classes``: Intel hybrid parts list their cores in ``<sysfs>/devices/cpu_core/cpus``
  ("performance") and ``…/cpu_atom/cpus`` ("efficiency"); Arm big.LITTLE exposes ``cpu_capacity`` per
  core: the highest capacity is "performance", the lowest "efficiency", anything between "balanced".
  When every core is alike the tuple is empty and ``reasons`` says ``homogeneous``.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.sensors._io import Notes, list_dir, parse_cpu_list, parse_float, read_int, read_str
from agent.sensors.snapshot import CpuState


def _clk_tck() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK")) or 100
    except (ValueError, OSError, AttributeError):
        return 100


class CpuReader:
    """Reads CpuState; keeps the previous ``/proc/stat`` counters to compute utilisation."""

    def __init__(self, sysfs_root: str | Path = "/sys", procfs_root: str | Path = "/proc") -> None:
        self.sysfs = Path(sysfs_root)
        self.procfs = Path(procfs_root)
        self._hz = _clk_tck()
        self._prev: tuple[int, int] | None = None
        self._classes: tuple[tuple[str, tuple[int, ...]], ...] | None = None
        self._classes_why: str | None = None

    def _stat(self, notes: Notes) -> tuple[int, int] | None:
        text, why = read_str(self.procfs / "stat")
        if text is None:
            notes.add("cpu.util_percent", why)
            return None
        first = text.splitlines()[0].split()
        if not first or first[0] != "cpu" or len(first) < 5:
            notes.add("cpu.util_percent", f"malformed {self.procfs / 'stat'}: no aggregate cpu line")
            return None
        try:
            vals = [int(x) for x in first[1:]]
        except ValueError:
            notes.add("cpu.util_percent", f"malformed {self.procfs / 'stat'}: non-integer counters")
            return None
        if any(v < 0 for v in vals):
            notes.add("cpu.util_percent", f"malformed {self.procfs / 'stat'}: negative counter")
            return None
        # user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user
        vals = (vals + [0] * 10)[:10]
        total = sum(vals[:8])
        idle = vals[3] + vals[4]
        return total, total - idle

    def _core_classes(self, online: tuple[int, ...] | None) -> None:
        devs = self.sysfs / "devices"
        core, _ = read_str(devs / "cpu_core" / "cpus")
        atom, _ = read_str(devs / "cpu_atom" / "cpus")
        if core and atom:
            p, e = parse_cpu_list(core), parse_cpu_list(atom)
            if p is not None and e is not None:
                self._classes = (("performance", p), ("efficiency", e))
                return
        caps: dict[int, int] = {}
        base = devs / "system" / "cpu"
        for name in list_dir(base):
            if name.startswith("cpu") and name[3:].isdigit():
                cap, _ = read_int(base / name / "cpu_capacity")
                if cap is not None:
                    caps[int(name[3:])] = cap
        if not caps:
            self._classes, self._classes_why = (), "no cpu_capacity and no hybrid cpu_core/cpu_atom"
            return
        levels = sorted(set(caps.values()))
        if len(levels) == 1:
            self._classes, self._classes_why = (), f"homogeneous (all cpu_capacity {levels[0]})"
            return
        out: list[tuple[str, tuple[int, ...]]] = []
        for lvl in reversed(levels):
            label = "performance" if lvl == levels[-1] else "efficiency" if lvl == levels[0] else "balanced"
            cpus = tuple(sorted(c for c, v in caps.items() if v == lvl))
            if out and out[-1][0] == label:
                out[-1] = (label, tuple(sorted(out[-1][1] + cpus)))
            else:
                out.append((label, cpus))
        self._classes = tuple(out)

    def _freq(self, online: tuple[int, ...] | None, notes: Notes) -> float | None:
        base = self.sysfs / "devices" / "system" / "cpu"
        cpus = online if online is not None else tuple(
            int(n[3:]) for n in list_dir(base) if n.startswith("cpu") and n[3:].isdigit())
        khz = []
        for c in cpus:
            v, _ = read_int(base / f"cpu{c}" / "cpufreq" / "scaling_cur_freq")
            if v:
                khz.append(v)
        if khz:
            return sum(khz) / len(khz) / 1000.0
        text, _ = read_str(self.procfs / "cpuinfo")
        if text is not None:
            mhz: list[float] = []
            for line in text.splitlines():
                if line.startswith("cpu MHz"):
                    f, _ = parse_float(line.partition(":")[2].strip(), "cpuinfo")
                    if f is not None and f > 0:
                        mhz.append(f)
            if mhz:
                return sum(mhz) / len(mhz)
        notes.add("cpu.freq_mhz", "no cpufreq/scaling_cur_freq and no 'cpu MHz' in cpuinfo")
        return None

    def read(self) -> tuple[CpuState, Notes]:
        notes = Notes()
        load: float | None = None
        text, why = read_str(self.procfs / "loadavg")
        if text is None:
            notes.add("cpu.load_1m", why)
        else:
            load, why = parse_float(text.split()[0], str(self.procfs / "loadavg"))
            if load is not None and load < 0:
                load, why = None, f"malformed {self.procfs / 'loadavg'}: negative load"
            notes.add("cpu.load_1m", why)
        online_text, why = read_str(self.sysfs / "devices" / "system" / "cpu" / "online")
        online = parse_cpu_list(online_text) if online_text is not None else None
        if online_text is not None and not online:
            why = f"malformed {self.sysfs / 'devices/system/cpu/online'}: {online_text[:40]!r}"
            online = None
        notes.add("cpu.online", why)
        stat = self._stat(notes)
        util: float | None = None
        busy_s: float | None = None
        if stat is not None:
            busy_s = stat[1] / self._hz
            if self._prev is not None:
                dt, db = stat[0] - self._prev[0], stat[1] - self._prev[1]
                if dt > 0 and db >= 0:
                    util = min(100.0, 100.0 * db / dt)
                else:
                    notes.add("cpu.util_percent", "no CPU time elapsed since the previous read")
            else:
                notes.add("cpu.util_percent", "first read: utilisation needs two reads")
            self._prev = stat
        if self._classes is None:
            self._core_classes(online)
        notes.add("cpu.core_classes", self._classes_why)
        from agent.cpulimit import read_quota_cores

        quota, _ = read_quota_cores(self.sysfs / "fs" / "cgroup", self.procfs / "self" / "cgroup")
        return CpuState(load_1m=load, util_percent=util, freq_mhz=self._freq(online, notes),
                        online=len(online) if online else None, core_classes=self._classes or (),
                        busy_s_total=busy_s, quota_cores=quota), notes
