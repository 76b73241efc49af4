"""Measuring a new placement of a model against a local baseline in the same run.

Used by the split and remote builders: both contenders are timed in interleaved rounds (A B A B …, at
least five), so machine noise hits both alike; the result has medians, p95 and the same-round ratio to
the baseline, the CPU time this process spent per inference (what the energy model charges locally),
and how far the outputs are from the baseline's on the same inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Timing:
    p50_ms: float
    p95_ms: float
    cpu_s: float              # this process's CPU seconds per inference
    runs: int


@dataclass(frozen=True)
class Comparison:
    candidate: Timing
    baseline: Timing
    ratio_p50: float          # median over rounds of (candidate round median / baseline round median)
    max_abs_diff: float
    rel_err: float            # ||candidate - baseline|| / ||baseline|| over all outputs and feeds

    def to_info(self) -> dict[str, Any]:
        return {"runs": self.candidate.runs, "baseline_p50_ms": round(self.baseline.p50_ms, 5),
                "ratio_p50_vs_baseline": round(self.ratio_p50, 4), "max_abs_diff": float(self.max_abs_diff),
                "rel_err": float(self.rel_err), "cpu_ms_per_inference": round(self.candidate.cpu_s * 1e3, 5)}


def feeds_for(sess: Any, n: int = 8, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """``n`` deterministic random feeds from a session's signature (symbolic dims = ``batch``)."""
    from agent.zoo.manifest import ORT_TYPES

    rng = np.random.default_rng(1234)
    out = []
    for _ in range(n):
        feed = {}
        for i in sess.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else batch for d in (i.shape or [])]
            dt = np.dtype(ORT_TYPES.get(i.type, "float32"))
            if dt.kind == "f":
                feed[i.name] = rng.standard_normal(shape).astype(dt)
            elif dt.kind == "b":
                feed[i.name] = rng.random(shape) > 0.5
            else:
                feed[i.name] = rng.integers(0, 2, shape).astype(dt)
        out.append(feed)
    return out


def compare(candidate: Any, baseline: Any, feeds: list[dict[str, np.ndarray]], *, rounds: int = 7,
            runs_per_round: int = 20) -> Comparison:
    """Time ``candidate`` and ``baseline`` (objects with ``run(names, feed)``) in interleaved rounds."""
    rounds = max(5, rounds)
    names = [o.name for o in baseline.get_outputs()]
    lat: dict[str, list[float]] = {"c": [], "b": []}
    cpu: dict[str, float] = {"c": 0.0, "b": 0.0}
    ratios = []
    for sess in (candidate, baseline):      # warm-up, untimed
        for f in feeds[:3]:
            sess.run(names, f)
    for r in range(rounds):
        med = {}
        for key, sess in (("c", candidate), ("b", baseline)) if r % 2 == 0 else (("b", baseline), ("c", candidate)):
            xs = []
            c0 = time.process_time()
            for i in range(runs_per_round):
                t0 = time.perf_counter()
                sess.run(names, feeds[i % len(feeds)])
                xs.append((time.perf_counter() - t0) * 1e3)
            cpu[key] += time.process_time() - c0
            lat[key].extend(xs)
            med[key] = float(np.median(xs))
        ratios.append(med["c"] / med["b"] if med["b"] > 0 else float("inf"))
    n = rounds * runs_per_round
    diff, num, den = 0.0, 0.0, 0.0
    for f in feeds:
        for a, b in zip(candidate.run(names, f), baseline.run(names, f), strict=True):
            a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
            diff = max(diff, float(np.max(np.abs(a64 - b64))) if a64.size else 0.0)
            num += float(np.sum((a64 - b64) ** 2))
            den += float(np.sum(b64 ** 2))

    def timing(key: str) -> Timing:
        xs = np.array(lat[key])
        return Timing(float(np.percentile(xs, 50)), float(np.percentile(xs, 95)), cpu[key] / n, n)

    return Comparison(timing("c"), timing("b"), float(np.median(ratios)), diff,
                      (num ** 0.5) / (den ** 0.5) if den > 0 else (0.0 if num == 0 else float("inf")))


def _vm_hwm() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(req: dict[str, Any]) -> dict[str, Any]:
    """In this (fresh) process: open the candidate exactly as a worker would (``open_variant``), note the
    peak RSS, then open the baseline on the CPU EP and compare them."""
    from pathlib import Path

    from agent.runtime.devices import providers_ran
    from agent.runtime.session import open_session, open_variant

    t0 = time.perf_counter()
    cand, info = open_variant(req["candidate"])
    load_ms = (time.perf_counter() - t0) * 1e3
    feeds = feeds_for(cand, int(req.get("feeds", 8)))
    for f in feeds[:3]:
        cand.run(None, f)
    peak = _vm_hwm()
    client = getattr(cand, "client", None)
    if client is not None:
        client.bytes_sent = client.bytes_received = 0
    base, _ = open_session(Path(req["baseline"]), "cpu", threads=req.get("threads"))
    c = compare(cand, base, feeds, rounds=int(req.get("rounds", 7)), runs_per_round=int(req.get("runs", 20)))
    out = {"load_ms": load_ms, "peak_rss": peak, "p50": c.candidate.p50_ms, "p95": c.candidate.p95_ms,
           "cpu_s": c.candidate.cpu_s, "info": c.to_info(), "providers": providers_ran(info),
           "device": info.get("device"), "parts": info.get("parts"), "rel_err": c.rel_err}
    if client is not None:   # remote: bytes on the wire per inference (for a radio's cost)
        calls = 3 + c.candidate.runs + len(feeds)   # compare()'s warm-ups + timed + quality runs
        out["bytes_per_inference"] = (client.bytes_sent + client.bytes_received) / max(1, calls)
    return out


def run_measurement(req: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """:func:`measure` in its own process (honest peak RSS; a crashing EP takes only that process)."""
    from agent.zoo.build.tensor_kind import run_worker

    return run_worker(req, timeout_s, module="agent.zoo.build.compare")


def main() -> int:
    from agent.zoo.build.measure_worker import serve_json

    return serve_json(measure)


if __name__ == "__main__":
    raise SystemExit(main())
