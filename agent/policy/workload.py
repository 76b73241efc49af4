"""Request workloads for the simulator: ``rate=2/s`` (also ``/min``, ``/h``) or ``file=PATH``, then
optional per-request QoS, comma-separated: ``rate=1/s,deadline_ms=2000,min_quality=0.8,tokens=32``.

A rate is a deterministic fluid arrival: an interval of d seconds carries ``rate * d`` requests (a
fraction is fine; energy and quality are request-weighted). A file lists request times in seconds since
the trace began, one number per line (``#`` starts a comment), applied to every model.

QoS keys (what every request of the workload asks, as ``Demand`` in decide()): ``deadline_ms`` (> 0),
``min_quality`` (0..1, the request's own floor), ``tokens`` (generated tokens per causal-lm request;
default 32), ``priority`` (integer). Prefix a key with a model name to set it for that model only:
``smollm2.deadline_ms=1500``.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from pathlib import Path

from agent.errors import InvalidParams
from agent.policy.model import DEMAND_WINDOW_S, Demand

_RATE = re.compile(r"^rate=([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)/(s|min|h)$")
_PER = {"s": 1.0, "min": 60.0, "h": 3600.0}
DEFAULT_TOKENS = 32
_QOS = {"deadline_ms": (1e-3, 1e9), "min_quality": (0.0, 1.0), "tokens": (1, 1e6), "priority": (-1e6, 1e6)}


@dataclass(frozen=True)
class Workload:
    spec: str
    rate_per_s: float | None = None
    times: tuple[float, ...] = ()
    qos: tuple[tuple[str, str, float], ...] = ()    # (model or "", key, value)

    def demand(self, model: str, t: float | None = None) -> Demand:
        """What every request for ``model`` asks (model-specific keys override the general ones), with the
        request rate: a rate workload's own; a file's, the requests of the
        :data:`~agent.policy.model.DEMAND_WINDOW_S` before ``t`` (as the daemon's DemandBook counts them),
        none when ``t`` is not given."""
        vals: dict[str, float] = {}
        for scope in ("", model):
            for m, k, v in self.qos:
                if m == scope:
                    vals[k] = v
        rate = self.rate_per_s
        if rate is None and t is not None:
            rate = self.count(t - DEMAND_WINDOW_S, t) / DEMAND_WINDOW_S
        return Demand(deadline_ms=vals.get("deadline_ms"), min_quality=vals.get("min_quality"),
                      priority=int(vals.get("priority", 0)), tokens=int(vals.get("tokens", DEFAULT_TOKENS)),
                      rate_per_s=rate)

    def count(self, t0: float, t1: float) -> float:
        """Requests arriving in [t0, t1)."""
        if self.rate_per_s is not None:
            return self.rate_per_s * max(0.0, t1 - t0)
        return float(bisect.bisect_left(self.times, t1) - bisect.bisect_left(self.times, t0))


def parse_workload(spec: str) -> Workload:
    full = spec.strip()
    base, *opts = full.split(",")      # (a file path cannot contain a comma)
    qos: list[tuple[str, str, float]] = []
    for o in opts:
        key, eq, val = o.strip().partition("=")
        model, _, name = key.rpartition(".")
        if not eq or name not in _QOS:
            raise InvalidParams(f"--workload: expected QoS key=value with key one of {', '.join(_QOS)} "
                                f"(optionally MODEL.key), got {o.strip()!r}")
        try:
            v = float(val)
        except ValueError:
            raise InvalidParams(f"--workload: {key}: expected a number, got {val!r}") from None
        lo, hi = _QOS[name]
        if not (lo <= v <= hi) or (name in ("tokens", "priority") and v != int(v)):
            raise InvalidParams(f"--workload: {key}: expected "
                                f"{'an integer' if name in ('tokens', 'priority') else 'a number'} "
                                f"in {lo:g}..{hi:g}, got {val}")
        qos.append((model, name, v))
    w = _base_workload(base.strip())
    return Workload(full, w.rate_per_s, w.times, tuple(qos))


def _base_workload(spec: str) -> Workload:
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
