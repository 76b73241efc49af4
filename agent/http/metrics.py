"""Prometheus metrics of agentd (``prometheus-client``), served at ``GET /metrics`` on the HTTP listener
and by the ``metrics`` IPC method (``agentctl metrics``).

Two kinds of figures:

- **observed** as they happen, from the telemetry rows agentd already writes (``Telemetry.listeners``):
  requests and errors by model/variant/device, latency and time-to-first-token histograms, generated
  tokens, decode tokens/s of the last generation, joules, swaps by reason; and (from the HTTP
  listener's middleware) every HTTP response by door and status code;
- **read at scrape time** from the daemon's state (:class:`StateCollector`): the active variant per
  model, worker memory, queue depth, KV and prefix-cache bytes, average J/request, sensor readings.
  A reading that is unknown (no battery, no thermal zone) has no sample, never a made-up value.

This module does not import starlette: the IPC method works without the ``llm`` extra.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("agent.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0)
# flat sensor field -> (metric name, help)
SENSOR_GAUGES = {
    "battery_percent": ("agent_battery_percent", "Battery charge in percent."),
    "battery_power_w": ("agent_battery_power_watts", "Battery charge (+) or discharge power in watts."),
    "power_on_ac": ("agent_on_ac", "1 when on AC power, 0 on battery."),
    "thermal_headroom": ("agent_thermal_headroom", "Thermal headroom (1.0 = severe)."),
    "thermal_max_c": ("agent_thermal_max_celsius", "Hottest thermal zone in degrees Celsius."),
    "memory_available_bytes": ("agent_memory_available_bytes", "Memory available to new allocations."),
    "memory_psi_some_avg10": ("agent_memory_pressure_some_avg10", "Memory PSI 'some' 10 s average (percent)."),
    "cpu_load_1m": ("agent_cpu_load_1m", "1-minute load average."),
    "cpu_util_percent": ("agent_cpu_util_percent", "CPU utilisation in percent."),
}


MAX_CHILDREN = 4096   # labelled series whose children Metrics keeps at hand


def _s(v: Any) -> str:
    return "" if v is None else str(v)


class Metrics:
    """The registry of one daemon. ``on_record`` is a telemetry listener; ``render`` returns the text."""

    def __init__(self, agent_app: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.app = agent_app
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        mvd = ["model", "variant", "device"]
        self.requests = Counter("agent_requests", "Requests served or failed.", [*mvd, "kind"], registry=r)
        self.errors = Counter("agent_request_errors", "Failed requests by error type.", [*mvd, "kind", "error"],
                              registry=r)
        self.latency = Histogram("agent_request_latency_seconds", "Request latency inside agentd.", [*mvd, "kind"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("agent_time_to_first_token_seconds", "Time to the first generated token.", mvd,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("agent_generated_tokens", "Tokens generated.", mvd, registry=r)
        self.tps = Gauge("agent_decode_tokens_per_second", "Decode speed of the last generation.", mvd, registry=r)
        self.joules = Counter("agent_energy_joules", "Energy attributed to requests.", [*mvd, "meter"], registry=r)
        self.swaps = Counter("agent_swaps", "Variant swaps by reason.", ["model", "from_variant", "to_variant",
                                                                       "device", "reason"], registry=r)
        self.http = Counter("agent_http_responses", "HTTP responses by door and status code.", ["door", "code"],
                            registry=r)
        self.llm: dict[str, dict[str, Any] | None] = {}
        # every observed row touches labelled series (a request 2-6): their children are looked up here, not
        # through prometheus-client's labels() (a lock, a validation and a dict lookup each: ~1/6 of a cache hit)
        self._children: dict[tuple[Any, ...], Any] = {}
        r.register(StateCollector(self))

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        c = self._children.get(key)
        if c is None:
            if len(self._children) >= MAX_CHILDREN:   # label values come from our own rows, but stay bounded
                self._children.clear()
            c = self._children[key] = metric.labels(*labels)
        return c

    # -- observed -----------------------------------------------------------------------------------
    def on_record(self, table: str, row: dict[str, Any]) -> None:
        """Telemetry listener: never raises (a metrics fault must not fail a request)."""
        try:
            if table == "requests":
                self._request(row)
            elif table == "swaps":
                reason = row.get("reason") or {}
                why = (reason.get("rule") or reason.get("why")) if isinstance(reason, dict) else reason
                self._child(self.swaps, _s(row.get("model")), _s(row.get("from")), _s(row.get("to")),
                            _s(row.get("device")), _s(why) or "unknown").inc()
        except Exception:
            log.exception("metrics: cannot observe a %s row", table)

    def http_response(self, door: str, status: int) -> None:
        self._child(self.http, door, str(status)).inc()

    def _request(self, row: dict[str, Any]) -> None:
        lab = (_s(row.get("model")), _s(row.get("variant")), _s(row.get("device")))
        kind = _s(row.get("kind") or "infer")
        n = int(row.get("count") or 1)   # a lane row: `count` requests, with means per request
        self._child(self.requests, *lab, kind).inc(n)
        if not row.get("ok"):
            self._child(self.errors, *lab, kind, _s(row.get("error")) or "error").inc()
            return
        if row.get("latency_ms") is not None:
            hist = self._child(self.latency, *lab, kind)
            for _ in range(min(n, 4096)):   # the mean once per request (at most 4096 per worker report; the
                # requests counter above counts every one)
                hist.observe(float(row["latency_ms"]) / 1e3)
        if row.get("joules") is not None:
            self._child(self.joules, *lab, _s(row.get("meter"))).inc(max(0.0, float(row["joules"]) * n))
        if kind == "generate":
            if row.get("tokens"):
                self._child(self.tokens, *lab).inc(int(row["tokens"]))
            if row.get("ttft_ms") is not None:
                self._child(self.ttft, *lab).observe(float(row["ttft_ms"]) / 1e3)
            if row.get("tokens_per_s") is not None:
                self._child(self.tps, *lab).set(float(row["tokens_per_s"]))

    # -- rendering ----------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Ask the LLM workers for their KV / prefix-cache figures (async; done before a scrape)."""
        rt = self.app.runtime
        if rt is None:
            return
        for name, slot in list(rt.slots.items()):
            if slot.manifest.kind != "causal-lm":
                continue
            try:
                self.llm[name] = await rt.llm_stats(name)
            except Exception:   # noqa: BLE001 - a worker mid-swap: no figure this time
                self.llm[name] = None

    async def render(self) -> bytes:
        from prometheus_client import generate_latest

        await self.refresh()
        return bytes(generate_latest(self.registry))


class StateCollector:
    """Gauges read from the daemon's state at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from agent import __version__
        from agent.sensors.snapshot import THERMAL_LEVELS

        app = self.m.app
        info = GaugeMetricFamily("agent_build_info", "agentd version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        up = GaugeMetricFamily("agent_uptime_seconds", "Seconds since agentd started.")
        up.add_metric([], time.time() - app.started)
        yield up

        active = GaugeMetricFamily("agent_active_variant", "1 for the variant and device serving each model.",
                                   labels=["model", "variant", "device"])
        rss = GaugeMetricFamily("agent_worker_rss_bytes", "Resident memory of each model's active worker.",
                                labels=["model", "variant", "device"])
        queue = GaugeMetricFamily("agent_queue_depth", "Requests in flight per model (active and draining workers).",
                                  labels=["model"])
        rt = app.runtime
        for name, slot in sorted((rt.slots if rt is not None else {}).items()):
            h = slot.active
            handles = ([h] if h is not None else []) + list(slot.draining)
            queue.add_metric([name], sum(x.inflight for x in handles))
            if h is not None and h.variant:
                active.add_metric([name, h.variant, _s(h.device)], 1)
                mem = h.info.get("rss_bytes") if isinstance(getattr(h, "info", None), dict) else None
                if mem is not None:
                    rss.add_metric([name, h.variant, _s(h.device)], float(mem))
        yield from (active, rss, queue)

        kv = GaugeMetricFamily("agent_kv_cache_bytes", "KV-cache bytes of generations in flight.", labels=["model"])
        pc = GaugeMetricFamily("agent_prefix_cache_bytes", "Bytes held by the prefix cache.", labels=["model"])
        gens = GaugeMetricFamily("agent_active_generations", "Generations in flight.", labels=["model"])
        for name, st in sorted(self.m.llm.items()):
            if not st:
                continue
            kv.add_metric([name], float(st.get("live_kv_bytes") or 0))
            pc.add_metric([name], float((st.get("prefix_cache") or {}).get("bytes") or 0))
            gens.add_metric([name], float(st.get("active_generations") or 0))
        yield from (kv, pc, gens)

        jpr = GaugeMetricFamily("agent_joules_per_request", "Average energy per request.", labels=["model", "variant"])
        ctl = app.controller
        for key, e in sorted((ctl.energy_status() if ctl is not None else {}).items()):
            model, _, variant = key.partition("/")
            if e.get("joules_per_request") is not None:
                jpr.add_metric([model, variant], float(e["joules_per_request"]))
        yield jpr

        sensors = (ctl.sensors_status() if ctl is not None else None) or {}
        for field, (name, help_) in SENSOR_GAUGES.items():
            g = GaugeMetricFamily(name, help_)
            v = sensors.get(field)
            if isinstance(v, bool):
                g.add_metric([], 1.0 if v else 0.0)
            elif isinstance(v, (int, float)):
                g.add_metric([], float(v))
            yield g
        lvl = GaugeMetricFamily("agent_thermal_level", "Thermal level index (0 none ... 6 shutdown).",
                                labels=["level"])
        if sensors.get("thermal_level") in THERMAL_LEVELS:
            lvl.add_metric([sensors["thermal_level"]], THERMAL_LEVELS.index(sensors["thermal_level"]))
        yield lvl
        pw = GaugeMetricFamily("agent_power_watts", "System power draw from the energy meter.", labels=["meter"])
        if isinstance(sensors.get("energy_power_w"), (int, float)):
            pw.add_metric([_s(sensors.get("energy_meter"))], float(sensors["energy_power_w"]))
        yield pw


def metrics_route(agent_app: Any) -> Any:
    """``GET /metrics`` for the HTTP listener."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        return Response(await agent_app.metrics.render(), media_type=CONTENT_TYPE)

    return Route("/metrics", endpoint, methods=["GET"])
