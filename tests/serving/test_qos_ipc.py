"""Per-request QoS through a real agentd: deadline admission, priority, measured CPU time and the meter.

The tiny causal-lm zoo gets measured figures written into its manifest (a slow fp32, a faster int8), so the
policy table has rows and the daemon can predict request latency."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tinyzoo import MODEL, make_tiny_llm_zoo

from agent.errors import DeadlineInfeasible, InvalidParams


@pytest.fixture(scope="module")
def qos_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from agent.zoo.manifest import Measurement, Quality, load_manifest, save_manifest
    from tests.conftest import start_daemon

    zoo = tmp_path_factory.mktemp("qos-zoo")
    folder = make_tiny_llm_zoo(zoo)
    m = load_manifest(folder)
    figs = {"fp32": (1.0, 400.0, 2000.0, 0.5), "int8": (0.999, 100.0, 500.0, 0.2)}   # q, ms/token, ttft, J
    vs = []
    for v in m.variants:
        q, ms, ttft, j = figs[v.id]
        vs.append(dataclasses.replace(v, quality=Quality("perplexity", 1.0, q), measurements=(Measurement(
            latency_ms_p50=ms, latency_ms_p95=ms, ttft_ms=ttft, energy_j=j, peak_rss_bytes=50_000_000, load_ms=50.0,
            meter="model"),)))
    save_manifest(dataclasses.replace(m, variants=tuple(vs)))
    d = start_daemon(zoo, tmp_path_factory.mktemp("qos-daemon"), "--threads", "1")
    yield d
    d.stop()


def test_a_deadline_no_variant_can_meet_is_refused_at_once_naming_the_fastest_feasible_latency(qos_daemon: Any) -> None:
    with qos_daemon.client() as c:
        t = time.perf_counter()
        with pytest.raises(DeadlineInfeasible) as ei:
            c.complete(MODEL, "hello", max_tokens=4, deadline_ms=50)
        assert time.perf_counter() - t < 5.0
    msg = str(ei.value)
    assert "cannot be met by any variant" in msg and "fastest feasible latency is int8@cpu ~900 ms" in msg
    assert ei.value.data["fastest_ms"] == pytest.approx(900.0) and ei.value.data["deadline_ms"] == 50


def test_a_request_the_loaded_variant_cannot_make_names_the_faster_one(qos_daemon: Any) -> None:
    with qos_daemon.client() as c:
        c.pin(MODEL, "fp32")
        try:
            with pytest.raises(DeadlineInfeasible, match=r"loaded fp32@cpu .*fastest feasible: int8@cpu ~900 ms"):
                c.complete(MODEL, "hello", max_tokens=4, deadline_ms=1000)
        finally:
            c.unpin(MODEL)


def test_a_feasible_deadline_is_served_with_cpu_time_and_the_meter_named_in_status(qos_daemon: Any) -> None:
    with qos_daemon.client() as c:
        final = c.complete(MODEL, "hello", max_tokens=4, deadline_ms=600_000, priority=5, min_quality=0.5)
        res = final.result
        assert res["deadline_met"] is True and res["cpu_s"] > 0 and res["joules_per_token"] > 0
        energy = c.status()["energy"][f"{MODEL}/{res['variant']}"]
    assert energy["tokens"] >= 4 and energy["joules_per_token"] > 0
    assert energy["meter"].startswith("model (worker CPU time")


def test_the_recorded_cpu_time_of_a_generation_is_the_workers_measurement(qos_daemon: Any) -> None:
    with qos_daemon.client() as c:
        res = c.complete(MODEL, "cpu time", max_tokens=4, deadline_ms=600_000).result
        rows = [r for r in c.history("1h", ["requests"])["requests"]
                if r.get("kind") == "generate" and r.get("ok") and r.get("cpu_s") == res["cpu_s"]]
    # one row carries the worker's own figure (not the wall time standing in for it)
    assert res["cpu_s"] > 0 and rows, res
    assert all(r["latency_ms"] != pytest.approx(r["cpu_s"] * 1e3, rel=1e-9) for r in rows)


@pytest.mark.parametrize("params, msg", [
    ({"deadline_ms": -5}, "deadline_ms: expected a number > 0"),
    ({"min_quality": 2}, "min_quality: expected a number in 0..1"),
    ({"priority": "high"}, "priority: expected an integer"),
])
def test_bad_qos_values_are_invalid_params(qos_daemon: Any, params: dict[str, Any], msg: str) -> None:
    with qos_daemon.client() as c:
        with pytest.raises(InvalidParams, match=msg):
            c.complete(MODEL, "hello", max_tokens=2, **params)
        assert c.complete(MODEL, "hello", max_tokens=2).finish_reason is not None
