"""The composition root: builds every collaborator of agentd, wires them, and owns the IPC handlers.

    zoo manifests ─► Runtime (workers, hot swap) ◄─ pins / policy decisions
                        ▲
    IPC Server ─► App handlers (infer, models, status, pin, unpin, hold, release, reload, subscribe, history)
                        │
                    Telemetry (SQLite) ◄─ requests, swaps, decisions, events
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import __version__
from agent.control import QOS_KEYS, Controller, QoS, parse_qos
from agent.errors import AgentError, ConfigError, InvalidParams, NotFound
from agent.http.metrics import Metrics
from agent.ipc import protocol as P
from agent.ipc.server import REQUEST_ID, Peer, Reply, Server, claim_socket_path
from agent.policy.engine import PolicyEngine
from agent.runtime.deadlines import DeadlinePolicy, parse_deadline_ms
from agent.runtime.manager import Runtime
from agent.runtime.slots import InferResult
from agent.sensors.source import make_source
from agent.sensors.trace import TraceReplay
from agent.telemetry import Telemetry, parse_duration
from agent.zoo.manifest import Manifest, empty_zoo_hint, load_zoo

log = logging.getLogger("agent.app")


@dataclass
class Config:
    zoo: Path
    socket: Path
    state_dir: Path
    policy: list[Path] = field(default_factory=list)
    sensors: str = "live"
    sysfs_root: str = "/sys"
    procfs_root: str = "/proc"
    sample_interval_s: float = 1.0
    threads: int | None = None
    max_frame: int = P.DEFAULT_MAX_FRAME
    max_inflight: int = 64
    drain_timeout: float = 30.0
    headroom_bytes: int = 256 << 20
    spare_workers: int = 1
    retention_s: float = 7 * 86400
    devices: dict[str, str] = field(default_factory=dict)   # model -> initial device
    http: str | None = None        # OpenAI-compatible endpoint: "127.0.0.1:8077" | "unix:PATH" (None: off)
    request_timeout_s: float = 10.0   # floor of every model's default deadline (agent/runtime/deadlines.py)
    hang_after_s: float = 3.0         # a worker silent this long (no heartbeat) is declared hung
    frame_timeout_s: float = 5.0      # a client's frame must be complete this long after its first byte
    stall_timeout_s: float = 5.0      # a client that leaves its replies unread this long is closed
    require_models: bool = False   # a zoo with no loadable model is an error (else a warning)


@dataclass
class Hold:
    cookie: str
    profile: str
    reason: str
    peer_pid: int
    peer_uid: int
    conn_id: int
    since: float = field(default_factory=time.time)


class App:
    def __init__(self, cfg: Config, *, listen_sock: Any = None) -> None:
        self.cfg = cfg
        self.listen_sock = listen_sock
        self.started = time.time()
        self.zoo_errors: dict[str, str] = {}
        self.manifests: dict[str, Manifest] = {}
        self.holds: dict[str, Hold] = {}
        self.reload_error: str | None = None
        self.last_reload: float | None = None
        self.telemetry = Telemetry(cfg.state_dir / "telemetry.db", retention_s=cfg.retention_s)
        self.runtime: Runtime | None = None
        self.controller: Controller | None = None
        self.engine: PolicyEngine | None = None
        self.server = Server(self.handlers(), max_frame=cfg.max_frame, max_inflight=cfg.max_inflight,
                             on_disconnect=self.on_disconnect, frame_timeout_s=cfg.frame_timeout_s,
                             stall_timeout_s=cfg.stall_timeout_s)
        self.server.fast["infer"] = self.infer_nowait
        # a connection that holds a profile is never closed as idle (its hold ends with it)
        self.server.is_held = lambda peer: any(h.conn_id == peer.conn_id for h in self.holds.values())
        self.ready = asyncio.Event()
        self.http: Any = None
        self.metrics = Metrics(self)   # Prometheus, fed by telemetry rows (GET /metrics, IPC metrics)
        self.telemetry.listeners.append(self.metrics.on_record)

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.listen_sock is None:   # before any model loads: a second agentd on a taken socket fails now
            claim_socket_path(self.cfg.socket)
        self.manifests, self.zoo_errors = load_zoo(self.cfg.zoo)
        for name, err in self.zoo_errors.items():
            log.error("zoo model skipped", extra={"fields": {"model": name, "error": err}})
        if not self.manifests:
            hint = empty_zoo_hint(self.cfg.zoo)
            if self.cfg.require_models:
                raise ConfigError(f"no loadable model: {hint}")
            log.warning("no loadable model; serving nothing until a reload finds one",
                        extra={"fields": {"zoo": str(self.cfg.zoo), "hint": hint}})
        # validate the policy and the sensor spec before anything is loaded
        self.engine = PolicyEngine.from_files(self.cfg.policy) if self.cfg.policy else PolicyEngine()
        source = make_source(self.cfg.sensors, self.cfg.sysfs_root, self.cfg.procfs_root)
        self.runtime = Runtime(self.manifests, memory_probe=_memory_probe, headroom_bytes=self.cfg.headroom_bytes,
                               threads=self.cfg.threads, spare_workers=self.cfg.spare_workers,
                               drain_timeout=self.cfg.drain_timeout, emit=self.on_event,
                               deadlines=DeadlinePolicy(floor_s=self.cfg.request_timeout_s),
                               hang_after_s=self.cfg.hang_after_s)
        self.controller = Controller(self.runtime, self.engine, source, self.telemetry,
                                     interval_s=self.cfg.sample_interval_s, emit=self.on_event)
        initial = self.controller.initial_choices()
        for name, dev in self.cfg.devices.items():
            if name in initial:
                initial[name] = (initial[name][0], dev)
        errors = await self.runtime.start(initial)
        for name, err in errors.items():
            log.error("initial load failed", extra={"fields": {"model": name, "error": err}})
            ref = self.manifests[name].reference
            if initial[name][0] != ref:   # the policy's choice failed: serve the reference instead
                try:
                    await self.runtime.swap(name, ref, "cpu", {"why": "startup fallback", "error": err})
                except AgentError as e2:
                    log.error("reference load failed", extra={"fields": {"model": name, "error": str(e2)}})
        if self.cfg.http:   # before the socket: once agentd answers there, the endpoint is up too
            from agent.http.server import HttpServer, parse_address

            http = HttpServer(self, parse_address(self.cfg.http))
            await http.start()
            self.http = http
        await self.server.start(self.cfg.socket, sock=self.listen_sock)
        if isinstance(source, TraceReplay):   # a replay starts when deciding starts, not when loading did
            source.rewind()
        self.controller.start()
        self.ready.set()
        log.info("ready", extra={"fields": {"socket": str(self.cfg.socket), "models": sorted(self.manifests),
                                            "pid": os.getpid()}})

    async def stop(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - a drain grace period, not a cancel
        """Graceful stop: stop accepting, finish in-flight requests, stop workers, flush telemetry."""
        timeout = self.cfg.drain_timeout if timeout is None else timeout
        self.server.stop_accepting()
        if self.http is not None:
            await self.http.stop()
        drained = await self.server.drain(timeout)
        if self.controller is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.controller.stop)
        if self.runtime is not None:
            await self.runtime.close(timeout=5)
        await self.server.close()
        self.telemetry.close()
        log.info("stopped", extra={"fields": {"drained": drained}})
        return drained

    def rt(self) -> Runtime:
        if self.runtime is None:
            raise AgentError("runtime not started")
        return self.runtime

    # -- events -------------------------------------------------------------------------------------
    def on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "swap":
            self.telemetry.record("swaps", {k: v for k, v in ev.items() if k != "event"})
        else:
            self.telemetry.record("events", {"kind": kind, "detail": ev})
        self.server.broadcast({"jsonrpc": "2.0", "method": "event", "params": {"ts": time.time(), **ev}})

    def on_disconnect(self, peer: Peer) -> None:
        gone = [c for c, h in self.holds.items() if h.conn_id == peer.conn_id]
        if self.engine is not None:
            self.engine.release_owner(f"conn:{peer.conn_id}")
        for c in gone:
            h = self.holds.pop(c)
            self.on_event({"event": "hold_released", "cookie": c, "profile": h.profile, "why": "client disconnected"})

    # -- handlers -----------------------------------------------------------------------------------
    def handlers(self) -> dict[str, Any]:
        return {"infer": self.h_infer, "models": self.h_models, "status": self.h_status, "pin": self.h_pin,
                "unpin": self.h_unpin, "hold": self.h_hold, "release": self.h_release,
                "reload": self.h_reload, "subscribe": self.h_subscribe, "history": self.h_history,
                "generate": self.h_generate, "cancel": self.h_cancel, "metrics": self.h_metrics}

    async def h_metrics(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        """The Prometheus text exposition (the same as ``GET /metrics``)."""
        return {"text": (await self.metrics.render()).decode()}, []

    async def h_generate(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        """Stream tokens as ``token`` notifications ({id, text, index}); the response is the whole text,
        finish_reason, usage, and the variant and device that served it."""
        rid = REQUEST_ID.get()
        stream = params.get("stream", True)

        def on_token(p: dict[str, Any]) -> None:
            if stream and rid is not None:
                peer.send({"jsonrpc": "2.0", "method": "token",
                           "params": {"id": rid, "text": p.get("text", ""), "index": p.get("index")}}, [])
        return await self.generate(params, on_token), []

    async def generate(self, params: dict[str, Any], on_token: Any) -> dict[str, Any]:
        """One generation for any front end (IPC, HTTP): validates, passes QoS hints to the policy, streams
        each token to ``on_token({text, index, variant, device})``, records telemetry and energy."""
        t0 = time.perf_counter()
        model = _str(params, "model")
        allowed = {"model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                   "stream", *QOS_KEYS}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise InvalidParams(f"unknown generate parameter {unknown[0]!r}; expected {', '.join(sorted(allowed))}")
        if not isinstance(params.get("stream", True), bool):
            raise InvalidParams(f"stream: expected true or false, got {params['stream']!r}")
        qos = parse_qos(params)
        mt = params.get("max_tokens")
        tokens = mt if isinstance(mt, int) and not isinstance(mt, bool) and mt > 0 else None
        fwd = {k: v for k, v in params.items() if k not in ("model", "stream", *QOS_KEYS)}
        gate = None
        if self.controller is not None and not qos.empty:
            self.controller.hint(model, {k: getattr(qos, k) for k in QOS_KEYS if getattr(qos, k) is not None}
                                 | ({"tokens": tokens} if tokens else {}))
            gate = self.controller.gate(model)
            await gate.enter(qos, t0)
        try:
            if self.controller is not None and qos.deadline_ms is not None:
                a = self.rt().slot(model).active
                self.controller.admit(model, qos, a.variant if a else None, a.device if a else None,
                                      tokens or 16, (time.perf_counter() - t0) * 1e3)
            res = await self.rt().generate(model, fwd, on_token, parse_deadline_ms(params.get("deadline_ms")))
        except asyncio.CancelledError:
            self.telemetry.record("requests", {"model": model, "ok": False, "error": "cancelled", "kind": "generate",
                                               "latency_ms": (time.perf_counter() - t0) * 1e3})
            raise
        except AgentError as e:
            self.telemetry.record("requests", {"model": model, "ok": False, "error": type(e).__name__,
                                               "kind": "generate", "latency_ms": (time.perf_counter() - t0) * 1e3})
            raise
        finally:
            if gate is not None:
                gate.leave()
        wall = time.perf_counter() - t0
        usage = res.get("usage") or {}
        # the worker measures the CPU time of the generation (process CPU time, shared out among concurrent
        # generations); a reply without it is unknown CPU (None: no energy attributed), never a guess
        cpu_s = res.get("cpu_s")
        if not isinstance(cpu_s, (int, float)) or isinstance(cpu_s, bool) or not cpu_s >= 0:
            cpu_s = None
        toks = usage.get("completion_tokens") or 0
        joules, meter = (self.controller.attribute(model, res["variant"], float(cpu_s), wall, int(toks))
                         if self.controller and cpu_s is not None else (None, None))
        if qos.deadline_ms is not None:
            res["deadline_met"] = wall * 1e3 <= qos.deadline_ms
        toks = usage.get("completion_tokens") or 0
        res["joules"], res["meter"] = joules, meter
        res["joules_per_token"] = joules / toks if joules is not None and toks else None
        self.telemetry.record("requests", {"model": model, "variant": res["variant"], "device": res["device"],
                                           "ok": True, "kind": "generate", "latency_ms": wall * 1e3,
                                           "cpu_s": cpu_s, "deadline_ms": qos.deadline_ms,
                                           "tokens": toks, "ttft_ms": usage.get("ttft_ms"),
                                           "tokens_per_s": usage.get("decode_tokens_per_s"),
                                           "finish": res.get("finish_reason"), "joules": joules, "meter": meter})
        return res

    async def h_cancel(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        rid = params.get("id")
        if not isinstance(rid, (int, str)) or isinstance(rid, bool):
            raise InvalidParams("id: expected the id of a generate request on this connection")
        return {"cancelled": peer.cancel(rid)}, []

    async def h_infer(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        t0 = time.perf_counter()
        model = _str(params, "model")
        qos = parse_qos(params)
        deadline_s = parse_deadline_ms(params.get("deadline_ms"))
        try:
            self._admit(model, qos)
            r = await self.rt().infer(model, params.get("inputs"), payload, deadline_s)  # type: ignore[arg-type]
        except AgentError as e:
            return self._infer_done(model, t0, qos, None, e)
        return self._infer_done(model, t0, qos, r, None)

    def infer_nowait(self, peer: Peer, params: dict[str, Any], payload: memoryview, reply: Reply) -> bool:
        """``infer`` without a task: the reply is sent from the worker's (or the cache's) callback."""
        t0 = time.perf_counter()
        model = _str(params, "model")
        qos = parse_qos(params)

        def done(r: InferResult | None, err: AgentError | None) -> None:
            try:
                result, bufs = self._infer_done(model, t0, qos, r, err)
            except AgentError as e:
                reply.fail(e)
                return
            reply.ok(result, bufs)
        if params.get("deadline_ms") is not None:
            return False   # the task path enforces a request's own deadline
        try:
            self._admit(model, qos)
            return self.rt().infer_nowait(model, params.get("inputs"), payload, done)
        except AgentError as e:
            self._infer_done(model, t0, qos, None, e, reply=False)
            raise

    def _admit(self, model: str, qos: QoS) -> None:
        """QoS hints to the policy; refuses at once a deadline the loaded variant cannot meet."""
        if self.controller is not None and not qos.empty:
            self.controller.hint(model, {k: getattr(qos, k) for k in QOS_KEYS if getattr(qos, k) is not None})
            a = self.rt().slot(model).active
            self.controller.admit(model, qos, a.variant if a else None, a.device if a else None, None)

    def _infer_done(self, model: str, t0: float, qos: QoS, r: InferResult | None, err: AgentError | None,
                    reply: bool = True) -> tuple[Any, list[Any]]:
        """Telemetry and the reply of one inference (raises ``err`` after recording it)."""
        server_ms = (time.perf_counter() - t0) * 1e3
        if err is not None or r is None:
            self.telemetry.record("requests", {"model": model, "ok": False, "error": type(err).__name__,
                                               "latency_ms": server_ms})
            if reply and err is not None:
                raise err
            return {}, []
        joules, meter = (self.controller.attribute(model, r.variant, r.cpu_s, r.run_ms / 1e3)
                         if self.controller and not r.cached else (None, None))
        late = None if qos.deadline_ms is None else server_ms > qos.deadline_ms
        self.telemetry.record("requests", {"model": model, "variant": r.variant, "device": r.device, "ok": True,
                                           "latency_ms": server_ms, "run_ms": r.run_ms, "cpu_s": r.cpu_s,
                                           "retried": r.retried, "joules": joules, "meter": meter,
                                           "batch": r.batch, "cached": r.cached})
        return ({"outputs": r.outputs, "model": model, "variant": r.variant, "device": r.device,
                 "providers": r.providers, "server_ms": server_ms, "run_ms": r.run_ms, "retried": r.retried,
                 "joules": joules, "meter": meter, "batch": r.batch, "cached": r.cached,
                 **({} if late is None else {"deadline_met": not late})}, r.buffers())

    async def h_models(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        out = []
        for name, m in sorted(self.manifests.items()):
            out.append({"name": name, "kind": m.kind, "reference": m.reference,
                        "inputs": [s.to_toml() for s in m.inputs], "outputs": [s.to_toml() for s in m.outputs],
                        "variants": [{"id": v.id, "precision": v.precision, "derived_from": v.derived_from,
                                      "size_bytes": v.size_bytes,
                                      "quality": vars(v.quality) if v.quality else None, "unfit": v.unfit}
                                     for v in m.variants]})
        return out, []

    def status(self) -> dict[str, Any]:
        return {
            "daemon": {"pid": os.getpid(), "version": __version__, "uptime_s": round(time.time() - self.started, 1),
                       "socket": str(self.cfg.socket), "zoo": str(self.cfg.zoo), "state_dir": str(self.cfg.state_dir),
                       "reload_error": self.reload_error, "last_reload": self.last_reload,
                       "http": self.http.url if self.http is not None else None},
            "models": self.rt().status() if self.runtime else {},
            "zoo_errors": self.zoo_errors,
            "policy": self.engine.status() if self.engine else None,
            "sensors": self.controller.sensors_status() if self.controller else None,
            "energy": self.controller.energy_status() if self.controller else {},
            "holds": [{"cookie": h.cookie, "profile": h.profile, "reason": h.reason, "pid": h.peer_pid,
                       "since": h.since} for h in self.holds.values()],
        }

    async def h_status(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        st = self.status()
        for name, m in self.manifests.items():
            if m.kind == "causal-lm" and name in st["models"]:
                try:
                    st["models"][name]["llm"] = await self.rt().llm_stats(name)
                except AgentError:
                    st["models"][name]["llm"] = None
        return st, []

    async def h_pin(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        model, variant = _str(params, "model"), _str(params, "variant")
        slot = self.rt().slot(model)
        v = slot.manifest.variant(variant)   # NotFound before anything changes
        # no device = where the variant runs by nature (cpu; remote/split for such variants)
        device = _str(params, "device") if params.get("device") not in (None, "") else v.placement
        res = await self.rt().swap(model, variant, device, {"why": "pin", "uid": peer.uid, "pid": peer.pid})
        slot.pinned = (variant, device)
        if self.engine is not None:
            try:
                self.engine.pin(model, variant, device)
            except AgentError:
                pass  # not in the measured table: the runtime pin still holds the policy off this model
            self.engine.set_current(model, variant, device)
        return res, []

    async def h_unpin(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        slot = self.rt().slot(_str(params, "model"))
        was = slot.pinned
        slot.pinned = None
        if self.engine is not None:
            self.engine.unpin(slot.manifest.name)
        return {"model": slot.manifest.name, "was_pinned": list(was) if was else None,
                "policy_acts_in_s": self._dwell_remaining([slot.manifest.name])}, []

    def _dwell_remaining(self, models: list[str]) -> float | None:
        """When the policy may act on ``models`` again (None: no policy engine)."""
        if self.engine is None or self.controller is None:
            return None
        return round(self.engine.dwell_remaining(models, self.controller.now()), 1)

    async def h_hold(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        profile = _str(params, "profile")
        reason = params.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 1000:
            raise InvalidParams("reason must be a string of at most 1000 characters")
        cookie = secrets.token_hex(8)
        if self.engine is not None:
            self.engine.hold(cookie, profile, f"conn:{peer.conn_id}",
                             self.controller.now() if self.controller else time.monotonic())
        else:
            raise InvalidParams("no policy engine")
        self.holds[cookie] = Hold(cookie, profile, reason, peer.pid, peer.uid, peer.conn_id)
        self.on_event({"event": "hold", "cookie": cookie, "profile": profile, "reason": reason, "pid": peer.pid})
        return {"cookie": cookie}, []

    async def h_release(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        cookie = _str(params, "cookie")
        h = self.holds.get(cookie)
        if h is None or (h.peer_uid != peer.uid and peer.uid != 0):
            raise NotFound(f"no hold with cookie {cookie!r}")
        del self.holds[cookie]
        if self.engine is not None:
            self.engine.release(cookie)
        self.on_event({"event": "hold_released", "cookie": cookie, "profile": h.profile, "why": "released"})
        return {"released": cookie, "policy_acts_in_s": self._dwell_remaining(sorted(self.manifests))}, []

    async def h_reload(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        return await self.reload(), []

    async def reload(self) -> dict[str, Any]:
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
        added = []
        for name, m in manifests.items():
            if name in rt.slots:
                rt.slots[name].manifest = m
            else:
                from agent.runtime.manager import Slot

                rt.slots[name] = Slot(m)
                added.append(name)
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
        return {"reloaded": True, "added": added, "zoo_errors": errors, "policy_error": self.reload_error}

    async def h_subscribe(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        peer.subscribed = True
        return {"subscribed": True}, []

    async def h_history(self, peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        since = parse_duration(params.get("since") or "1h")
        tables = params.get("tables")
        if tables is not None and (not isinstance(tables, list) or not all(isinstance(t, str) for t in tables)):
            raise InvalidParams("tables must be a list of table names")
        loop = asyncio.get_running_loop()
        res = await loop.run_in_executor(None, self.telemetry.history, since, tables)
        return res, []


def _str(params: dict[str, Any], key: str, default: str | None = None) -> str:
    v = params.get(key, default)
    if not isinstance(v, str) or not v or len(v) > 256:
        raise InvalidParams(f"'{key}' must be a non-empty string")
    return v


def _memory_probe() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
