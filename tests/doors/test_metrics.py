"""Prometheus ``/metrics`` (and the ``metrics`` IPC method) parsed with prometheus-client's own text parser
after real traffic through the doors."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from doors_helpers import LLM, MLP, alive, raw, wait_for

parser = pytest.importorskip("prometheus_client.parser")
pytestmark = pytest.mark.integration

COUNTERS = ["agent_requests", "agent_request_errors", "agent_generated_tokens", "agent_energy_joules", "agent_swaps",
            "agent_http_responses"]
HISTOGRAMS = ["agent_request_latency_seconds", "agent_time_to_first_token_seconds"]
GAUGES = ["agent_decode_tokens_per_second", "agent_build_info", "agent_uptime_seconds", "agent_active_variant",
          "agent_worker_rss_bytes", "agent_queue_depth", "agent_kv_cache_bytes", "agent_prefix_cache_bytes",
          "agent_active_generations", "agent_joules_per_request", "agent_battery_percent",
          "agent_battery_power_watts", "agent_on_ac", "agent_thermal_headroom", "agent_thermal_max_celsius",
          "agent_memory_available_bytes", "agent_memory_pressure_some_avg10", "agent_cpu_load_1m",
          "agent_cpu_util_percent", "agent_thermal_level", "agent_power_watts"]


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def _samples(fams: dict[str, Any], family: str, name: str | None = None, **labels: str) -> list[Any]:
    return [s for s in fams[family].samples if (name is None or s.name == name)
            and all(s.labels.get(k) == v for k, v in labels.items())]


def _one(fams: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    got = _samples(fams, family, name, **labels)
    assert len(got) == 1, (family, labels, fams[family].samples)
    return float(got[0].value)


@pytest.fixture(scope="module")
def traffic(url: str, doors_daemon: Any) -> dict[str, Any]:
    """Three infers, two generations, two bad requests, a swap by pin (and back)."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32",
                                   "data": np.ones(32).tolist()}]}).encode()
    for _ in range(3):
        assert raw(url, "POST", f"/v2/models/{MLP}/infer", body)[0] == 200
    for _ in range(2):
        st, _, _ = raw(url, "POST", "/api/generate", json.dumps({"model": LLM, "prompt": "Hi", "stream": False,
                                                                 "options": {"num_predict": 6}}).encode())
        assert st == 200
    bad = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP64", "data": [0.0] * 16}]})
    assert raw(url, "POST", f"/v2/models/{MLP}/infer", bad.encode())[0] == 400
    assert raw(url, "POST", "/api/chat", json.dumps({"model": LLM, "messages": [{"role": "user", "content": "x"}],
                                                     "options": {"temperature": -1}}).encode())[0] == 400
    with doors_daemon.client() as c:
        c.pin(MLP, "int8")
        c.pin(MLP, "fp32")
        c.unpin(MLP)

    def battery() -> list[Any]:   # the trace sensors deliver a first sample within a second or two
        return _samples(_families(raw(url, "GET", "/metrics")[2].decode()), "agent_battery_percent")

    wait_for(battery)
    st, hdr, text = raw(url, "GET", "/metrics")
    assert st == 200 and hdr["content-type"].startswith("text/plain")
    return _families(text.decode())


def test_every_metric_family_is_present(traffic):
    missing = [f for f in COUNTERS + HISTOGRAMS + GAUGES if f not in traffic]
    assert not missing
    for f in COUNTERS:
        assert traffic[f].type == "counter"
    for f in HISTOGRAMS:
        assert traffic[f].type == "histogram"
    for f in GAUGES:
        assert traffic[f].type == "gauge"


def test_request_counters_and_latency_histograms_follow_the_traffic(traffic):
    infers = _samples(traffic, "agent_requests", "agent_requests_total", model=MLP, kind="infer")
    assert sum(s.value for s in infers) >= 3 and all(s.labels["device"] == "cpu" for s in infers if s.labels["variant"])
    gens = _samples(traffic, "agent_requests", "agent_requests_total", model=LLM, kind="generate")
    assert sum(s.value for s in gens) >= 2
    errs = _samples(traffic, "agent_request_errors", "agent_request_errors_total", model=MLP, error="InvalidParams")
    assert sum(s.value for s in errs) >= 1
    assert sum(s.value for s in _samples(traffic, "agent_request_errors", "agent_request_errors_total", model=LLM)) >= 1
    count = _samples(traffic, "agent_request_latency_seconds", "agent_request_latency_seconds_count", model=MLP)
    total = _samples(traffic, "agent_request_latency_seconds", "agent_request_latency_seconds_sum", model=MLP)
    assert sum(s.value for s in count) >= 3 and 0 < sum(s.value for s in total) < 60
    inf = _samples(traffic, "agent_request_latency_seconds", "agent_request_latency_seconds_bucket", model=MLP,
                   le="+Inf")
    assert sum(s.value for s in inf) == sum(s.value for s in count)
    ttft = _samples(traffic, "agent_time_to_first_token_seconds", "agent_time_to_first_token_seconds_count", model=LLM)
    assert sum(s.value for s in ttft) >= 2


def test_http_responses_are_counted_by_door_and_status_even_when_refused_at_the_door(traffic):
    def n(door: str, code: str) -> float:
        return sum(s.value for s in _samples(traffic, "agent_http_responses", "agent_http_responses_total",
                                             door=door, code=code))

    assert n("kserve", "200") >= 3 and n("kserve", "400") >= 1
    assert n("ollama", "200") >= 2 and n("ollama", "400") >= 1
    assert n("metrics", "200") >= 1


def test_tokens_energy_and_speed_are_sane(traffic):
    toks = _samples(traffic, "agent_generated_tokens", "agent_generated_tokens_total", model=LLM)
    assert sum(s.value for s in toks) >= 12
    tps = _samples(traffic, "agent_decode_tokens_per_second", model=LLM)
    assert tps and all(0 < s.value < 1e6 for s in tps)
    joules = _samples(traffic, "agent_energy_joules", "agent_energy_joules_total")
    assert joules and all(s.value >= 0 for s in joules) and sum(s.value for s in joules) > 0
    jpr = _samples(traffic, "agent_joules_per_request", model=MLP)
    assert jpr and all(s.value >= 0 for s in jpr)


def test_active_variant_swaps_by_reason_and_queue_and_cache_bytes(traffic):
    for model in (MLP, LLM):
        act = _samples(traffic, "agent_active_variant", model=model)
        assert len(act) == 1 and act[0].value == 1 and act[0].labels["device"] == "cpu"
        assert _one(traffic, "agent_queue_depth", model=model) >= 0
        assert _one(traffic, "agent_worker_rss_bytes", model=model) > 1 << 20
    pins = _samples(traffic, "agent_swaps", "agent_swaps_total", model=MLP, reason="pin")
    assert {(s.labels["from_variant"], s.labels["to_variant"]) for s in pins} >= {("fp32", "int8"), ("int8", "fp32")}
    assert _samples(traffic, "agent_swaps", "agent_swaps_total", model=LLM, reason="startup")
    assert _one(traffic, "agent_kv_cache_bytes", model=LLM) == 0   # nothing generating now
    assert _one(traffic, "agent_active_generations", model=LLM) == 0
    assert _one(traffic, "agent_prefix_cache_bytes", model=LLM) > 0   # the generations left prefixes behind


def test_sensor_readings_from_the_trace_are_exposed(traffic):
    assert 0 < _one(traffic, "agent_battery_percent") <= 100
    assert _one(traffic, "agent_on_ac") in (0.0, 1.0)
    assert 20 < _one(traffic, "agent_thermal_max_celsius") < 110
    assert 0 <= _one(traffic, "agent_thermal_headroom") <= 2
    assert _one(traffic, "agent_memory_available_bytes") > 1 << 30
    lvl = _samples(traffic, "agent_thermal_level")
    assert len(lvl) == 1 and lvl[0].labels["level"] in ("none", "light", "moderate", "severe")
    assert _samples(traffic, "agent_power_watts")[0].value > 0


def test_the_same_metrics_come_over_the_unix_socket_and_agentctl(traffic, doors_daemon, url):
    with doors_daemon.client() as c:
        text = c.call("metrics")[0]["text"]
    assert set(_families(text)) == set(traffic)
    out = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(doors_daemon.socket), "metrics"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "agent_requests_total" in out.stdout
    st, _, body = raw(url, "POST", "/metrics", b"{}")
    assert st == 405 and body.decode().startswith("POST /metrics")
    alive(doors_daemon, url)


def test_label_children_stay_bounded_and_counts_survive_the_bound() -> None:
    from agent.http.metrics import MAX_CHILDREN, Metrics

    m = Metrics(None)
    row = {"model": "m", "variant": "v", "device": "cpu", "ok": True}
    m.on_record("requests", row)
    for i in range(MAX_CHILDREN + 10):   # more distinct label sets than the cache keeps
        m.on_record("requests", {**row, "variant": f"v{i}"})
    m.on_record("requests", row)
    assert len(m._children) <= MAX_CHILDREN
    assert m.requests.labels("m", "v", "cpu", "infer")._value.get() == 2
