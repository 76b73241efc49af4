"""Warm standby through a real agentd serving the tiny causal-lm (real ONNX workers): the policy keeps int8
warm next to fp32 while requests carry deadlines; when a replayed trace cuts the CPU quota to a quarter,
a deadline request that fp32 would miss is served by the standby (the reply names int8) while fp32 stays
active, each routing and the standby load logged with its reason; a pinned model gets no routing.

The tiny zoo's manifest gets measured figures (fp32 100 ms/token, int8 20 ms/token, no cost curves: latency
scales as 1/compute), so at full CPU fp32 needs 100 + 4 x 100 = 500 ms for 4 tokens, and 2000 ms at a
quarter, where int8 needs 480 ms: a 1000 ms deadline separates them."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tinyzoo import MODEL, make_tiny_llm_zoo

from agent.errors import DeadlineInfeasible

pytestmark = pytest.mark.integration

# dwell keeps fp32 active for the whole test, so the routing (not a swap) is what serves int8
POLICY = """
schema = 1
default = "q"
[switching]
min_dwell_s = 3600
[profiles.q]
objective = "max_quality"
min_quality = 0.99
standby = true
"""


def _trace(path: Path, full_s: int, total_s: int) -> None:
    with open(path, "w") as f:
        f.write(json.dumps({"format": "ondevice-agent-sensor-trace", "version": 1, "interval_s": 1.0,
                            "source": "test"}) + "\n")
        for t in range(total_s):
            cpu: dict[str, Any] = {"online": 4, "util_percent": 0.0, "load_1m": 0.1}
            if t >= full_s:
                cpu["quota_cores"] = 1.0
            f.write(json.dumps({"t": float(t), "cpu": cpu, "memory": {"total_bytes": 8 << 30,
                                                                       "available_bytes": 6 << 30}}) + "\n")


def test_a_deadline_request_fp32_would_miss_at_the_cut_is_served_by_the_warm_int8(tmp_path: Path) -> None:
    from agent.zoo.manifest import Measurement, Quality, load_manifest, save_manifest
    from tests.conftest import start_daemon

    folder = make_tiny_llm_zoo(tmp_path / "zoo")
    m = load_manifest(folder)
    figs = {"fp32": (1.0, 100.0), "int8": (0.9, 20.0)}
    vs = [dataclasses.replace(v, quality=Quality("agreement", figs[v.id][0], figs[v.id][0]), measurements=(
        Measurement(latency_ms_p50=figs[v.id][1], latency_ms_p95=figs[v.id][1], ttft_ms=figs[v.id][1],
                    peak_rss_bytes=50_000_000, load_ms=50.0, meter="model"),)) for v in m.variants]
    save_manifest(dataclasses.replace(m, variants=tuple(vs)))
    full_s = 20
    _trace(tmp_path / "trace.jsonl", full_s, 600)
    (tmp_path / "p.toml").write_text(POLICY)
    t_start = time.monotonic()
    d = start_daemon(tmp_path / "zoo", tmp_path, "--threads", "1", "--spare-workers", "0",
                     "--sensors", f"trace:{tmp_path / 'trace.jsonl'}", "--policy", str(tmp_path / "p.toml"),
                     "--sample-interval", "0.25")
    try:
        with d.client() as c:
            # at full CPU: fp32 serves the deadline and the policy loads int8 as the standby
            first = c.complete(MODEL, "hello", max_tokens=4, deadline_ms=1000)
            assert first.variant == "fp32"
            end = time.monotonic() + 30
            while c.status()["models"][MODEL]["standby"] is None:
                assert time.monotonic() < end, "no standby was loaded"
                time.sleep(0.1)
            st = c.status()["models"][MODEL]
            assert st["standby"]["variant"] == "int8" and st["active"]["variant"] == "fp32"
            assert st["standby"]["pid"] != st["active"]["pid"]
            assert time.monotonic() - t_start < full_s, "the machine was too slow to reach the cut in order"
            # a pin: the standby is stopped and a deadline fp32 misses is refused, not routed
            while time.monotonic() - t_start < full_s + 2:
                time.sleep(0.1)
            c.pin(MODEL, "fp32")
            end = time.monotonic() + 30
            while c.status()["models"][MODEL]["standby"] is not None:
                assert time.monotonic() < end, "a pin did not stop the standby"
                time.sleep(0.1)
            with pytest.raises(DeadlineInfeasible, match="loaded fp32@cpu"):
                c.complete(MODEL, "hello", max_tokens=4, deadline_ms=1000)
            c.unpin(MODEL)
            # after the cut (quota 1 of 4 cores): fp32 ~2000 ms misses 1000, the standby's ~480 ms meets it
            served = []
            end = time.monotonic() + 30
            while len(served) < 3:
                assert time.monotonic() < end, f"not routed to the standby: {served}"
                try:
                    r = c.complete(MODEL, "hello", max_tokens=4, deadline_ms=1000)
                    assert r.result.get("standby") is True
                    served.append(r.variant)
                except DeadlineInfeasible:   # until the standby is back after the unpin
                    time.sleep(0.1)
            assert served == ["int8"] * 3
            assert c.status()["models"][MODEL]["active"]["variant"] == "fp32"   # no swap: dwell
            # a request whose floor the standby does not meet is refused at once
            with pytest.raises(DeadlineInfeasible):
                c.complete(MODEL, "hello", max_tokens=4, deadline_ms=1000, min_quality=0.95)
            fails = [r for r in c.history("1h", ["requests"])["requests"]
                     if r.get("kind") == "generate" and not r.get("ok") and r.get("error") != "DeadlineInfeasible"]
            assert fails == []
    finally:
        assert d.stop() == 0
    lines = [json.loads(ln) for ln in d.log_text().splitlines() if ln.startswith("{")]
    routes = [ln for ln in lines if ln.get("msg") == "route standby"]
    loads = [ln for ln in lines if ln.get("msg") == "standby"]
    assert len(routes) >= 3 and all("misses" in r["reason"] and r["to"] == "int8@cpu" for r in routes)
    assert loads and all("deadline 1000 ms" in ln["reason"] for ln in loads)
    assert any(ln.get("msg") == "standby stop" and ln.get("reason") == "pinned" for ln in lines)
