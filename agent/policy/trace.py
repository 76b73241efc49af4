"""Trace input for the simulator, behind a small interface (``TraceSource``: ``.header`` and ``.samples``).

Sensor traces (header ``"format": "ondevice-agent-sensor-trace"``, written by ``agentctl trace record``
and shipped in ``agent/sensors/traces/``) are read with the sensors' own strict reader,
``agent.sensors.trace.load_trace``; :func:`write_trace` writes that format. Other JSONL files are read
leniently in this shape::

    {"format": "ondevice-agent-trace", "version": 1, "name": "discharge", "interval_s": 5}   <- header
    {"t": 0.0, "snapshot": {"battery": {"percent": 97.0, ...}, "power": {...}, "thermal": {...}, ...}}
    {"t": 5.0, "snapshot": {...}}

Line 1 is a JSON object (the header: free-form metadata; it must not itself be a sample). Every other
non-blank line is one sample: ``t`` (also accepted: ``t_s``, ``offset_s``) is seconds since the trace
began, non-decreasing; ``snapshot`` is ``Snapshot.to_dict()``'s shape (sections battery, power, thermal,
memory, cpu, energy; missing sections or fields are unknown = null). The sections may also sit at the
top level of the line instead of under ``snapshot``. Unknown fields inside a section are ignored (newer
writers may add fields); a known field of the wrong type is an error naming ``file:line: key``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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

_SECTIONS: dict[str, type] = {"battery": BatteryState, "power": PowerState, "thermal": ThermalState,
                              "memory": MemoryState, "cpu": CpuState, "energy": EnergyState}
_TIME_KEYS = ("t", "t_s", "offset_s")
SENSOR_FORMAT = "ondevice-agent-sensor-trace"


@dataclass(frozen=True)
class TraceSample:
    t: float
    snapshot: Snapshot


class TraceSource(Protocol):
    """What the simulator needs: metadata and time-ordered samples."""

    @property
    def header(self) -> dict[str, Any]: ...

    @property
    def samples(self) -> Sequence[TraceSample]: ...


@dataclass(frozen=True)
class Trace:
    header: dict[str, Any]
    samples: tuple[TraceSample, ...]
    name: str = "trace"


def _section(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise TypeError(f"{where}: expected an object, got {type(raw).__name__}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw or raw[f.name] is None:
            continue
        v = raw[f.name]
        want = str(f.type)
        if "float" in want and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = float(v)
        elif "bool" in want and isinstance(v, bool) or want.startswith("int") and isinstance(v, int) and not isinstance(v, bool) or "str" in want and "tuple" not in want and isinstance(v, str):
            pass
        elif f.name == "zones" and isinstance(v, list):
            v = tuple(ThermalZone(str(z.get("name", "")), str(z.get("type", "")), z.get("temp_c"),
                                  tuple((str(a), float(b)) for a, b in z.get("trips", ())))
                      for z in v if isinstance(z, dict))
        elif "tuple" in want and isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        else:
            raise TypeError(f"{where}.{f.name}: expected {want}, got {type(v).__name__} {v!r}")
        kwargs[f.name] = v
    return cls(**kwargs)


def snapshot_from_dict(d: dict[str, Any], t: float, source: str, where: str = "snapshot") -> Snapshot:
    sections = {name: _section(cls, d.get(name), f"{where}.{name}") for name, cls in _SECTIONS.items()}
    mono = d.get("mono_s", t)
    wall = d.get("wall_s", t)
    return Snapshot(mono_s=float(mono), wall_s=float(wall), source=source, **sections)


def _sensor_trace(path: Path) -> Trace:
    from agent.sensors import trace as st

    tr = st.load_trace(path)
    samples = tuple(TraceSample(t, s) for t, s in zip(tr.times, tr.snapshots, strict=True))
    return Trace(header=dict(tr.header), samples=samples, name=str(tr.header.get("name", path.stem)))


def load_trace(path: Path | str) -> Trace:
    """Read a JSONL trace (format above); errors are ConfigError ``file:line: key: expected ..., got ...``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read trace: {e}", file=str(path)) from e
    try:
        first = json.loads(lines[0]) if lines else None
    except json.JSONDecodeError:
        first = None
    if isinstance(first, dict) and first.get("format") == SENSOR_FORMAT:
        return _sensor_trace(path)
    header: dict[str, Any] | None = None
    samples: list[TraceSample] = []
    last_t = float("-inf")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"expected a JSON object, got invalid JSON ({e.msg})", file=str(path), line=lineno) from e
        if not isinstance(obj, dict):
            raise ConfigError(f"expected a JSON object, got {type(obj).__name__}", file=str(path), line=lineno)
        if header is None:
            if "snapshot" in obj or any(k in obj for k in _TIME_KEYS):
                raise ConfigError("expected a header object first, got a sample", file=str(path), line=lineno)
            header = obj
            continue
        key = next((k for k in _TIME_KEYS if k in obj), None)
        if key is None:
            raise ConfigError("expected a time offset in seconds, got none", file=str(path), line=lineno, key="t")
        t = obj[key]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < last_t:
            raise ConfigError(f"expected a number >= {last_t if last_t > float('-inf') else 0}, got {t!r}",
                              file=str(path), line=lineno, key=key)
        last_t = float(t)
        snap = obj.get("snapshot", obj)
        if not isinstance(snap, dict):
            raise ConfigError(f"expected an object, got {type(snap).__name__}", file=str(path), line=lineno,
                              key="snapshot")
        try:
            s = snapshot_from_dict(snap, float(t), f"trace:{path.name}")
        except (ValueError, TypeError) as e:
            msg = str(e)
            k, _, rest = msg.partition(": ")
            raise ConfigError(rest or msg, file=str(path), line=lineno, key=k if rest else None) from None
        samples.append(TraceSample(float(t), s))
    if header is None or not samples:
        raise ConfigError("expected a header line and at least one sample, got "
                          f"{'nothing' if header is None else 'no samples'}", file=str(path))
    return Trace(header=header, samples=tuple(samples), name=str(header.get("name", path.stem)))


def write_trace(path: Path, header: dict[str, Any], samples: Sequence[tuple[float, Snapshot]]) -> Path:
    """Write a sensor trace (``agent.sensors.trace`` format); ``header`` adds free metadata."""
    from agent.sensors import trace as st

    meta = {k: v for k, v in header.items() if k not in ("format", "version", "interval_s", "source")}
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(samples) if b[0] > a[0]]
    interval = float(header.get("interval_s") or (min(gaps) if gaps else 1.0))
    with open(path, "w", encoding="utf-8") as f:
        st.write_header(f, interval_s=interval, source=str(header.get("source", "policy-synthetic")), **meta)
        f.writelines(json.dumps(st.snapshot_to_record(s, t)) + "\n" for t, s in samples)
    return path
