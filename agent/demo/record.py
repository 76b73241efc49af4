"""What the first-run demo saw: sensor samples, generations, swaps and policy decisions, and the summary.

The recorder is filled from three threads (status poller, workload, event subscriber) and read by the
display; every method takes its lock. Times are seconds since the demo's workload started (``t``);
``trace_t`` is the sensors' own clock (the trace's virtual time when a trace is replayed).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    t: float
    trace_t: float | None
    battery_percent: float | None
    on_ac: bool | None
    thermal_level: str | None
    temp_c: float | None
    mem_available_bytes: int | None
    variant: str | None
    device: str | None
    profile: str | None = None
    rule: str | None = None


@dataclass
class Generation:
    t_start: float
    t_end: float
    variant: str | None
    device: str | None
    tokens: int
    tokens_per_s: float | None
    ttft_ms: float | None
    joules: float | None
    meter: str | None
    text: str
    finish: str | None

    @property
    def joules_per_token(self) -> float | None:
        return self.joules / self.tokens if self.joules is not None and self.tokens else None


@dataclass
class Swap:
    t: float
    trace_t: float | None
    model: str
    from_variant: str | None
    to_variant: str
    device: str
    reason: str
    swap_ms: float | None
    decided_trace_t: float | None = None   # the sensors' clock when the policy decided (None: not a policy swap)


@dataclass
class PolicyChange:
    t: float
    trace_t: float | None
    profile: str | None
    rule: str | None
    changes: str


@dataclass
class VariantSummary:
    variant: str
    device: str
    active_s: float
    requests: int
    tokens: int
    tokens_per_s: float | None      # tokens over generation wall time (prefill included)
    decode_tokens_per_s: float | None  # median of the daemon's decode rate
    joules: float | None
    joules_per_token: float | None


def describe_reason(reason: Any) -> str:
    """One line from a swap event's ``reason`` (policy decisions carry profile, rule and explanation)."""
    if not isinstance(reason, dict):
        return str(reason or "")
    why = str(reason.get("why") or "")
    if why == "policy":
        parts = [f"profile {reason.get('profile')}"]
        if reason.get("rule"):
            parts.insert(0, f"rule {reason['rule']}")
        elif reason.get("hold"):
            parts.insert(0, "held by an app")
        expl = reason.get("explanation")
        return "policy: " + ", ".join(parts) + (f" ({expl})" if expl else "")
    if why == "pin":
        return f"pinned by pid {reason.get('pid')}" if reason.get("pid") else "pinned"
    extra = {k: v for k, v in reason.items() if k not in ("why", "readings")}
    return why + (f" {extra}" if extra else "")


def _median(xs: list[float]) -> float | None:
    s = sorted(xs)
    if not s:
        return None
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


class Recorder:
    def __init__(self, model: str, clock: Any = time.monotonic) -> None:
        self.model = model
        self._clock = clock
        self.t0 = clock()
        self._lock = threading.Lock()
        self.samples: list[Sample] = []
        self.generations: list[Generation] = []
        self.swaps: list[Swap] = []
        self.policy: list[PolicyChange] = []
        self.errors: list[str] = []
        self.last_text = ""

    def now(self) -> float:
        return self._clock() - self.t0

    # -- writers (any thread) -----------------------------------------------------------------------
    def add_status(self, st: dict[str, Any]) -> Sample:
        sens = st.get("sensors") or {}
        pol = st.get("policy") or {}
        act = ((st.get("models") or {}).get(self.model) or {}).get("active") or {}
        s = Sample(self.now(), sens.get("mono_s"), sens.get("battery_percent"), sens.get("power_on_ac"),
                   sens.get("thermal_level"), sens.get("thermal_max_c"), sens.get("memory_available_bytes"),
                   act.get("variant"), act.get("device"), pol.get("profile"), pol.get("rule"))
        with self._lock:
            self.samples.append(s)
        return s

    def add_generation(self, g: Generation) -> None:
        with self._lock:
            self.generations.append(g)
            self.last_text = g.text

    def add_event(self, ev: dict[str, Any]) -> Swap | PolicyChange | None:
        kind = ev.get("event")
        trace_t = self.samples[-1].trace_t if self.samples else None
        if kind == "swap" and ev.get("model") == self.model:
            reason = ev.get("reason")
            decided = reason.get("decided_t") if isinstance(reason, dict) else None
            sw = Swap(self.now(), trace_t, str(ev.get("model")), ev.get("from"), str(ev.get("to")),
                      str(ev.get("device") or "cpu"), describe_reason(reason), ev.get("swap_ms"),
                      float(decided) if isinstance(decided, int | float) else None)
            with self._lock:
                self.swaps.append(sw)
            return sw
        if kind == "decision":
            t = ev.get("t")
            pc = PolicyChange(self.now(), float(t) if isinstance(t, int | float) else trace_t, ev.get("profile"),
                              ev.get("rule"), str(ev.get("changes") or ""))
            with self._lock:
                last = self.policy[-1] if self.policy else None
                if last is None or (last.profile, last.rule) != (pc.profile, pc.rule) or pc.changes:
                    self.policy.append(pc)
                    return pc
            return None
        if kind in ("load_failed", "worker_died"):
            with self._lock:
                self.errors.append(f"{kind}: {ev.get('variant')} {ev.get('error') or ''}".strip())
        return None

    # -- readers ------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[list[Sample], list[Generation], list[Swap], list[PolicyChange]]:
        with self._lock:
            return list(self.samples), list(self.generations), list(self.swaps), list(self.policy)

    def summary(self) -> list[VariantSummary]:
        samples, gens, _, _ = self.snapshot()
        active: dict[tuple[str, str], float] = {}
        for a, b in itertools.pairwise(samples):
            if a.variant:
                key = (a.variant, a.device or "cpu")
                active[key] = active.get(key, 0.0) + (b.t - a.t)
        keys = list(dict.fromkeys([*active, *((g.variant or "?", g.device or "cpu") for g in gens)]))
        out = []
        for key in keys:
            gs = [g for g in gens if (g.variant or "?", g.device or "cpu") == key]
            toks = sum(g.tokens for g in gs)
            wall = sum(g.t_end - g.t_start for g in gs)
            js = [g.joules for g in gs if g.joules is not None]
            joules = sum(js) if js else None
            jtoks = sum(g.tokens for g in gs if g.joules is not None)
            out.append(VariantSummary(
                key[0], key[1], round(active.get(key, 0.0), 2), len(gs), toks,
                toks / wall if wall > 0 and toks else None,
                _median([g.tokens_per_s for g in gs if g.tokens_per_s]),
                joules, joules / jtoks if joules is not None and jtoks else None))
        return out

    def to_json(self) -> dict[str, Any]:
        samples, gens, swaps, policy = self.snapshot()
        return {"model": self.model, "duration_s": round(self.now(), 2),
                "variants": [asdict(v) for v in self.summary()],
                "swaps": [asdict(s) for s in swaps], "policy": [asdict(p) for p in policy],
                "generations": [{**asdict(g), "joules_per_token": g.joules_per_token} for g in gens],
                "samples": [asdict(s) for s in samples], "errors": list(self.errors)}

    def write(self, out: Path) -> Path:
        path = out / "summary.json"
        path.write_text(json.dumps(self.to_json(), indent=1, default=str), encoding="utf-8")
        return path
