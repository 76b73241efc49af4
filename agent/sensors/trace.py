"""Sensor traces: a JSONL file of snapshots, recorded live and replayed on a virtual clock.

Format (UTF-8, one JSON object per line)::

    {"format": "ondevice-agent-sensor-trace", "version": 1, "interval_s": 1.0, "source": "live",
     "started_wall": 1795600000.0, "note": "how it was made", ...}          <- header (line 1)
    {"t": 0.0, "battery": {...}, "power": {...}, "thermal": {...}, "memory": {...}, "cpu": {...},
     "energy": {...}, "reasons": {"battery.percent": "why"}}                <- one snapshot per line

``t`` is seconds since the first sample, non-decreasing. Each section holds the fields of the matching
``Snapshot`` section (``agent/sensors/snapshot.py``); a missing field or section takes the Snapshot's
default (``null``, ``false``, ``0`` or empty), so writers may leave nulls out; an unknown key is an
error. Header keys other than ``format``/``version`` are free metadata (``note``, ``synthesized``,
``generator``, ``model``); ``started_wall`` gives replayed snapshots their wall-clock time.

Replay holds each sample until the next one's ``t`` (no interpolation), so the value seen at virtual
time ``v`` is exactly the last sample with ``t <= v``. The virtual time is ``(clock() - start) × speed``;
the clock is injected so tests step it by hand. In replayed snapshots ``mono_s`` is the virtual time
(so time-based rules see trace time) and ``wall_s`` is ``started_wall + v``.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from agent.errors import ConfigError
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

FORMAT = "ondevice-agent-sensor-trace"
VERSION = 1
SHIPPED_DIR = Path(__file__).with_name("traces")   # the synthesized traces shipped as package data
SECTIONS: dict[str, type] = {"battery": BatteryState, "power": PowerState, "thermal": ThermalState,
                             "memory": MemoryState, "cpu": CpuState, "energy": EnergyState}


# ---------------------------------------------------------------- snapshot <-> JSON line

def snapshot_to_record(snap: Snapshot, t: float, *, compact: bool = True) -> dict[str, Any]:
    """One trace line's object; ``compact`` leaves out null fields and empty sections (read as null)."""
    d = snap.to_dict()
    out: dict[str, Any] = {"t": round(t, 3)}
    for key in SECTIONS:
        sec = d[key]
        if compact:
            sec = {k: v for k, v in sec.items() if v is not None and v != [] and v != ()}
            if not sec:
                continue
        out[key] = sec
    if d["reasons"] or not compact:
        out["reasons"] = d["reasons"]
    return out


class _Bad(Exception):
    def __init__(self, key: str, msg: str) -> None:
        super().__init__(msg)
        self.key, self.msg = key, msg


def _typed(key: str, value: Any, ftype: Any) -> Any:
    """Check one JSON value against a Snapshot field's annotation (as a string)."""
    t = str(ftype)
    if value is None:
        if "None" in t:
            return None
        raise _Bad(key, "expected a value, got null")
    if t.startswith("bool"):
        if not isinstance(value, bool):
            raise _Bad(key, f"expected true/false, got {value!r}")
        return value
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(key, f"expected an integer, got {value!r}")
        return value
    if t.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(key, f"expected a number, got {value!r}")
        return float(value)
    if t.startswith("str"):
        if not isinstance(value, str):
            raise _Bad(key, f"expected a string, got {value!r}")
        return value
    if t == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise _Bad(key, f"expected a list of strings, got {value!r}")
        return tuple(value)
    if t.startswith("tuple[tuple[str, tuple[int"):
        try:
            return tuple((str(name), tuple(int(c) for c in cpus)) for name, cpus in value)
        except (TypeError, ValueError):
            raise _Bad(key, f"expected [[class, [cpu, ...]], ...], got {value!r}") from None
    if t.startswith("tuple[ThermalZone"):
        if not isinstance(value, list):
            raise _Bad(key, f"expected a list of zones, got {value!r}")
        return tuple(_section(f"{key}[{i}]", z, ThermalZone) for i, z in enumerate(value))
    if t.startswith("tuple[tuple[str, float]"):
        try:
            return tuple((str(k), float(c)) for k, c in value)
        except (TypeError, ValueError):
            raise _Bad(key, f"expected [[trip type, °C], ...], got {value!r}") from None
    raise _Bad(key, f"unsupported field type {t}")  # pragma: no cover - guards future fields


def _section(key: str, value: Any, cls: type) -> Any:
    if not isinstance(value, dict):
        raise _Bad(key, f"expected an object, got {type(value).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _Bad(f"{key}.{unknown[0]}", f"unknown field (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _typed(f"{key}.{name}", value[name], f.type)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Bad(f"{key}.{name}", "missing")
    return cls(**kwargs)


def snapshot_from_record(rec: dict[str, Any], *, mono_s: float, wall_s: float, source: str) -> Snapshot:
    """Rebuild a Snapshot from one trace line's object; raises _Bad on the first wrong key."""
    unknown = sorted(set(rec) - set(SECTIONS) - {"t", "reasons"})
    if unknown:
        raise _Bad(unknown[0], "unknown key")
    parts = {k: _section(k, rec[k], cls) for k, cls in SECTIONS.items() if k in rec}
    reasons = rec.get("reasons", {})
    if not isinstance(reasons, dict) or not all(isinstance(v, str) for v in reasons.values()):
        raise _Bad("reasons", "expected an object of field -> reason strings")
    return Snapshot(mono_s=mono_s, wall_s=wall_s, source=source, reasons=tuple(reasons.items()), **parts)


# ---------------------------------------------------------------- loading

def shipped(name: str) -> Path:
    """Path of a shipped trace: ``laptop_workday``, ``thermal_sustained_load``, ``memory_pressure_bursts``."""
    return SHIPPED_DIR / (name if name.endswith(".jsonl") else name + ".jsonl")


@dataclasses.dataclass(frozen=True)
class Trace:
    path: Path
    header: dict[str, Any]
    times: tuple[float, ...]
    snapshots: tuple[Snapshot, ...]   # mono_s = t, wall_s = started_wall + t

    @property
    def duration_s(self) -> float:
        return self.times[-1] if self.times else 0.0


def load_trace(path: str | Path) -> Trace:
    """Read and validate a whole trace; errors name ``file:line: key``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read sensor trace: {e}", file=str(p)) from e
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError("empty sensor trace: expected a header line", file=str(p), line=1)
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as e:
        raise ConfigError(f"header is not JSON: {e.msg}", file=str(p), line=1) from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ConfigError(f"expected a header with format {FORMAT!r}", file=str(p), line=1, key="format")
    if header.get("version") != VERSION:
        raise ConfigError(f"expected version {VERSION}, got {header.get('version')!r}",
                          file=str(p), line=1, key="version")
    start_wall = header.get("started_wall", 0.0)
    if isinstance(start_wall, bool) or not isinstance(start_wall, (int, float)):
        raise ConfigError(f"expected a number, got {start_wall!r}", file=str(p), line=1, key="started_wall")
    interval = header.get("interval_s", 1.0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not (
            math.isfinite(interval) and interval > 0):
        raise ConfigError(f"expected a positive number, got {interval!r}", file=str(p), line=1, key="interval_s")
    times: list[float] = []
    snaps: list[Snapshot] = []
    source = f"trace:{p.name}"
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"not JSON: {e.msg}", file=str(p), line=lineno) from e
        if not isinstance(rec, dict):
            raise ConfigError("expected a JSON object", file=str(p), line=lineno)
        t = rec.get("t")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"expected a non-negative number, got {t!r}", file=str(p), line=lineno, key="t")
        if times and t < times[-1]:
            raise ConfigError(f"t goes backwards ({t} after {times[-1]})", file=str(p), line=lineno, key="t")
        try:
            snaps.append(snapshot_from_record(rec, mono_s=float(t), wall_s=float(start_wall) + t,
                                              source=source))
        except _Bad as b:
            raise ConfigError(b.msg, file=str(p), line=lineno, key=b.key) from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad value: {e}", file=str(p), line=lineno) from None
        times.append(float(t))
    if not snaps:
        raise ConfigError("sensor trace has a header but no samples", file=str(p), line=len(lines))
    return Trace(p, header, tuple(times), tuple(snaps))


# ---------------------------------------------------------------- replay

class TraceReplay:
    """A SensorSource replaying a trace on a scaled clock (``speed`` trace seconds per clock second)."""

    def __init__(self, file: str | Path | Trace, speed: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, loop: bool = False) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ConfigError(f"speed: expected a positive number, got {speed!r}", key="sensors")
        self.trace = file if isinstance(file, Trace) else load_trace(file)
        self.speed, self.loop, self._clock = float(speed), loop, clock
        self._t0 = clock()
        self._closed = False
        # one loop lasts the trace plus one sample interval, so the last sample is held that long
        t = self.trace.times
        step = float(self.trace.header.get("interval_s") or (t[-1] - t[-2] if len(t) > 1 else 1.0) or 1.0)
        self.period_s = t[-1] + step

    def virtual_time(self) -> float:
        return (self._clock() - self._t0) * self.speed

    def rewind(self) -> None:
        """Start the trace again from its first sample now (agentd calls this once its models are
        loaded, so the time spent loading does not eat the start of the trace)."""
        self._t0 = self._clock()

    @property
    def finished(self) -> bool:
        return not self.loop and self.virtual_time() >= self.trace.duration_s

    def at(self, v: float) -> Snapshot:
        """The snapshot seen at virtual time ``v`` (seconds since the trace started)."""
        tr = self.trace
        loops, pos = 0, v
        if self.loop and v >= self.period_s:
            loops = int(v // self.period_s)
            pos = v - loops * self.period_s
        # 1 µs of slack so a sample due exactly now is not lost to float rounding of the scaled clock
        i = max(0, bisect.bisect_right(tr.times, pos + 1e-6) - 1)
        snap = tr.snapshots[i]
        energy = snap.energy
        if loops and energy.joules_total is not None:
            first = tr.snapshots[0].energy.joules_total or 0.0
            last = tr.snapshots[-1].energy.joules_total or first
            energy = dataclasses.replace(energy, joules_total=energy.joules_total + loops * (last - first))
        start_wall = float(tr.header.get("started_wall", 0.0))
        return dataclasses.replace(snap, mono_s=v, wall_s=start_wall + v, energy=energy)

    def read(self) -> Snapshot:
        return self.at(self.virtual_time())

    def close(self) -> None:
        self._closed = True


# ---------------------------------------------------------------- recording

def write_header(f: IO[str], *, interval_s: float, source: str, **meta: Any) -> None:
    header = {"format": FORMAT, "version": VERSION, "interval_s": interval_s, "source": source, **meta}
    f.write(json.dumps(header, sort_keys=False) + "\n")


def record(source: Any, duration: float, out: str | Path, interval: float = 1.0, *,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
           note: str = "recorded with agentctl trace record") -> int:
    """Read ``source`` every ``interval`` s for ``duration`` s into ``out``; returns samples written.

    Written to ``OUT.partial`` line by line (flushed) and renamed at the end, so an interrupted
    recording leaves a valid ``.partial`` trace and never a half-written ``OUT``.
    """
    if not duration > 0 or not interval > 0:
        raise ConfigError(f"duration and interval must be positive, got {duration!r}, {interval!r}")
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    n = 0
    start = clock()
    first_mono: float | None = None
    with open(tmp, "w", encoding="utf-8") as f:
        write_header(f, interval_s=interval, source=getattr(source, "name", type(source).__name__),
                     started_wall=time.time(), note=note, synthesized=False)
        while True:
            tick = start + n * interval
            if tick - start > duration + 1e-9:
                break
            delay = tick - clock()
            if delay > 0:
                sleep(delay)
            snap = source.read()
            if first_mono is None:
                first_mono = snap.mono_s
            f.write(json.dumps(snapshot_to_record(snap, snap.mono_s - first_mono)) + "\n")
            f.flush()
            n += 1
    os.replace(tmp, out)
    return n
