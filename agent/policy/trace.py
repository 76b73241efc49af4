"""Trace input for the simulator, behind a small interface so the sensors' own replayer can stand in.

Assumed file format (JSONL, UTF-8)::

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


def load_trace(path: Path | str) -> Trace:
    """Read a JSONL trace (format above); errors are ConfigError ``file:line: key: expected ..., got ...``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read trace: {e}", file=str(path)) from e
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
    """Write the format above (used by tests and fixture generators)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for t, s in samples:
            d = s.to_dict()
            snap = {k: d[k] for k in _SECTIONS}
            f.write(json.dumps({"t": t, "snapshot": snap}) + "\n")
    return path
