"""Request workloads for the simulator: ``rate=2/s`` (also ``/min``, ``/h``) or ``file=PATH``.

A rate is a deterministic fluid arrival: an interval of d seconds carries ``rate * d`` requests (a
fraction is fine; energy and quality are request-weighted). A file lists request times in seconds since
the trace began, one number per line (``#`` starts a comment), applied to every model.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InvalidParams

_RATE = re.compile(r"^rate=([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)/(s|min|h)$")
_PER = {"s": 1.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Workload:
    spec: str
    rate_per_s: float | None = None
    times: tuple[float, ...] = ()

    def count(self, t0: float, t1: float) -> float:
        """Requests arriving in [t0, t1)."""
        if self.rate_per_s is not None:
            return self.rate_per_s * max(0.0, t1 - t0)
        return float(bisect.bisect_left(self.times, t1) - bisect.bisect_left(self.times, t0))


def parse_workload(spec: str) -> Workload:
    spec = spec.strip()
    m = _RATE.match(spec)
    if m:
        rate = float(m.group(1)) / _PER[m.group(2)]
        if rate <= 0:
            raise InvalidParams(f"--workload: expected a rate above 0, got {spec!r}")
        return Workload(spec, rate_per_s=rate)
    if spec.startswith("file="):
        path = Path(spec[5:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidParams(f"--workload: cannot read {path}: {e}") from e
        times: list[float] = []
        for i, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                v = float(text)
            except ValueError:
                raise InvalidParams(f"{path}:{i}: expected a time in seconds, got {text!r}") from None
            if v < 0 or math.isnan(v):
                raise InvalidParams(f"{path}:{i}: expected a time >= 0, got {text!r}")
            times.append(v)
        return Workload(spec, times=tuple(sorted(times)))
    raise InvalidParams(f"--workload: expected 'rate=N/s' (or /min, /h) or 'file=PATH', got {spec!r}")
