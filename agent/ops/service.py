"""The operations of agentd, one method each, for every front end (IPC handlers, the HTTP doors, SIGHUP).

    front end ──params──► records.*Request.parse ──► Ops.<op> ──► typed record ──wire()──► reply
                                                       │
             Runtime (what is loaded) · PolicyEngine (pins, holds) · Controller (QoS, energy) · Telemetry

State kept here is the daemon's own (zoo read, reload outcome); runtime state is changed only through
``Runtime`` methods, pins and holds only through the ``PolicyEngine``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from agent import __version__
from agent.config import Config
from agent.control import QOS_KEYS, Controller, QoS
from agent.errors import AgentError, ConfigError, InvalidParams, NotFound
from agent.http.metrics import Metrics
from agent.ops.records import (
    ActiveInfo,
    Caller,
    DaemonInfo,
    GenerateReply,
    GenerateRequest,
    HoldInfo,
    InferReply,
    InferRequest,
    ModelInfo,
    ReleaseResult,
    ReloadResult,
    StatusReport,
    SwapResult,
    UnpinResult,
    failed_row,
    generate_row,
    infer_row,
)
from agent.policy.engine import PolicyEngine
from agent.runtime.manager import Runtime
from agent.runtime.slots import InferResult
from agent.telemetry import Telemetry
from agent.zoo.manifest import Manifest, empty_zoo_hint, load_zoo

log = logging.getLogger("agent.app")

OnToken = Callable[[dict[str, Any]], None]
InferDone = Callable[[InferReply | None, AgentError | None], None]


class Ops:
    def __init__(self, cfg: Config, telemetry: Telemetry, broadcast: Callable[[dict[str, Any]], None]) -> None:
        self.cfg = cfg
        self.started = time.time()
        self.telemetry = telemetry
        self.broadcast = broadcast                  # an event to every subscribed IPC client
        self.manifests: dict[str, Manifest] = {}
        self.zoo_errors: dict[str, str] = {}
        self.reload_error: str | None = None
        self.last_reload: float | None = None
        self.runtime: Runtime | None = None
        self.engine: PolicyEngine | None = None
        self.controller: Controller | None = None
        self.http_url: str | None = None
        self._leases: dict[int, tuple[int, int, Callable[[], None]]] = {}   # conn -> (client pid, worker pid, close)
        self.ready = asyncio.Event()
        self.metrics = Metrics(self)   # Prometheus, fed by telemetry rows (GET /metrics, IPC metrics)
        telemetry.listeners.append(self.metrics.on_record)

    def rt(self) -> Runtime:
        if self.runtime is None:
            raise AgentError("runtime not started")
        return self.runtime

    def now(self) -> float:
        return self.controller.now() if self.controller is not None else time.monotonic()

    # -- events -------------------------------------------------------------------------------------
    def on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "lanes":   # requests served on lanes since the worker's last report (not broadcast)
            self._lane_requests(ev)
            return
        if kind in ("lanes_closed", "worker_died"):   # that worker's lanes ended: so do their leases
            for _, _, close in [v for v in self._leases.values() if v[1] == ev.get("pid")]:
                close()
            if kind == "lanes_closed":
                return
        if kind == "swap":
            self.telemetry.record("swaps", {k: v for k, v in ev.items() if k != "event"})
        else:
            self.telemetry.record("events", {"kind": kind, "detail": ev})
        if kind == "fallback" and ev.get("ok") and self.engine is not None:   # the policy learns what serves
            self.engine.set_current(ev["model"], ev["to"], ev["device"], self.now())
        self.broadcast({"jsonrpc": "2.0", "method": "event", "params": {"ts": time.time(), **ev}})

    def on_disconnect(self, conn_id: int) -> None:
        """A client left: the holds its connection owned end with it (and the lane it leased)."""
        self._leases.pop(conn_id, None)
        if self.engine is None:
            return
        owner = Caller(-1, -1, conn_id).owner
        gone = [h for h in self.engine.holds() if h.owner == owner]
        self.engine.release_owner(owner)
        for h in gone:
            self.on_event({"event": "hold_released", "cookie": h.cookie, "profile": h.profile,
                           "why": "client disconnected"})

    def holds_lane(self, pid: int) -> bool:
        """Whether process ``pid`` holds a lane lease: its connections are then not idle (never evicted
        to make room, though their own traffic goes over the lane)."""
        return any(client == pid for client, _, _ in self._leases.values())

    def is_held(self, conn_id: int) -> bool:
        owner = Caller(-1, -1, conn_id).owner
        return self.engine is not None and any(h.owner == owner for h in self.engine.holds())

    # -- start --------------------------------------------------------------------------------------
    def read_zoo(self) -> None:
        self.manifests, self.zoo_errors = load_zoo(self.cfg.zoo)
        for name, err in self.zoo_errors.items():
            log.error("zoo model skipped", extra={"fields": {"model": name, "error": err}})
        if not self.manifests:
            hint = empty_zoo_hint(self.cfg.zoo)
            if self.cfg.require_models:
                raise ConfigError(f"no loadable model: {hint}")
            log.warning("no loadable model; serving nothing until a reload finds one",
                        extra={"fields": {"zoo": str(self.cfg.zoo), "hint": hint}})

    async def load_initial(self, initial: dict[str, tuple[str, str]]) -> None:
        """Load each model's first variant; where the policy's choice fails, fall back to the reference."""
        rt = self.rt()
        for name, err in (await rt.start(initial)).items():
            log.error("initial load failed", extra={"fields": {"model": name, "error": err}})
            if initial[name][0] != self.manifests[name].reference:
                try:
                    await rt.fall_back(name, "startup fallback", err)
                except AgentError as e2:
                    log.error("reference load failed", extra={"fields": {"model": name, "error": str(e2)}})

    # -- requests -----------------------------------------------------------------------------------
    async def infer(self, req: InferRequest, payload: memoryview) -> InferReply:
        t0 = time.perf_counter()
        try:
            self._admit(req.model, req.qos)
            r = await self.rt().infer(req.model, req.inputs, payload, req.deadline_s)
        except AgentError as e:
            self._failed(req.model, t0, e)
            raise
        return self._served(req.model, t0, req.qos, r)

    def infer_nowait(self, req: InferRequest, payload: memoryview, done: InferDone) -> bool:
        """``infer`` without a task: ``done`` is called from the worker's (or the cache's) callback. False:
        declined (the caller runs :meth:`infer`)."""
        t0 = time.perf_counter()

        def finished(r: InferResult | None, err: AgentError | None) -> None:
            if err is not None or r is None:
                self._failed(req.model, t0, err)
                done(None, err)
                return
            try:
                rep = self._served(req.model, t0, req.qos, r)
            except AgentError as e:
                done(None, e)
                return
            done(rep, None)
        try:
            self._admit(req.model, req.qos)
            return self.rt().infer_nowait(req.model, req.inputs, payload, finished)
        except AgentError as e:
            self._failed(req.model, t0, e)
            raise

    def open_lane(self, model: str, conn_id: int, pid: int,
                  close: Callable[[], None]) -> tuple[list[int], dict[str, Any]]:
        """A direct lane to the model's active worker (agent.runtime.lanes): fds for the client. The
        connection that asked (``conn_id``) is the lane's *lease*: the client keeps it open while it
        uses the lane, so the lane counts as one connection of its uid (the access limits); it is
        closed (``close``) when the worker's lanes end (a swap, a death)."""
        fds, info = self.rt().open_lane(model)
        self._leases[conn_id] = (pid, int(info.get("pid") or -1), close)
        return fds, info

    def _lane_requests(self, ev: dict[str, Any]) -> None:
        """One telemetry row per worker report: how many lane requests, their CPU time and energy (lane
        requests carry no QoS hints, so, like hint-less framed requests, they add nothing to the demand)."""
        model, variant, n = ev["model"], ev["variant"], int(ev["requests"])
        if n <= 0:
            return
        ran = n - int(ev["hits"])
        joules, meter = (self.controller.attribute(model, variant, ev["cpu_s"], ev["run_ms"] / 1e3, requests=ran)
                         if self.controller is not None and variant and ran > 0 else (None, None))
        win = ev.get("window") or {}
        self.telemetry.record("requests", {
            "model": model, "variant": variant, "device": ev["device"], "ok": True, "kind": "lane", "count": n,
            "latency_ms": win.get("mean_ms"), "latency_p95_ms": win.get("p95_ms"), "run_ms": ev["run_ms"] / n,
            "cpu_s": ev["cpu_s"] / n, "joules": joules / n if joules is not None else None, "meter": meter,
            "cached": int(ev["hits"]), "batches": ev.get("batches", 0), "batched": ev.get("batched_requests", 0)})

    def _admit(self, model: str, qos: QoS, tokens: int | None = None, waited_ms: float = 0.0,
               hint: bool = True) -> None:
        """QoS hints to the policy; refuses at once a deadline the loaded variant cannot meet."""
        if self.controller is None or qos.empty:
            return
        if hint:
            self.controller.hint(model, {k: getattr(qos, k) for k in QOS_KEYS if getattr(qos, k) is not None})
        a = self.rt().slot(model).active
        self.controller.admit(model, qos, a.variant if a else None, a.device if a else None, tokens, waited_ms)

    def _route(self, model: str, qos: QoS, tokens: int, waited_ms: float) -> bool:
        """Admission of a deadline generation: True = serve it from the warm standby (Controller.route)."""
        if self.controller is None:
            return False
        rt = self.rt()
        a, sb = rt.slot(model).active, rt.standby_of(model)
        key = (a.variant, a.device) if a is not None and a.variant and a.device else None
        skey = (sb.variant, sb.device) if sb is not None and sb.variant and sb.device else None
        return self.controller.route(model, qos, key, skey, tokens, waited_ms)

    def _failed(self, model: str, t0: float, err: AgentError | None, kind: str | None = None) -> None:
        self.telemetry.record("requests", failed_row(model, type(err).__name__, (time.perf_counter() - t0) * 1e3,
                                                     kind))

    def _served(self, model: str, t0: float, qos: QoS, r: InferResult) -> InferReply:
        server_ms = (time.perf_counter() - t0) * 1e3
        joules, meter = (self.controller.attribute(model, r.variant, r.cpu_s, r.run_ms / 1e3)
                         if self.controller and not r.cached else (None, None))
        rep = InferReply(model, r, server_ms, joules, meter, qos.deadline_ms)
        self.telemetry.record("requests", infer_row(rep))
        return rep

    async def generate(self, req: GenerateRequest, on_token: OnToken) -> GenerateReply:
        """One generation: passes QoS hints to the policy, streams each token to ``on_token({text, index,
        variant, device})``, records telemetry and energy."""
        t0 = time.perf_counter()
        model, qos = req.model, req.qos
        gate = None
        if self.controller is not None and not qos.empty:
            self.controller.hint(model, {k: getattr(qos, k) for k in QOS_KEYS if getattr(qos, k) is not None}
                                 | ({"tokens": req.tokens} if req.tokens else {}))
            gate = self.controller.gate(model)
            await gate.enter(qos, t0)
        try:
            standby = False
            if qos.deadline_ms is not None:
                standby = self._route(model, qos, req.tokens or 16, (time.perf_counter() - t0) * 1e3)
            res = await self.rt().generate(model, req.worker, on_token, req.deadline_s, standby=standby)
        except asyncio.CancelledError:
            self.telemetry.record("requests", failed_row(model, "cancelled", (time.perf_counter() - t0) * 1e3,
                                                         "generate"))
            raise
        except AgentError as e:
            self._failed(model, t0, e, "generate")
            raise
        finally:
            if gate is not None:
                gate.leave()
        wall = time.perf_counter() - t0
        # the worker measures the CPU time of the generation (process CPU time, shared out among concurrent
        # generations); a reply without it is unknown CPU (None: no energy attributed), never a guess
        cpu_s = res.get("cpu_s")
        if not isinstance(cpu_s, (int, float)) or isinstance(cpu_s, bool) or not cpu_s >= 0:
            cpu_s = None
        toks = int((res.get("usage") or {}).get("completion_tokens") or 0)
        joules, meter = (self.controller.attribute(model, res["variant"], float(cpu_s), wall, toks)
                         if self.controller and cpu_s is not None else (None, None))
        rep = GenerateReply(res, joules, meter, None if qos.deadline_ms is None else wall * 1e3 <= qos.deadline_ms)
        self.telemetry.record("requests", generate_row(req, rep, wall, cpu_s))
        return rep

    # -- management ---------------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [ModelInfo.of(m) for _, m in sorted(self.manifests.items())]

    def active(self, model: str) -> ActiveInfo | None:
        """What serves ``model`` now (None: unknown model, or no live worker)."""
        try:
            h = self.rt().slot(model).active
        except AgentError:
            return None
        if h is None or not h.alive or not h.variant:
            return None
        rss = h.info.get("rss_bytes") if isinstance(h.info, dict) else None
        return ActiveInfo(h.variant, h.device, h.pid, int(rss) if isinstance(rss, (int, float)) else None)

    def holds(self) -> list[HoldInfo]:
        return [HoldInfo(h.cookie, h.profile, h.reason, h.pid, h.created)
                for h in (self.engine.holds() if self.engine is not None else ())]

    async def status(self) -> StatusReport:
        pins = self.engine.pins() if self.engine is not None else {}
        models = self.rt().status(pins) if self.runtime else {}
        for name, m in self.manifests.items():
            if m.kind == "causal-lm" and name in models:
                try:
                    models[name]["llm"] = await self.rt().llm_stats(name)
                except AgentError:
                    models[name]["llm"] = None
        ctl = self.controller
        return StatusReport(
            DaemonInfo(os.getpid(), __version__, round(time.time() - self.started, 1), str(self.cfg.socket),
                       str(self.cfg.zoo), str(self.cfg.state_dir), self.reload_error, self.last_reload, self.http_url),
            models, self.zoo_errors, self.engine.status() if self.engine else None,
            ctl.sensors_status() if ctl else None, ctl.energy_status() if ctl else {}, self.holds())

    async def pin(self, model: str, variant: str, device: str | None, caller: Caller) -> SwapResult:
        """Swap ``model`` to ``variant`` and keep it there: the policy does not move a pinned model."""
        v = self.rt().slot(model).manifest.variant(variant)   # NotFound before anything changes
        # no device = where the variant runs by nature (cpu; remote/split for such variants)
        res = SwapResult.of(await self.rt().swap(model, variant, device or v.placement,
                                                 {"why": "pin", "uid": caller.uid, "pid": caller.pid}))
        if self.engine is not None:
            self.engine.pin_loaded(model, variant, res.device)
            self.engine.set_current(model, variant, res.device)
        return res

    def unpin(self, model: str) -> UnpinResult:
        name = self.rt().slot(model).manifest.name
        was = self.engine.pins().get(name) if self.engine is not None else None
        if self.engine is not None:
            self.engine.unpin(name)
        return UnpinResult(name, was, self._dwell_remaining([name]))

    def _dwell_remaining(self, models: list[str]) -> float | None:
        """When the policy may act on ``models`` again (None: no policy engine)."""
        if self.engine is None or self.controller is None:
            return None
        return round(self.engine.dwell_remaining(models, self.controller.now()), 1)

    def hold(self, profile: str, reason: str, caller: Caller) -> HoldInfo:
        if not isinstance(reason, str) or len(reason) > 1000:
            raise InvalidParams("reason must be a string of at most 1000 characters")
        if self.engine is None:
            raise InvalidParams("no policy engine")
        cookie = secrets.token_hex(8)
        h = self.engine.hold(cookie, profile, caller.owner, self.now(), reason=reason, pid=caller.pid,
                             uid=caller.uid)
        self.on_event({"event": "hold", "cookie": cookie, "profile": profile, "reason": reason, "pid": caller.pid})
        return HoldInfo(h.cookie, h.profile, h.reason, h.pid, h.created)

    def release(self, cookie: str, caller: Caller) -> ReleaseResult:
        h = next((h for h in self.engine.holds() if h.cookie == cookie), None) if self.engine else None
        if self.engine is None or h is None or (h.uid != caller.uid and caller.uid != 0):
            raise NotFound(f"no hold with cookie {cookie!r}")
        self.engine.release(cookie)
        self.on_event({"event": "hold_released", "cookie": cookie, "profile": h.profile, "why": "released"})
        return ReleaseResult(cookie, self._dwell_remaining(sorted(self.manifests)))

    async def reload(self) -> ReloadResult:
        """Reload the policy (validate first, keep the old one on error) and re-read the zoo."""
        if self.engine is not None and self.cfg.policy:
            try:
                self.engine.reload(self.cfg.policy)
                self.reload_error = None
            except AgentError as e:
                self.reload_error = str(e)
                log.error("policy reload failed; keeping the old policy", extra={"fields": {"error": str(e)}})
        manifests, errors = load_zoo(self.cfg.zoo)
        rt = self.rt()
        added = [name for name, m in manifests.items() if rt.put_model(m)]
        self.manifests = {**self.manifests, **manifests}
        self.zoo_errors = errors
        for name in added:
            try:
                await rt.swap(name, self.manifests[name].reference, "cpu", {"why": "reload: new model"})
            except AgentError as e:
                self.zoo_errors[name] = str(e)
        if self.controller is not None:
            self.controller.refresh_table()
        self.last_reload = time.time()
        self.on_event({"event": "reload", "policy_error": self.reload_error, "added": added, "zoo_errors": errors})
        return ReloadResult(added, errors, self.reload_error)

    async def history(self, since_s: float, tables: list[str] | None) -> dict[str, list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.telemetry.history, since_s, tables)

    async def metrics_text(self) -> str:
        """The Prometheus text exposition (the same as ``GET /metrics``)."""
        return (await self.metrics.render()).decode()
