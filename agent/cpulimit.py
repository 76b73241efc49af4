"""Limit the CPU available to a group of processes, behind one small interface.

Three mechanisms, tried in this order by :func:`make_limiter`:

* ``cgroup2``: a child cgroup under a cgroup v2 hierarchy whose ``cpu`` controller is enabled; the quota is
  written to ``cpu.max`` (``"QUOTA PERIOD"`` in µs, ``"max PERIOD"`` = no limit);
* ``cgroup1``: a child cgroup of the v1 ``cpu`` hierarchy; the quota goes to ``cpu.cfs_quota_us`` against
  ``cpu.cfs_period_us`` (``-1`` = no limit);
* ``threads``: where neither is writable, the limit can only be applied at start: the measured process is
  pinned to ``ceil(cores)`` CPUs (``os.sched_setaffinity``) and told to use that many threads. Fractions of
  a core cannot be expressed this way (0.5 of a 2-core machine becomes 1 core), and the limit cannot change
  while the process runs; ``describe()`` says so.

A quota is given in **cores** (``1.0`` = one core's worth of CPU time per period; ``None`` = no limit); the
compute fraction of the machine is ``cores / os.cpu_count()``. Every limiter names its mechanism
(``.kind``), which the cost tables record. :func:`read_quota_cores` reads the quota that applies to a
process (the tightest along its cgroup path), for the live sensors.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Protocol

from agent.errors import CpuLimitError

PERIOD_US = 100_000


class CpuLimiter(Protocol):
    kind: str                              # "cgroup2" | "cgroup1" | "threads"

    def set_cores(self, cores: float | None) -> None: ...
    def add(self, pid: int) -> None: ...
    def threads_for(self, cores: float | None) -> int | None: ...
    def close(self) -> None: ...
    def describe(self) -> str: ...


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as e:
        raise CpuLimitError(f"cannot write {text.strip()!r} to {path}: {e.strerror or e}") from None


class _Cgroup:
    kind = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(exist_ok=True)
        except OSError as e:
            raise CpuLimitError(f"cannot create cgroup {path}: {e.strerror or e}") from None
        self.cores: float | None = None

    def add(self, pid: int) -> None:
        _write(self.path / "cgroup.procs", f"{pid}\n")

    def threads_for(self, cores: float | None) -> int | None:
        return None        # a quota leaves the thread count alone

    def close(self) -> None:
        """Move the members back to the parent and remove the group (best effort)."""
        parent = self.path.parent / "cgroup.procs"
        try:
            pids = (self.path / "cgroup.procs").read_text().split()
        except OSError:
            pids = []
        for p in pids:
            try:
                parent.write_text(f"{p}\n")
            except OSError:
                pass
        try:
            self.path.rmdir()
        except OSError:
            pass

    def describe(self) -> str:
        q = "no limit" if self.cores is None else f"{self.cores:g} cores"
        return f"{self.kind} {self.path} ({q})"


class CgroupV2(_Cgroup):
    kind = "cgroup2"

    def set_weight(self, tasks: int) -> None:
        _write(self.path / "cpu.weight", f"{max(1, min(10000, 100 * tasks))}\n")

    def set_cores(self, cores: float | None) -> None:
        val = "max" if cores is None else str(max(1000, int(cores * PERIOD_US)))
        _write(self.path / "cpu.max", f"{val} {PERIOD_US}\n")
        self.cores = cores


class CgroupV1(_Cgroup):
    kind = "cgroup1"

    def set_weight(self, tasks: int) -> None:
        _write(self.path / "cpu.shares", f"{max(2, 1024 * tasks)}\n")

    def set_cores(self, cores: float | None) -> None:
        _write(self.path / "cpu.cfs_period_us", f"{PERIOD_US}\n")
        _write(self.path / "cpu.cfs_quota_us", "-1\n" if cores is None else f"{max(1000, int(cores * PERIOD_US))}\n")
        self.cores = cores


class ThreadLimiter:
    """No writable cgroup: pin to whole cores and size the thread pool (applied when a process starts)."""

    kind = "threads"

    def __init__(self) -> None:
        self.cores: float | None = None

    def set_cores(self, cores: float | None) -> None:
        self.cores = cores

    def threads_for(self, cores: float | None) -> int | None:
        return None if cores is None else max(1, math.ceil(cores))

    def add(self, pid: int) -> None:
        n = self.threads_for(self.cores)
        cpus = sorted(os.sched_getaffinity(0))
        try:
            os.sched_setaffinity(pid, set(cpus if n is None else cpus[:n]))
        except OSError as e:
            raise CpuLimitError(f"cannot set the CPU affinity of pid {pid}: {e.strerror or e}") from None

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"threads/affinity ({'no limit' if self.cores is None else f'{self.cores:g} cores, rounded up'})"


def make_limiter(name: str, root: Path | str = "/sys/fs/cgroup", prefer: str | None = None,
                 tasks: int | None = None) -> CpuLimiter:
    """A limiter for a new group ``name``: cgroup v2, else cgroup v1, else threads (see the module doc).

    A child cgroup competes with its siblings *as one entity*: with the default weight (v1 ``cpu.shares``
    1024, v2 ``cpu.weight`` 100) a group running two busy threads gets the share of one process of its
    parent. So the group's weight is set to ``tasks`` (default: the CPU count) times the default, as if its
    threads sat in the parent; the quota is then the only limit."""
    tasks = tasks or os.cpu_count() or 1
    root = Path(root)
    order = [prefer] if prefer else ["cgroup2", "cgroup1", "threads"]
    errors: list[str] = []
    for kind in order:
        try:
            if kind == "cgroup2":
                ctl = root / "cgroup.controllers"
                if ctl.exists() and "cpu" in ctl.read_text().split():
                    sub = (root / "cgroup.subtree_control")
                    if "cpu" not in sub.read_text().split():
                        _write(sub, "+cpu\n")
                    v2 = CgroupV2(root / name)
                    v2.set_cores(None)
                    if (v2.path / "cpu.weight").exists():
                        v2.set_weight(tasks)
                    return v2
                errors.append(f"cgroup2: no cpu controller in {ctl}")
            elif kind == "cgroup1":
                base = root / "cpu"
                if (base / "cpu.cfs_quota_us").exists():
                    v1 = CgroupV1(base / name)
                    v1.set_cores(None)
                    if (v1.path / "cpu.shares").exists():
                        v1.set_weight(tasks)
                    return v1
                errors.append(f"cgroup1: no {base / 'cpu.cfs_quota_us'}")
            elif kind == "threads":
                return ThreadLimiter()
            else:
                raise CpuLimitError(f"expected cgroup2, cgroup1 or threads, got {kind!r}")
        except (OSError, CpuLimitError) as e:
            errors.append(f"{kind}: {e}")
    raise CpuLimitError("no CPU limit mechanism is usable: " + "; ".join(errors))


def read_quota_cores(root: Path | str = "/sys/fs/cgroup", proc_cgroup: Path | str = "/proc/self/cgroup"
                     ) -> tuple[float | None, str | None]:
    """(the tightest CPU quota along this process's cgroup path in cores or None, the file it came from)."""
    root = Path(root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None, None
    best: tuple[float | None, str | None] = (None, None)

    def consider(q: float, where: Path) -> None:
        nonlocal best
        if best[0] is None or q < best[0]:
            best = (q, str(where))

    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, rel = parts
        if ctrls == "":
            base, v2 = root / "unified" if (root / "unified").is_dir() else root, True
        elif "cpu" in ctrls.split(","):
            base, v2 = root / ctrls, False
            if not base.is_dir():
                base = root / "cpu"
        else:
            continue
        rel_parts = [p for p in rel.strip("/").split("/") if p]
        for depth in range(len(rel_parts) + 1):
            d = base.joinpath(*rel_parts[:depth])
            try:
                if v2:
                    f = d / "cpu.max"
                    if not f.exists():
                        continue
                    qs, ps = f.read_text().split()[:2]
                    if qs != "max":
                        consider(int(qs) / int(ps), f)
                else:
                    f = d / "cpu.cfs_quota_us"
                    if not f.exists():
                        continue
                    qi = int(f.read_text().strip())
                    pi = int((d / "cpu.cfs_period_us").read_text().strip())
                    if qi > 0 and pi > 0:
                        consider(qi / pi, f)
            except (OSError, ValueError):
                continue
    return best
