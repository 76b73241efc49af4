"""Trace input for the simulator, behind a small interface (``TraceSource``: ``.header`` and ``.samples``).

There is one trace format and one reader: the sensors' (``agent.sensors.trace``; header
``"format": "ondevice-agent-sensor-trace"``, written by ``agentctl trace record`` and shipped in
``agent/sensors/traces/``). :func:`load_trace` reads a file with that reader and hands the simulator its
samples; :func:`write_trace` writes that format (the synthetic scenarios use it too). Errors are the
reader's: ConfigError naming ``file:line: key``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.sensors import trace as st
from agent.sensors.snapshot import Snapshot

SENSOR_FORMAT = st.FORMAT


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


def load_trace(path: Path | str) -> Trace:
    """Read a sensor trace with the sensors' reader; errors are ConfigError ``file:line: key: ...``."""
    path = Path(path)
    tr = st.load_trace(path)
    samples = tuple(TraceSample(t, s) for t, s in zip(tr.times, tr.snapshots, strict=True))
    return Trace(header=dict(tr.header), samples=samples, name=str(tr.header.get("name", path.stem)))


def write_trace(path: Path, header: dict[str, Any], samples: Sequence[tuple[float, Snapshot]]) -> Path:
    """Write a sensor trace (``agent.sensors.trace`` format); ``header`` adds free metadata."""
    meta = {k: v for k, v in header.items() if k not in ("format", "version", "interval_s", "source")}
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(samples) if b[0] > a[0]]
    interval = float(header.get("interval_s") or (min(gaps) if gaps else 1.0))
    with open(path, "w", encoding="utf-8") as f:
        st.write_header(f, interval_s=interval, source=str(header.get("source", "policy-synthetic")), **meta)
        f.writelines(json.dumps(st.snapshot_to_record(s, t)) + "\n" for t, s in samples)
    return path
