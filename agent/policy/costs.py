"""State-dependent costs: measured latency/energy curves per (variant, device) and the device state they
are read at. Pure: no I/O except :func:`load_costs` / :func:`save_costs` (the zoo's ``costs.toml``).

**Compute state.** :func:`compute_state` turns a Snapshot into ``ComputeState(compute, load)``:

* ``compute`` in (0, 1]: the share of the machine's full-speed CPU the agent may use, the product of
  - the CPU quota of the agent's cgroup, ``cpu.quota_cores / cpu.online`` (1.0 when unknown), and
  - the thermal throttle factor of ``thermal.level`` from :data:`THERMAL_COMPUTE` (the one place that maps
    heat to compute);
* ``load`` in [0, 1]: the share of the machine busy with *other* work,
  ``(cpu.util_percent - cpu.agent_util_percent) / 100``; the controller fills ``agent_util_percent`` live
  from the daemon's process tree (its workers included), so the agent's own inference is not counted as
  competition. Traces give the environment's load only.

There is no battery-saver reading in the Snapshot, so battery state does not change the compute figure
(the policy's low-battery rule selects a profile instead).

**Curves** (measured by ``agent/zoo/build/costs.py`` under a CPU quota of 100/50/25 % and with a competing
load, written to ``<zoo>/<model>/costs.toml``): ``CostCurve.at(state)`` interpolates

* between quota points (latency made non-increasing in compute) linearly in ``1/compute`` (latency of
  CPU-bound work grows as 1/compute); below the lowest measured point latency is extrapolated as
  ``× lowest/compute`` and energy held;
* the competing-load effect as the ratio of the measured load point to the no-load point at full quota,
  applied in proportion ``min(1, load / load_measured)``.

A row with no curve is scaled by the same 1/compute rule from its single measured point (``basis =
"scaled"``), so old zoos still adapt, but only curves are measurements (``basis = "measured"``).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.errors import ManifestError
from agent.sensors.snapshot import Snapshot

COSTS_FILE = "costs.toml"

# The thermal level -> compute factor map, the only place heat turns into CPU speed. "severe" is
# Android's headroom 1.0 (the passive trip): kernels start clocking down there. The shipped thermal trace
# throttles by 10 % per 5 s above the trip down to 40 %; critical and above sit at that floor or below.
THERMAL_COMPUTE: dict[str, float] = {
    "none": 1.0, "light": 1.0, "moderate": 0.85, "severe": 0.6, "critical": 0.4, "emergency": 0.3,
    "shutdown": 0.25,
}
MIN_COMPUTE = 0.02


@dataclass(frozen=True)
class ComputeState:
    compute: float = 1.0       # share of the full machine available to the agent, (0, 1]
    load: float = 0.0          # share of the machine busy with other work, [0, 1]
    quota: float = 1.0         # the quota part of ``compute``
    thermal: float = 1.0       # the thermal part of ``compute``

    def describe(self) -> str:
        return f"compute {self.compute:.2f} (quota {self.quota:.2f} x thermal {self.thermal:.2f}), load {self.load:.2f}"


NOMINAL = ComputeState()


def compute_state(snapshot: Snapshot) -> ComputeState:
    cpu = snapshot.cpu
    quota = 1.0
    q = getattr(cpu, "quota_cores", None)
    if q is not None and cpu.online:
        quota = max(MIN_COMPUTE, min(1.0, q / cpu.online))
    thermal = THERMAL_COMPUTE.get(snapshot.thermal.level or "none", 1.0)
    own = getattr(cpu, "agent_util_percent", None) or 0.0
    load = 0.0 if cpu.util_percent is None else max(0.0, min(1.0, (cpu.util_percent - own) / 100.0))
    return ComputeState(max(MIN_COMPUTE, quota * thermal), load, quota, thermal)


@dataclass(frozen=True)
class CostPoint:
    compute: float                  # the quota during the measurement, as a share of the machine
    load: float                     # share of the machine kept busy by a competing load
    latency_ms_p50: float
    latency_ms_p95: float
    energy_j: float                 # per unit (request, or token for causal-lm)
    cpu_ms: float | None = None     # CPU time per unit (energy = cpu time x per-core power)
    ttft_ms: float | None = None    # causal-lm: time to first token at this point


@dataclass(frozen=True)
class CostCurve:
    points: tuple[CostPoint, ...]
    mechanism: str = ""             # how the quota was applied: cgroup2 | cgroup1 | threads
    meter: str = "model"

    def _base(self) -> list[CostPoint]:
        """The no-load points by compute, latency made non-increasing in compute (less CPU is never
        faster: on a contended machine a point measured at less quota can come out faster by chance; the
        file keeps the raw figures)."""
        pts = sorted((p for p in self.points if p.load == 0), key=lambda p: -p.compute)
        out: list[CostPoint] = []
        for p in pts:
            if out:
                hi = out[-1]
                p = replace(p, latency_ms_p50=max(p.latency_ms_p50, hi.latency_ms_p50),
                            latency_ms_p95=max(p.latency_ms_p95, hi.latency_ms_p95),
                            ttft_ms=max(p.ttft_ms, hi.ttft_ms) if p.ttft_ms is not None and hi.ttft_ms is not None
                            else p.ttft_ms)
            out.append(p)
        return out[::-1]

    def at(self, s: ComputeState) -> CostPoint:
        base = self._base()
        if not base:
            raise ValueError("a cost curve needs at least one point without competing load")
        p = _interp(base, s.compute)
        loaded = [x for x in self.points if x.load > 0]
        full = base[-1]
        if loaded and s.load > 0:
            lp = max(loaded, key=lambda x: x.compute)
            w = min(1.0, s.load / lp.load)

            def mul(a: float | None, b: float | None) -> float:
                return 1.0 + w * ((b / a) - 1.0) if a and b is not None else 1.0

            m_lat, m_95 = mul(full.latency_ms_p50, lp.latency_ms_p50), mul(full.latency_ms_p95, lp.latency_ms_p95)
            m_e = mul(full.energy_j, lp.energy_j)
            p = CostPoint(s.compute, s.load, p.latency_ms_p50 * m_lat, p.latency_ms_p95 * m_95, p.energy_j * m_e,
                          p.cpu_ms * m_e if p.cpu_ms is not None else None,
                          p.ttft_ms * m_lat if p.ttft_ms is not None else None)
        return p


def _interp(base: list[CostPoint], c: float) -> CostPoint:
    cs = [p.compute for p in base]
    if c >= cs[-1]:
        return base[-1]
    if c <= cs[0]:
        lo = base[0]
        k = lo.compute / c
        return CostPoint(c, 0.0, lo.latency_ms_p50 * k, lo.latency_ms_p95 * k, lo.energy_j, lo.cpu_ms,
                         lo.ttft_ms * k if lo.ttft_ms is not None else None)
    i = bisect.bisect_left(cs, c)
    a, b = base[i - 1], base[i]
    if b.compute == c:
        return b
    w = (1 / c - 1 / a.compute) / (1 / b.compute - 1 / a.compute)

    def lin(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else x + w * (y - x)

    return CostPoint(c, 0.0, a.latency_ms_p50 + w * (b.latency_ms_p50 - a.latency_ms_p50),
                     a.latency_ms_p95 + w * (b.latency_ms_p95 - a.latency_ms_p95),
                     a.energy_j + w * (b.energy_j - a.energy_j), lin(a.cpu_ms, b.cpu_ms), lin(a.ttft_ms, b.ttft_ms))


def scaled(latency_p50: float | None, latency_p95: float | None, s: ComputeState) -> tuple[float | None, float | None]:
    """The model-free rule for rows without a curve: CPU-bound latency grows as 1/compute."""
    k = 1.0 / s.compute if s.compute > 0 else math.inf
    return (None if latency_p50 is None else latency_p50 * k, None if latency_p95 is None else latency_p95 * k)


# -- the zoo's costs.toml -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveEntry:
    variant: str
    device: str
    sha256: str | None
    unit: str                     # "request" | "token"
    curve: CostCurve
    info: dict[str, Any] = field(default_factory=dict)


def load_costs(folder: Path) -> dict[tuple[str, str], CurveEntry]:
    """``folder/costs.toml`` as {(variant, device): entry}; {} when the file is absent.

    Raises ManifestError (``file:line: key: ...``) on a malformed file."""
    from agent.tomlfile import Checker, TomlDoc

    path = Path(folder) / COSTS_FILE
    if not path.exists():
        return {}
    doc = TomlDoc.load(path, ManifestError)
    top = Checker(doc, doc.data)
    top.only({"schema", "model", "mechanism", "cores", "cpu_watts", "measured_at", "host", "curves", "note"})
    mech = top.str("mechanism", required=False) or ""
    out: dict[tuple[str, str], CurveEntry] = {}
    for c in top.array_of_tables("curves", required=True):
        c.only({"variant", "device", "sha256", "unit", "meter", "points", "info"})
        pts = []
        for p in c.array_of_tables("points", required=True):
            p.only({"compute", "load", "latency_ms_p50", "latency_ms_p95", "energy_j", "cpu_ms", "ttft_ms"})
            pts.append(CostPoint(
                compute=float(p.num("compute", lo=MIN_COMPUTE, hi=1.0)), load=float(p.num("load", lo=0.0, hi=1.0)),
                latency_ms_p50=float(p.num("latency_ms_p50", lo=0.0)),
                latency_ms_p95=float(p.num("latency_ms_p95", lo=0.0)),
                energy_j=float(p.num("energy_j", lo=0.0)),
                cpu_ms=_opt(p.num("cpu_ms", required=False, lo=0.0)),
                ttft_ms=_opt(p.num("ttft_ms", required=False, lo=0.0))))
        if not any(x.load == 0 for x in pts):
            raise c.error("points", "expected at least one point with load = 0")
        info = c.table_of("info")
        entry = CurveEntry(c.str("variant"), c.str("device", required=False) or "cpu", c.str("sha256", required=False),
                           c.str("unit", required=False, choices=("request", "token")) or "request",
                           CostCurve(tuple(pts), mech, c.str("meter", required=False) or "model"),
                           dict(info.table) if info is not None else {})
        out[(entry.variant, entry.device)] = entry
    return out


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


def save_costs(folder: Path, model: str, entries: list[CurveEntry], meta: dict[str, Any]) -> Path:
    """Write ``folder/costs.toml`` atomically (replacing entries of the same (variant, device))."""
    import os
    import tempfile

    import tomli_w

    old = load_costs(folder)
    for e in entries:
        old[(e.variant, e.device)] = e
    doc: dict[str, Any] = {"schema": 1, "model": model, **{k: v for k, v in meta.items() if v is not None},
                           "curves": []}
    for (_, _), e in sorted(old.items()):
        pts = []
        for p in e.curve.points:
            d = {"compute": round(p.compute, 4), "load": round(p.load, 4), "latency_ms_p50": round(p.latency_ms_p50, 4),
                 "latency_ms_p95": round(p.latency_ms_p95, 4), "energy_j": round(p.energy_j, 7)}
            if p.cpu_ms is not None:
                d["cpu_ms"] = round(p.cpu_ms, 4)
            if p.ttft_ms is not None:
                d["ttft_ms"] = round(p.ttft_ms, 3)
            pts.append(d)
        entry: dict[str, Any] = {"variant": e.variant, "device": e.device, "unit": e.unit, "meter": e.curve.meter,
                                 "points": pts}
        if e.sha256:
            entry["sha256"] = e.sha256
        if e.info:
            entry["info"] = e.info
        doc["curves"].append(entry)
    path = Path(folder) / COSTS_FILE
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".costs-", suffix=".toml")
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump(doc, f)
    os.replace(tmp, path)
    return path
