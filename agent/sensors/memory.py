"""Memory: totals, swap, pressure (PSI) and our own cgroup's limit.

* MemTotal/MemAvailable and swap come from psutil when ``procfs_root`` is the real ``/proc``, and from
  ``<procfs>/meminfo`` otherwise (psutil's procfs path is process-global, so we never repoint it).
* PSI: ``<procfs>/pressure/memory`` ``some``/``full`` ``avg10`` (percent of the last 10 s stalled).
* cgroup: the ``0::/path`` line of ``<procfs>/self/cgroup`` locates our cgroup v2 directory under
  ``<sysfs>/fs/cgroup`` (or ``…/fs/cgroup/unified`` on hybrid hosts) for ``memory.max`` and
  ``memory.current``; a v1 ``memory`` controller line falls back to ``memory.limit_in_bytes`` /
  ``memory.usage_in_bytes``. ``max`` (and v1's near-2^63 "no limit") gives ``cgroup_max_bytes = None``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.sensors._io import Notes, parse_float, read_int, read_str
from agent.sensors.snapshot import MemoryState

V1_UNLIMITED = 1 << 60


def _meminfo(procfs: Path, notes: Notes) -> tuple[int | None, int | None, int | None]:
    text, why = read_str(procfs / "meminfo")
    if text is None:
        notes.add("memory.total_bytes", why)
        notes.add("memory.available_bytes", why)
        return None, None, None
    vals: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            n = int(parts[0])
        except ValueError:
            continue
        if n < 0:
            continue
        unit = parts[1].lower() if len(parts) > 1 else ""
        vals[key.strip()] = n * 1024 if unit == "kb" else n
    total, avail = vals.get("MemTotal"), vals.get("MemAvailable")
    if total is None:
        notes.add("memory.total_bytes", f"malformed {procfs / 'meminfo'}: no MemTotal")
    if avail is None:
        notes.add("memory.available_bytes", f"malformed {procfs / 'meminfo'}: no MemAvailable")
    swap_used = None
    if "SwapTotal" in vals and "SwapFree" in vals:
        swap_used = max(0, vals["SwapTotal"] - vals["SwapFree"])
    else:
        notes.add("memory.swap_used_bytes", f"malformed {procfs / 'meminfo'}: no SwapTotal/SwapFree")
    return total, avail, swap_used


def read_psi(path: Path, notes: Notes, prefix: str) -> tuple[float | None, float | None]:
    """(some avg10, full avg10) from a PSI file; ``full`` is absent in ``/proc/pressure/cpu`` on old kernels."""
    text, why = read_str(path)
    if text is None:
        notes.add(f"{prefix}_some_avg10", why)
        notes.add(f"{prefix}_full_avg10", why)
        return None, None
    found: dict[str, float | None] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            if k == "avg10":
                val, bad = parse_float(v, str(path))
                if val is not None and not 0.0 <= val <= 100.0:
                    val, bad = None, f"malformed {path}: avg10={v} out of 0..100"
                found[parts[0]] = val
                notes.add(f"{prefix}_{parts[0]}_avg10", bad)
    for k in ("some", "full"):
        if k not in found:
            notes.add(f"{prefix}_{k}_avg10", f"malformed {path}: no '{k} avg10='")
    return found.get("some"), found.get("full")


@dataclass(frozen=True)
class CgroupFiles:
    """Where our cgroup's memory limit and usage live (found once, then read every tick)."""

    max_path: str | None
    cur_path: str | None
    v1: bool = False
    why: str | None = None          # why there is nothing to read


def locate_cgroup(sysfs: Path, procfs: Path) -> CgroupFiles:
    text, why = read_str(procfs / "self" / "cgroup")
    if text is None:
        return CgroupFiles(None, None, why=why)
    v2: str | None = None
    v1: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "memory" in parts[1].split(","):
            v1 = parts[2]
    cg = sysfs / "fs" / "cgroup"
    if v2 is not None:
        rel = v2.lstrip("/")
        for base in (cg / rel, cg / "unified" / rel):
            if (base / "memory.current").exists() or (base / "memory.max").exists():
                return CgroupFiles(str(base / "memory.max"), str(base / "memory.current"))
    if v1 is not None:
        base = cg / "memory" / v1.lstrip("/")
        if (base / "memory.limit_in_bytes").exists():
            return CgroupFiles(str(base / "memory.limit_in_bytes"), str(base / "memory.usage_in_bytes"), v1=True)
    where = f"0::{v2}" if v2 is not None else "no cgroup v2 line"
    return CgroupFiles(None, None, why=f"no memory controller files for our cgroup ({where})")


def read_cgroup(files: CgroupFiles, notes: Notes) -> tuple[int | None, int | None]:
    if files.max_path is None or files.cur_path is None:
        notes.add("memory.cgroup_max_bytes", files.why)
        notes.add("memory.cgroup_current_bytes", files.why)
        return None, None
    cur, why_c = read_int(files.cur_path)
    notes.add("memory.cgroup_current_bytes", why_c)
    mx_text, why_m = read_str(files.max_path)
    if mx_text == "max":
        notes.add("memory.cgroup_max_bytes", f"no limit ({files.max_path} = max)")
        return None, cur
    mx, why_m = read_int(files.max_path)
    if mx is not None and files.v1 and mx >= V1_UNLIMITED:
        notes.add("memory.cgroup_max_bytes", f"no limit (cgroup v1 {files.max_path})")
        return None, cur
    notes.add("memory.cgroup_max_bytes", why_m)
    return mx, cur


class MemoryReader:
    """read_memory with the cgroup's files located once (re-located every ``rescan_s``)."""

    def __init__(self, sysfs_root: str | Path = "/sys", procfs_root: str | Path = "/proc",
                 rescan_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.sysfs, self.procfs = Path(sysfs_root), Path(procfs_root)
        self.rescan_s, self._clock = rescan_s, clock
        self._files: CgroupFiles | None = None
        self._at = 0.0

    def read(self) -> tuple[MemoryState, Notes]:
        now = self._clock()
        if self._files is None or now - self._at >= self.rescan_s:
            self._files, self._at = locate_cgroup(self.sysfs, self.procfs), now
        return read_memory(self.sysfs, self.procfs, cgroup=self._files)


def read_memory(sysfs_root: str | Path = "/sys", procfs_root: str | Path = "/proc", *,
                cgroup: CgroupFiles | None = None) -> tuple[MemoryState, Notes]:
    """Read memory state; never raises."""
    notes = Notes()
    procfs, sysfs = Path(procfs_root), Path(sysfs_root)
    total = avail = swap_used = None
    if str(procfs_root).rstrip("/") == "/proc":
        try:
            import psutil

            vm = psutil.virtual_memory()
            total, avail = int(vm.total), int(vm.available)
            swap_used = int(psutil.swap_memory().used)
        except (OSError, RuntimeError, ValueError) as e:  # psutil on odd kernels
            notes.add("memory.total_bytes", f"psutil: {e}")
            total, avail, swap_used = _meminfo(procfs, notes)
    else:
        total, avail, swap_used = _meminfo(procfs, notes)
    some, full = read_psi(procfs / "pressure" / "memory", notes, "memory.psi")
    cg_max, cg_cur = read_cgroup(cgroup or locate_cgroup(sysfs, procfs), notes)
    return MemoryState(total_bytes=total, available_bytes=avail, swap_used_bytes=swap_used,
                       psi_some_avg10=some, psi_full_avg10=full,
                       cgroup_max_bytes=cg_max, cgroup_current_bytes=cg_cur), notes
