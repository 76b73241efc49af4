"""The runtime: one slot per model, make-before-break hot swap, retries, restarts, memory checks.

Only this module decides what is loaded or stopped (workers only run). Its side effects — spawning a
worker, reading free memory, the clock — are injected so tests can replace them and shrink timeouts.

Swap (one load at a time, under ``load_lock``)::

    check memory -> take a (pre-spawned) worker -> load + warm up -> switch slot.active atomically
    -> old worker drains its in-flight requests -> old worker stops

A request whose worker dies is retried once on the slot's healthy (or restarted) worker; a dead
active worker is restarted with exponential backoff.

Placement is checked before anything loads (:func:`agent.runtime.devices.check_placement`): a pin or a
policy choice naming a device that ONNX Runtime did not discover is refused with the list of what
exists. A *remote* variant (KServe v2 server) whose server stops answering is failed over to the
slot's last local variant (or the reference on CPU) and the request is retried there: one swap line
with the reason, no failed request. Remote endpoints are probed in the background; :meth:`placeable`
marks their policy rows ``reachable`` and drops rows for devices this machine does not have.
Every request has a deadline
(:mod:`agent.runtime.deadlines`): a worker silent past its heartbeat limit (:mod:`agent.runtime.handle`),
or past the model's deadline on the task path, is declared hung, killed and replaced the same way, and
the request is retried once within what is left of its deadline or fails with ``Timeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from agent.errors import (
    AgentError,
    InsufficientMemory,
    InvalidParams,
    LoadError,
    NotFound,
    RemoteUnavailable,
    Unavailable,
    WorkerDied,
)
from agent.ipc import protocol as P
from agent.runtime import devices as devmod
from agent.runtime.backends.onnx import twin_possible
from agent.runtime.batching import Done, TensorFront
from agent.runtime.deadlines import DeadlinePolicy, timeout_error, watch_progress
from agent.runtime.handle import HANG_AFTER_S, HEARTBEAT_S, WorkerHandle
from agent.runtime.lanes import MAX_LANES
from agent.runtime.slots import InferResult, Slot, VariantState  # noqa: F401  (re-exported)
from agent.zoo.manifest import Manifest, Variant, safe_join

log = logging.getLogger("agent.runtime")
swaplog = logging.getLogger("agent.swap")

MemoryProbe = Callable[[], int]
Spawner = Callable[[], Awaitable[WorkerHandle]]
DeviceProbe = Callable[[], list[devmod.Device]]
RemoteProbe = Callable[[str, str], tuple[bool, str]]


def default_remote_probe(url: str, model: str) -> tuple[bool, str]:
    from agent.runtime.remote import probe

    return probe(url, model, timeout_s=1.0)


class _Late(Exception):
    """Internal: a request's deadline passed while it waited for a live worker."""


def default_memory_probe() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


class Runtime:
    def __init__(self, manifests: dict[str, Manifest], *, spawner: Spawner | None = None,
                 memory_probe: MemoryProbe = default_memory_probe, headroom_bytes: int = 256 << 20,
                 threads: int | None = None, warmup_runs: int = 3, spare_workers: int = 1,
                 ready_timeout: float = 60.0, drain_timeout: float = 30.0,
                 backoff: tuple[float, float] = (0.2, 10.0),
                 emit: Callable[[dict[str, Any]], None] | None = None,
                 devices: DeviceProbe = devmod.available, remote_probe: RemoteProbe = default_remote_probe,
                 probe_interval_s: float = 2.0, deadlines: DeadlinePolicy | None = None,
                 heartbeat_s: float = HEARTBEAT_S, hang_after_s: float = HANG_AFTER_S) -> None:
        self.slots = {name: Slot(m) for name, m in manifests.items()}
        # cache + dynamic batching + the callback path, per tensor model (runtime/batching.py)
        self.fronts = {name: self._front(s) for name, s in self.slots.items() if s.manifest.kind == "tensor"}
        self._valid: dict[tuple[str, bytes], int] = {}   # (model, descriptions as JSON) -> payload bytes
        self.spawner = spawner or functools.partial(WorkerHandle.spawn, heartbeat_s=heartbeat_s,
                                                    hang_after_s=hang_after_s)
        self.deadlines = deadlines or DeadlinePolicy()
        self.stable_s = 30.0   # a worker that served this long before dying resets the restart backoff
        self.memory_probe = memory_probe
        self.headroom = headroom_bytes
        self.threads = threads
        self.warmup_runs = warmup_runs
        self.spare_target = spare_workers
        self.ready_timeout = ready_timeout
        self.drain_timeout = drain_timeout
        self.backoff = backoff
        self.emit = emit or (lambda ev: None)
        self.load_lock = asyncio.Lock()
        self._spares: list[WorkerHandle] = []
        self._spare_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self.devices = devices
        # discovered once, in a thread, so it overlaps the first worker's start instead of delaying it
        self._devices_future = concurrent.futures.ThreadPoolExecutor(1, "discover").submit(devices)
        self.remote_probe = remote_probe
        self.probe_interval_s = probe_interval_s
        # (endpoint, remote model) -> (reachable, why, time.time()) from the background probe / failures
        self.reach: dict[tuple[str, str], tuple[bool, str, float]] = {}
        self._last_local: dict[str, tuple[str, str]] = {}

    # -- helpers ------------------------------------------------------------------------------------
    def slot(self, model: str) -> Slot:
        s = self.slots.get(model)
        if s is None:
            raise NotFound(f"unknown model {model!r}; known: {', '.join(sorted(self.slots)) or 'none'}")
        return s

    def put_model(self, m: Manifest) -> bool:
        """Add a model read from the zoo (True; nothing loads until a swap) or take its re-read manifest."""
        slot = self.slots.get(m.name)
        self._valid = {k: n for k, n in self._valid.items() if k[0] != m.name}
        if slot is not None:
            slot.manifest = m
            return False
        slot = self.slots[m.name] = Slot(m)
        if m.kind == "tensor":
            self.fronts[m.name] = self._front(slot)
        return True

    async def fall_back(self, model: str, why: str, error: str, *, to: tuple[str, str] | None = None,
                        **detail: Any) -> dict[str, Any]:
        """The one path to a fallback variant (``to``, else the reference on CPU) after what was asked for
        failed: a startup load, a remote server, a worker that keeps dying. Swaps with ``why`` as the reason,
        then emits one ``fallback`` event (model, from, to, device, why, error, ok) that the policy engine
        and telemetry see, so the policy's idea of what serves follows."""
        slot = self.slot(model)
        variant, device = to or (slot.manifest.reference, "cpu")
        was = slot.active.variant if slot.active is not None else None
        ev = {"event": "fallback", "model": model, "from": was, "to": variant, "device": device, "why": why,
              "error": error}
        try:
            res = await self.swap(model, variant, device, {"why": why, **detail, "error": error})
        except AgentError as e:
            self.emit({**ev, "ok": False, "fallback_error": str(e)})
            raise
        self.emit({**ev, "device": res["device"], "ok": True})
        return res

    def _front(self, slot: Slot) -> TensorFront:
        def active() -> WorkerHandle | None:
            h = slot.active
            return h if h is not None and h.alive and not self.closing else None

        def error() -> None:
            slot.errors += 1
        return TensorFront(slot.manifest.name, slot.manifest.serving, active, lambda: self._active(slot), error)

    def _bg(self, coro: Awaitable[Any]) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _take_worker(self) -> WorkerHandle:
        h = await self._spare_or_new()
        h.on_lanes = self._on_lanes
        return h

    async def _spare_or_new(self) -> WorkerHandle:
        while self._spares:
            h = self._spares.pop()
            if h.alive:
                self._refill_spares()
                return h
            h.kill()   # a spare that died idle: give back its shared memory
        h = await self.spawner()
        self._refill_spares()
        return h

    def _refill_spares(self) -> None:
        if self.closing or len(self._spares) >= self.spare_target:
            return
        if self._spare_task is not None and not self._spare_task.done():
            return

        async def fill() -> None:
            while not self.closing and len(self._spares) < self.spare_target:
                try:
                    h = await self.spawner()
                except AgentError as e:
                    log.warning("could not pre-spawn a spare worker: %s", e)
                    return
                if self.closing:
                    h.kill()   # never used; no await here that close() could cancel half-way
                    return
                self._spares.append(h)

        self._spare_task = asyncio.ensure_future(fill())

    def estimate_bytes(self, m: Manifest, v: Variant, device: str) -> int:
        """The memory a worker serving ``v`` will hold, with the draft variant it loads beside it (if any)."""
        need = self._estimate_one(m, v, device)
        if m.kind == "causal-lm":
            from agent.llm.speculative import draft_for

            try:
                d = draft_for(m.llm, v.id, {x.id for x in m.variants})
            except LoadError:
                d = None   # the load itself reports the bad table
            if d is not None:
                need += self._estimate_one(m, m.variant(d.variant), device)
        return need

    def _estimate_one(self, m: Manifest, v: Variant, device: str) -> int:
        if v.remote is not None:
            return 64 << 20                   # a worker holding an HTTP client, no weights
        files = [m.path_of(v)] if not v.parts else [safe_join(m.folder, p.file) for p in v.parts]
        size = v.size_bytes or sum(f.stat().st_size for f in files if f.exists())
        # a small plain tensor variant on the CPU may keep a one-thread twin session (backends.onnx)
        twin = 2 * size if m.kind == "tensor" and twin_possible(size, device, bool(v.parts)) is None else 0
        meas = v.measurement(device.split(":")[0]) if device else None
        if meas and meas.peak_rss_bytes:
            return int(meas.peak_rss_bytes) + twin
        return int(size * 2.5) + (64 << 20) + twin   # prepacking peaks at ~2x weights (FACTS.md) + runtime

    async def _ensure_memory(self, m: Manifest, v: Variant, device: str) -> None:
        need = self.estimate_bytes(m, v, device)
        avail = self.memory_probe()
        if need <= avail - self.headroom:
            return
        # evict what is not serving: spare workers first, then wait for draining workers to finish
        while self._spares:
            await self._spares.pop().stop()
        for s in self.slots.values():
            for h in list(s.draining):
                if h.inflight == 0:
                    await h.stop()
                    s.draining.discard(h)
        avail = self.memory_probe()
        if need > avail - self.headroom:
            raise InsufficientMemory(
                f"{m.name}/{v.id} needs ~{need >> 20} MiB but only {avail >> 20} MiB are available "
                f"(headroom {self.headroom >> 20} MiB); refusing to load",
                data={"need_bytes": need, "available_bytes": avail, "headroom_bytes": self.headroom})

    def _load_params(self, m: Manifest, v: Variant, device: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": m.name, "variant": v.id,
            "path": str(m.path_of(v)) if v.remote is None else "", "sha256": v.sha256, "device": device,
            "threads": self.threads, "warmup_runs": self.warmup_runs, "kind": m.kind, "llm": m.llm,
            "batch_check": m.serving.batching,
            "lane_cache_bytes": m.serving.cache_bytes if m.kind == "tensor" else 0,
            "lane_max_batch": m.serving.max_batch if m.kind == "tensor" else 1,
            "warmup_file": str(safe_join(m.folder, m.warmup)) if m.warmup else None,
            "signature": {"inputs": [s.to_toml() for s in m.inputs], "outputs": [s.to_toml() for s in m.outputs]}}
        if v.parts:
            out["parts"] = [{"path": str(safe_join(m.folder, p.file)), "device": p.device, "sha256": p.sha256}
                            for p in v.parts]
        if v.remote is not None:
            out["remote"] = {"endpoint": v.remote.endpoint, "model": v.remote.model, "version": v.remote.version,
                             "timeout_s": v.remote.timeout_s}
        if m.kind == "causal-lm":  # continuous batching; speculative decoding: the manifest may name a draft
            out["llm_max_batch"] = m.serving.max_batch
            from agent.llm.speculative import draft_request

            draft = draft_request(m, v.id)
            if draft is not None:
                out["draft"] = draft
        return out

    # -- placement ----------------------------------------------------------------------------------
    async def known_devices(self) -> list[devmod.Device]:
        devs: list[devmod.Device] = await asyncio.wrap_future(self._devices_future)
        return list(devs)

    async def check_placement(self, m: Manifest, v: Variant, device: str) -> str:
        """The device string to load ``v`` with; NotFound (listing what exists) when it is not here."""
        if m.kind != "tensor" and v.placement != "cpu":
            raise NotFound(f"{m.name}/{v.id}: {v.placement} variants are for tensor models")
        return devmod.check_placement(device, v.placement, await self.known_devices())

    def placeable(self, rows: list[Any]) -> list[Any]:
        """The policy's rows this machine can run now: rows for undiscovered devices are dropped, remote
        rows carry ``reachable`` from the last probe or failure."""
        from dataclasses import replace

        # until discovery has answered, only the CPU is assumed (the next decision sees the rest)
        f = self._devices_future
        devs = f.result() if f.done() and f.exception() is None else []
        have = {d.kind for d in devs} | {"cpu", devmod.REMOTE, devmod.SPLIT}
        out = []
        for r in rows:
            if r.device not in have:
                continue
            if r.device == devmod.REMOTE:
                slot = self.slots.get(r.model)
                v = slot.manifest.variant(r.variant) if slot else None
                if v is not None and v.remote is not None:
                    ok = self.reach.get((v.remote.endpoint, v.remote.model))
                    r = replace(r, reachable=ok[0] if ok else False)
            out.append(r)
        return out

    def remote_endpoints(self) -> list[tuple[str, str]]:
        return sorted({(v.remote.endpoint, v.remote.model) for s in self.slots.values()
                       for v in s.manifest.variants if v.remote is not None})

    async def probe_remotes(self) -> None:
        """One round of health probes of every remote endpoint (in a thread: blocking HTTP)."""
        loop = asyncio.get_running_loop()
        for url, model in self.remote_endpoints():
            ok, why = await loop.run_in_executor(None, self.remote_probe, url, model)
            prev = self.reach.get((url, model))
            self.reach[(url, model)] = (ok, why, time.time())
            if prev is None or prev[0] != ok:
                log.info("remote %s model %s %s: %s", url, model, "reachable" if ok else "unreachable", why)
                self.emit({"event": "remote_reachable" if ok else "remote_unreachable", "endpoint": url,
                           "model": model, "why": why})
            if not ok:   # no await between marking it and failing over: the runtime, not the policy, moves first
                for slot in self.slots.values():
                    h = slot.active
                    v = slot.manifest.variant(h.variant) if h is not None and h.variant else None
                    if h is not None and v is not None and v.remote is not None and \
                            (v.remote.endpoint, v.remote.model) == (url, model):
                        try:
                            await self._failover(slot, h, RemoteUnavailable(f"probe: {why}"))
                        except AgentError as e:
                            log.error("failover of %s failed: %s", slot.manifest.name, e)

    async def _probe_loop(self) -> None:
        while not self.closing:
            try:
                await self.probe_remotes()
            except Exception:  # a probe must never end the loop
                log.exception("remote probe failed")
            await asyncio.sleep(self.probe_interval_s)

    async def _failover(self, slot: Slot, h: WorkerHandle, err: AgentError) -> None:
        """The remote variant's server is gone: serve from a local variant again (one swap, one reason)."""
        m = slot.manifest
        v = m.variant(h.variant) if h.variant else None
        if v is not None and v.remote is not None:
            self.reach[(v.remote.endpoint, v.remote.model)] = (False, err.message, time.time())
        if slot.active is not h:
            return  # another request already failed over (or a swap happened): just retry
        await self.fall_back(m.name, "failover", err.message, to=self._last_local.get(m.name),
                             from_remote=h.variant)

    # -- swap ---------------------------------------------------------------------------------------
    async def swap(self, model: str, variant: str, device: str = "cpu",
                   reason: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make ``variant`` on ``device`` the active one for ``model`` (make-before-break)."""
        slot = self.slot(model)
        v = slot.manifest.variant(variant)
        device = await self.check_placement(slot.manifest, v, device)   # refused before anything changes
        reason = reason or {"why": "requested"}
        async with self.load_lock:
            cur = slot.active
            if cur is not None and cur.alive and cur.variant == variant and cur.device == device:
                return {"model": model, "variant": variant, "device": device, "changed": False}
            st = slot.state(variant)
            st.status, st.reason, st.last_change = "loading", None, time.time()
            t0 = time.perf_counter()
            h: WorkerHandle | None = None
            sb = slot.standby
            promoted = sb is not None and sb.alive and sb.variant == variant and sb.device == device
            try:
                if sb is not None and promoted:   # the warm standby is it: no second load
                    slot.standby, h = None, sb
                    info = {**sb.info, "load_ms": 0.0, "warmup_ms": 0.0}
                else:
                    await self._ensure_memory(slot.manifest, v, device)
                    h = await self._take_worker()
                    info = await h.load(self._load_params(slot.manifest, v, device))
            except AgentError as e:
                if h is not None:
                    h.kill()
                st.status, st.reason, st.last_change = "failed", str(e), time.time()
                if cur is not None and cur.alive and cur.variant == variant:
                    st.status = "active"
                self.emit({"event": "load_failed", "model": model, "variant": variant, "device": device,
                           "error": str(e), "reason": reason, "serving": cur.variant if cur else None})
                swaplog.warning("load failed", extra={"fields": {
                    "model": model, "to": variant, "device": device, "error": str(e),
                    "still_serving": cur.variant if cur else None}})
                raise LoadError(str(e), data={"model": model, "variant": variant}) from None
            except BaseException:
                if h is not None:
                    h.kill()   # cancelled mid-load (the runtime closing): the worker is nobody's now
                st.status, st.last_change = ("active" if cur is not None and cur.variant == variant
                                             else "unloaded"), time.time()
                raise
            load_ms = info.get("load_ms", 0.0)
            warm_ms = info.get("warmup_ms", 0.0)
            h.variant, h.model, h.device = variant, model, device
            h.on_death = self._on_worker_death
            if v.remote is None:
                self._last_local[model] = (variant, device)
            # the switch: one assignment, no await between it and the routing it affects
            old = slot.active
            slot.active = h
            if model in self.fronts:
                self.fronts[model].on_swap()
            slot.ready.set()
            h.active_since = time.monotonic()
            st.status, st.device, st.load_ms, st.warmup_ms, st.last_change = ("active", device, load_ms, warm_ms,
                                                                              time.time())
            total_ms = (time.perf_counter() - t0) * 1e3
            if old is not None and old.variant is not None and old.variant != variant:
                slot.state(old.variant).status = "draining"
            event = {"event": "swap", "model": model, "from": old.variant if old else None,
                     "from_device": old.device if old else None, "to": variant, "device": device,
                     "reason": reason, "load_ms": round(load_ms, 2), "warmup_ms": round(warm_ms, 2),
                     "swap_ms": round(total_ms, 2), "assignment": info.get("assignment"),
                     "providers": devmod.providers_ran(info), "peak_rss_bytes": info.get("peak_rss_bytes"),
                     "warmup": info.get("warmup"), **({"promoted": "standby"} if promoted else {}),
                     **({"one_thread": info["one_thread"]} if info.get("one_thread") else {})}
            swaplog.info("swap", extra={"fields": {k: v_ for k, v_ in event.items() if k != "event"}})
            self.emit(event)
            if old is not None and not self._keep_as_standby(slot, old, variant):
                slot.draining.add(old)
                if await old.close_lanes():   # before the swap returns: its lane clients move on to h
                    self.emit({"event": "lanes_closed", "model": model, "variant": old.variant, "pid": old.pid})
                self._bg(self._drain(slot, old))
            return {"model": model, "variant": variant, "device": device, "changed": True,
                    "providers": devmod.providers_ran(info), "load_ms": load_ms, "warmup_ms": warm_ms,
                    "swap_ms": total_ms}

    async def _drain(self, slot: Slot, h: WorkerHandle) -> None:
        deadline = time.monotonic() + self.drain_timeout
        # a bounded poll: h.inflight is a plain counter with many decrement sites, not an Event
        while h.inflight > 0 and h.alive and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, see above
            await asyncio.sleep(0.005)
        h.on_death = None
        await h.stop()
        slot.draining.discard(h)
        if h.variant and (slot.active is None or slot.active.variant != h.variant):
            slot.state(h.variant).status = "unloaded"

    # -- lanes (agent.runtime.lanes) --------------------------------------------------------------------
    def open_lane(self, model: str) -> tuple[list[int], dict[str, Any]]:
        """fds of a direct lane to the model's active worker (client socket, inputs memfd, outputs memfd)
        and what it serves; Unavailable when the model is served another way (an LLM, a remote variant,
        no live worker, a worker with MAX_LANES lanes open)."""
        slot = self.slot(model)
        m = slot.manifest
        why = "it is not a tensor model" if m.kind != "tensor" else None
        h = slot.active
        if why is None and (self.closing or h is None or not h.alive or h.stopping):
            why = "no worker serves it now"
        if why is None and h is not None and h.info.get("remote"):
            why = "a remote server serves it"
        if why is None and h is not None and int(h.lanes.get("open", 0)) >= MAX_LANES:
            why = f"its worker has {MAX_LANES} lanes open"
        if why is not None:
            raise Unavailable(f"no lane to {model!r}: {why}", data={"model": model, "lane": False})
        assert h is not None
        fds = h.open_lane()
        h.lanes = {**h.lanes, "open": int(h.lanes.get("open", 0)) + 1}   # until the worker's next report
        return fds, {"model": model, "variant": h.variant, "device": h.device, "pid": h.pid}

    def _on_lanes(self, h: WorkerHandle, before: dict[str, Any], now: dict[str, Any]) -> None:
        if h.model is None or h.model not in self.slots:
            return
        delta = {k: now.get(k, 0) - before.get(k, 0) for k in ("requests", "hits", "errors", "cpu_s", "run_ms")}
        b0, b1 = before.get("batching") or {}, now.get("batching") or {}
        batches = int(b1.get("batches", 0)) - int(b0.get("batches", 0))
        batched = int(b1.get("batched_requests", 0)) - int(b0.get("batched_requests", 0))
        slot = self.slots[h.model]
        for k in ("requests", "hits", "errors"):
            slot.lanes[k] = slot.lanes.get(k, 0) + int(delta[k])
        slot.requests += int(delta["requests"])
        if delta["requests"] > 0:
            self.emit({"event": "lanes", "model": h.model, "variant": h.variant, "device": h.device,
                       "requests": int(delta["requests"]), "hits": int(delta["hits"]),
                       "cpu_s": round(float(delta["cpu_s"]), 6), "run_ms": round(float(delta["run_ms"]), 3),
                       "window": now.get("window"), "batches": batches, "batched_requests": batched})

    # -- warm standby -------------------------------------------------------------------------------
    def want_standby(self, model: str, want: tuple[str, str] | None, why: str = "") -> None:
        """What the policy wants kept warm next to ``model``'s active variant (None: nothing). Loads
        nothing: :meth:`sync_standby` does. A swap to the standby's variant promotes it (no second load);
        a swap away from the wanted variant keeps the old worker as the standby."""
        slot = self.slot(model)
        if slot.manifest.kind != "causal-lm":
            want = None
        slot.standby_want, slot.standby_why = want, why

    def _standby_target(self, slot: Slot) -> tuple[str, str] | None:
        """What should be the standby now: the want, unless the active worker already is that variant."""
        want, a = slot.standby_want, slot.active
        if want is not None and a is not None and a.alive and (a.variant, a.device) == want:
            return None
        return want

    def sync_standby(self, model: str, retry_s: float = 30.0) -> bool:
        """Load or stop ``model``'s standby in the background to match the want; True when a task started.
        A load that failed is not retried for ``retry_s`` (the same want)."""
        slot = self.slot(model)
        if self.closing or (slot.standby_task is not None and not slot.standby_task.done()):
            return False
        sb, target = slot.standby, self._standby_target(slot)
        have = (sb.variant or "", sb.device or "") if sb is not None and sb.alive else None
        if have == target or (target is not None and slot.active is None):
            return False   # as wanted; or nothing serves yet: the active variant loads first
        f = slot.standby_failed
        if target is not None and have is None and f is not None and f[0] == target and \
                time.monotonic() - f[1] < retry_s:
            return False
        slot.standby_task = t = asyncio.ensure_future(self._sync_standby(slot))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return True

    async def _sync_standby(self, slot: Slot) -> None:
        model = slot.manifest.name
        async with self.load_lock:   # one load at a time, standby loads included
            target, sb = self._standby_target(slot), slot.standby
            if sb is not None and (not sb.alive or (sb.variant, sb.device) != target):
                slot.standby = None
                swaplog.info("standby stop", extra={"fields": {
                    "model": model, "variant": sb.variant, "device": sb.device, "pid": sb.pid,
                    "reason": slot.standby_why or "no standby wanted" if target is None else
                    f"replaced by {target[0]}@{target[1]}: {slot.standby_why}"}})
                self.emit({"event": "standby_stop", "model": model, "variant": sb.variant, "device": sb.device})
                slot.draining.add(sb)
                self._bg(self._drain(slot, sb))
            if target is None or slot.standby is not None or slot.active is None or self.closing:
                return
            await self._load_standby(slot, target)

    async def _load_standby(self, slot: Slot, target: tuple[str, str]) -> None:
        m, (variant, device) = slot.manifest, target
        t0 = time.perf_counter()
        h: WorkerHandle | None = None
        try:
            v = m.variant(variant)
            device = await self.check_placement(m, v, device)
            await self._ensure_memory(m, v, device)
            h = await self._take_worker()
            info = await h.load(self._load_params(m, v, device))
        except AgentError as e:
            if h is not None:
                h.kill()
            slot.standby_failed = (target, time.monotonic())
            swaplog.warning("standby load failed", extra={"fields": {
                "model": m.name, "variant": variant, "device": device, "error": str(e), "reason": slot.standby_why}})
            self.emit({"event": "standby_failed", "model": m.name, "variant": variant, "error": str(e)})
            return
        except BaseException:
            if h is not None:
                h.kill()
            raise
        h.variant, h.model, h.device = variant, m.name, device
        h.on_death = self._on_worker_death
        slot.standby, slot.standby_failed = h, None
        st = slot.state(variant)
        st.status, st.device, st.last_change = "standby", device, time.time()
        st.load_ms, st.warmup_ms = info.get("load_ms", 0.0), info.get("warmup_ms", 0.0)
        fields = {"model": m.name, "variant": variant, "device": device, "pid": h.pid, "reason": slot.standby_why,
                  "active": slot.active.variant if slot.active else None, "load_ms": round(st.load_ms or 0.0, 2),
                  "warmup_ms": round(st.warmup_ms or 0.0, 2), "standby_ms": round((time.perf_counter() - t0) * 1e3, 2),
                  "rss_bytes": info.get("rss_bytes"), "peak_rss_bytes": info.get("peak_rss_bytes")}
        swaplog.info("standby", extra={"fields": fields})
        self.emit({"event": "standby", **fields})

    def _keep_as_standby(self, slot: Slot, old: WorkerHandle, new_variant: str) -> bool:
        """After a swap: keep the old worker warm as the standby when it is the wanted one (no reload later)."""
        if not old.alive or old.variant == new_variant or slot.standby is not None or \
                slot.standby_want != (old.variant, old.device) or self.closing:
            return False
        slot.standby = old
        if old.variant:
            slot.state(old.variant).status = "standby"
        fields = {"model": slot.manifest.name, "variant": old.variant, "device": old.device, "pid": old.pid,
                  "reason": f"kept from the swap to {new_variant}: {slot.standby_why}", "load_ms": 0.0}
        swaplog.info("standby", extra={"fields": fields})
        self.emit({"event": "standby", **fields})
        return True

    def standby_of(self, model: str) -> WorkerHandle | None:
        h = self.slot(model).standby
        return h if h is not None and h.alive and not self.closing else None

    # -- failures -----------------------------------------------------------------------------------
    def _on_worker_death(self, h: WorkerHandle) -> None:
        if self.closing or h.model is None:
            return
        slot = self.slots[h.model]
        lived = time.monotonic() - (h.active_since or h.started)
        if lived >= self.stable_s:
            slot.failures = 0   # it served for a while: restart at once; a crash loop backs off
        kind = "worker_hung" if h.hung else "worker_died"
        log.warning("%s", kind, extra={"fields": {"pid": h.pid, "model": h.model, "variant": h.variant,
                                                  "why": h.hung or "exited", "lived_s": round(lived, 1),
                                                  "active": slot.active is h, "failures": slot.failures}})
        self.emit({"event": "worker_died", "model": h.model, "variant": h.variant, "pid": h.pid, "hung": h.hung})
        self._bg(self._reap(h))
        if slot.standby is h:   # the next sync_standby loads another
            slot.standby = None
            if h.variant:
                slot.state(h.variant).status = "unloaded"
        if slot.active is h:
            slot.active = None
            slot.ready.clear()
            if not slot.restarting:
                slot.restarting = True
                self._bg(self._restart(slot, h.variant or slot.manifest.reference, h.device or "cpu"))

    async def _reap(self, h: WorkerHandle) -> None:
        """A dead worker's handle keeps its memfds until the requests that were on it have unwound."""
        end = time.monotonic() + self.drain_timeout
        # a bounded poll: h.inflight is a plain counter with many decrement sites, not an Event
        while h.inflight > 0 and time.monotonic() < end:  # noqa: ASYNC110 - a counter, see above
            await asyncio.sleep(0.01)
        h.kill()

    async def _restart(self, slot: Slot, variant: str, device: str) -> None:
        last_error: str | None = None   # after 6 failed restarts of another variant: the reference instead
        try:
            while not self.closing and slot.active is None:
                delay = min(self.backoff[0] * (2 ** slot.failures), self.backoff[1])
                slot.failures += 1
                await asyncio.sleep(delay if slot.failures > 1 else 0)
                try:
                    if last_error is not None and slot.failures > 6 and variant != slot.manifest.reference:
                        await self.fall_back(slot.manifest.name, "restart fallback", last_error)
                    else:
                        await self.swap(slot.manifest.name, variant, device, {"why": "restart after worker death"})
                    self.emit({"event": "worker_restarted", "model": slot.manifest.name,
                               "variant": slot.active.variant if slot.active is not None else variant})
                except AgentError as e:
                    log.error("restart of %s/%s failed: %s", slot.manifest.name, variant, e)
                    last_error = str(e)
        finally:
            slot.restarting = False

    # -- serving ------------------------------------------------------------------------------------
    def check_inputs(self, m: Manifest, descs: Any) -> None:
        if not isinstance(descs, list):
            raise InvalidParams("inputs must be a list of {name, dtype, shape}")
        want = {s.name: s for s in m.inputs}
        got: set[str] = set()
        for d in descs:
            name, dt, shape, _ = P.check_desc(d)
            spec = want.get(name)
            if spec is None:
                raise InvalidParams(f"model {m.name!r} has no input {name!r}; inputs: {', '.join(want)}")
            if d["dtype"] != spec.dtype:
                raise InvalidParams(f"input {name!r}: expected dtype {spec.dtype}, got {dt.name}")
            if len(shape) != len(spec.shape) or any(
                    isinstance(w, int) and w != g for w, g in zip(spec.shape, shape, strict=False)):
                raise InvalidParams(f"input {name!r}: expected shape {list(spec.shape)}, got {list(shape)}")
            got.add(name)
        missing = set(want) - got
        if missing:
            raise InvalidParams(f"missing inputs: {', '.join(sorted(missing))}")

    async def _active(self, slot: Slot, end: float | None = None) -> WorkerHandle:
        """The slot's live worker, waiting (at most until ``end``, monotonic) while one is restarted."""
        if self.closing:
            raise Unavailable("the agent is shutting down")
        h = slot.active
        if h is not None and h.alive:
            return h
        wait = self.ready_timeout if end is None else min(self.ready_timeout, end - time.monotonic())
        try:
            if wait <= 0:
                raise TimeoutError
            await asyncio.wait_for(slot.ready.wait(), wait)
        except TimeoutError:
            if end is not None and time.monotonic() >= end:
                raise _Late from None
            raise Unavailable(f"no variant of {slot.manifest.name!r} is ready") from None
        if slot.active is None or not slot.active.alive:
            raise Unavailable(f"no variant of {slot.manifest.name!r} is ready")
        return slot.active

    def deadline_s(self, model: str) -> float:
        """The model's default deadline in seconds (see agent.runtime.deadlines)."""
        return self.deadlines.default_s(self.slot(model).manifest)

    def infer_nowait(self, model: str, descs: Any, payload: memoryview, done: Done) -> bool:
        """The callback path: validate, then serve from the cache, a batch or the active worker and call
        ``done(result, error)`` once from the event loop. Raises on bad input; False when no variant is
        serving right now (use :meth:`infer`, which waits for one). ``result.data`` may view shared
        memory: it is valid only inside ``done``."""
        slot = self.slot(model)
        if slot.manifest.kind != "tensor":
            raise InvalidParams(f"model {model!r} is a {slot.manifest.kind}; use generate")
        if self._remote_active(slot):
            return False   # the task path: it fails over when the remote server is gone
        if not isinstance(descs, list):
            raise InvalidParams("inputs: expected a list of tensor descriptions")
        try:
            dkey = orjson.dumps(descs)   # descriptions repeat: validate each distinct one once
        except TypeError as e:          # deeper than orjson's nesting limit, or not JSON-like
            raise InvalidParams(f"inputs: not a list of tensor descriptions ({e})") from None
        nbytes = self._valid.get((model, dkey))
        if nbytes is None:
            self.check_inputs(slot.manifest, descs)
            nbytes = P.iter_nbytes(descs)
            if len(self._valid) >= 1024:
                self._valid.clear()
            self._valid[(model, dkey)] = nbytes
        if nbytes != len(payload):
            raise InvalidParams("payload length does not match the described inputs")
        if not self.fronts[model].submit(descs, payload, done, dkey=dkey):
            return False
        slot.requests += 1
        return True

    async def infer(self, model: str, descs: list[dict[str, Any]], payload: memoryview,
                    deadline_s: float | None = None) -> InferResult:
        """Wait for a serving variant if none is ready, then take the callback path; the result owns its
        bytes. Within ``deadline_s`` (default: the model's), else Timeout naming the variant; a worker
        that dies or is declared hung (heartbeat) meanwhile costs one retry (runtime/batching.py)."""
        limit = self.deadline_s(model) if deadline_s is None else deadline_s
        try:
            return await asyncio.wait_for(self._infer(model, descs, payload, deadline_s), limit)
        except TimeoutError:
            a = self.slot(model).active
            self.slot(model).errors += 1
            raise timeout_error(model, a.variant if a else None, a.pid if a else None, limit,
                                hung=bool(a and a.hung)) from None

    async def _infer(self, model: str, descs: list[dict[str, Any]], payload: memoryview,
                     deadline_s: float | None) -> InferResult:
        slot = self.slot(model)
        fut: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()

        def done(r: InferResult | None, err: AgentError | None) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(err)
            else:
                assert r is not None
                if not isinstance(r.data, bytes):
                    r.data = b"".join(r.buffers())
                fut.set_result(r)
        for _ in range(3):
            if self._remote_active(slot):
                return await self._infer_remote(slot, model, descs, payload, deadline_s)
            if self.infer_nowait(model, descs, payload, done):
                return await fut
            await self._active(slot)
        raise Unavailable(f"no variant of {model!r} is ready")

    def _remote_active(self, slot: Slot) -> bool:
        h = slot.active
        if h is None or not h.variant:
            return False
        return slot.manifest.variant(h.variant).remote is not None

    async def _infer_remote(self, slot: Slot, model: str, descs: list[dict[str, Any]],
                            payload: memoryview, deadline_s: float | None = None) -> InferResult:
        """A remote variant: the task path, which fails over to a local variant when its server is gone."""
        self.check_inputs(slot.manifest, descs)
        if P.iter_nbytes(descs) != len(payload):
            raise InvalidParams("payload length does not match the described inputs")
        slot.requests += 1
        hang_s = self.deadlines.default_s(slot.manifest)
        limit = hang_s if deadline_s is None else deadline_s
        t0 = time.monotonic()
        end = t0 + limit
        last: WorkerHandle | None = None
        for attempt in (0, 1):
            h = await self._active_by(slot, end, last, limit)
            last = h
            h.inflight += 1
            t_run = time.monotonic()
            try:
                done, out = await watch_progress(
                    h.run(descs, payload), end=end, gap_s=hang_s,
                    last_progress=functools.partial(self._answered, h, t_run),
                    on_stall=functools.partial(self._stalled, h, hang_s))
                if not done:   # counted as an error below
                    raise timeout_error(model, h.variant, h.pid, limit, hung=bool(out))
                result, data = out
                return InferResult(result["outputs"], data, model, h.variant or "?", h.device or "?",
                                   float(result.get("run_ms", 0.0)), float(result.get("cpu_s", 0.0)),
                                   retried=attempt > 0, providers=devmod.providers_ran(h.info))
            except RemoteUnavailable as e:
                if attempt == 1:
                    slot.errors += 1
                    raise
                h.inflight -= 1   # before the failover: the swap drains this worker
                try:
                    await self._failover(slot, h, e)
                finally:
                    h.inflight += 1
            except WorkerDied as e:
                if attempt == 1:
                    slot.errors += 1
                    raise
                log.warning("retrying a %s request after worker %s %s", model, h.pid,
                            "hung" if h.hung else "died", extra={"fields": {"error": str(e)}})
            except AgentError:
                slot.errors += 1
                raise
            finally:
                h.inflight -= 1
        raise Unavailable("unreachable")

    async def _active_by(self, slot: Slot, end: float, last: WorkerHandle | None, limit: float) -> WorkerHandle:
        """The slot's live worker, or Timeout (naming the worker tried before) when ``end`` passes first."""
        try:
            return await self._active(slot, end)
        except _Late:
            slot.errors += 1
            raise timeout_error(slot.manifest.name, last.variant if last else None, last.pid if last else None,
                                limit, hung=bool(last and last.hung), what="had no live worker") from None

    @staticmethod
    def _answered(h: WorkerHandle, since: float) -> float:
        """Progress of a request queued on ``h``: a worker answering other calls meanwhile is busy, not hung."""
        return max(since, h.last_reply)

    @staticmethod
    def _stalled(h: WorkerHandle, limit_s: float, silent_s: float) -> None:
        h.declare_hung(f"no answer for {silent_s:.1f} s (the model's deadline is {limit_s:g} s)")

    async def generate(self, model: str, params: dict[str, Any],
                       on_token: Callable[[dict[str, Any]], None],
                       deadline_s: float | None = None, standby: bool = False) -> dict[str, Any]:
        """Stream a generation from the active variant (``standby``: from the warm standby when one is
        loaded, see Controller.route); it finishes on the variant it started on
        (a swap meanwhile drains this worker after it). Retried once (on the active variant) if the worker
        dies before the first token. ``deadline_s`` bounds the whole generation (Timeout past it); without it,
        only the model's per-token deadline applies: a worker silent that long is declared hung."""
        slot = self.slot(model)
        if slot.manifest.kind != "causal-lm":
            raise InvalidParams(f"model {model!r} is a {slot.manifest.kind} model; use infer")
        slot.requests += 1
        gap_s = self.deadlines.default_s(slot.manifest)
        end = time.monotonic() + (deadline_s if deadline_s is not None else 10 * 365 * 86400.0)
        limit = deadline_s if deadline_s is not None else gap_s
        last: WorkerHandle | None = None
        for attempt in (0, 1):
            sb = self.standby_of(model) if standby and attempt == 0 else None
            h = sb if sb is not None else await self._active_by(slot, end, last, limit)
            last = h
            h.inflight += 1
            sent = 0
            mark = [time.monotonic()]   # when the last token (or the request) went out

            def cb(p: dict[str, Any], payload: memoryview, h: WorkerHandle = h, mark: list[float] = mark) -> None:
                nonlocal sent
                sent += 1
                mark[0] = time.monotonic()
                on_token({**p, "variant": h.variant, "device": h.device})
            try:
                done, res = await watch_progress(
                    h.stream("generate", params, cb), end=end, gap_s=gap_s,
                    last_progress=functools.partial(mark.__getitem__, 0),
                    on_stall=functools.partial(self._stalled, h, gap_s))
                if not done:   # counted as an error below
                    raise timeout_error(model, h.variant, h.pid, limit, hung=bool(res),
                                        what=f"did not finish ({sent} tokens sent)")
                h.requests += 1
                return {**res, "model": model, "variant": h.variant, "device": h.device, "retried": attempt > 0,
                        **({"standby": True} if sb is not None and h is sb else {})}
            except WorkerDied:
                if attempt == 1 or sent:
                    slot.errors += 1
                    raise
            except AgentError:
                slot.errors += 1
                raise
            finally:
                h.inflight -= 1
        raise Unavailable("unreachable")

    async def llm_stats(self, model: str) -> dict[str, Any] | None:
        slot = self.slot(model)
        h = slot.active
        if slot.manifest.kind != "causal-lm" or h is None or not h.alive:
            return None
        res, _ = await h.call("llm_stats", {}, timeout=5)
        return res

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self, initial: dict[str, tuple[str, str]]) -> dict[str, str]:
        """Load the initial variant of each model; returns {model: error} for those that failed."""
        errors: dict[str, str] = {}
        self._refill_spares()
        if self.remote_endpoints():
            await self.probe_remotes()          # so the first decision already knows what is reachable
            self._bg(self._probe_loop())
        for model, (variant, device) in initial.items():
            try:
                await self.swap(model, variant, device, {"why": "startup"})
            except AgentError as e:
                errors[model] = str(e)
        return errors

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a drain grace period, then stop
        self.closing = True
        hs: list[WorkerHandle] = list(self._spares)
        self._spares.clear()
        if self._spare_task is not None:
            self._spare_task.cancel()
        for s in self.slots.values():
            if s.active is not None:
                hs.append(s.active)
            if s.standby is not None:
                hs.append(s.standby)
            hs.extend(s.draining)
        deadline = time.monotonic() + timeout
        await asyncio.gather(*(h.close_lanes(timeout) for h in hs), return_exceptions=True)   # lane requests answered
        # a bounded poll: h.inflight is a plain counter with many decrement sites, not an Event
        while any(h.inflight for h in hs) and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, see above
            await asyncio.sleep(0.01)
        await asyncio.gather(*(h.stop() for h in hs), return_exceptions=True)
        tasks = list(self._tasks) + ([self._spare_task] if self._spare_task is not None else [])
        for t in tasks:
            t.cancel()
        # let them unwind here (a spawn cut short kills its worker) rather than after the loop is gone
        await asyncio.gather(*tasks, return_exceptions=True)
        for h in self._spares:   # filled by a spawn that finished meanwhile
            h.kill()
        self._spares.clear()

    def supervising(self) -> bool:
        """Every model that had a worker has a live one or a restart under way (the watchdog's check)."""
        return all((s.active is not None and s.active.alive) or s.restarting
                   for s in self.slots.values() if s.active is not None or s.restarting)

    def workers_healthy(self) -> bool:
        return all(s.active is not None and s.active.alive for s in self.slots.values() if s.states)

    def status(self, pins: Mapping[str, tuple[str, str]] | None = None) -> dict[str, Any]:
        """Per model: what serves, each variant's state; ``pins`` (the policy's) are shown, not kept here."""
        out = {}
        for name, s in self.slots.items():
            a, pin = s.active, (pins or {}).get(name)
            out[name] = {
                "kind": s.manifest.kind, "reference": s.manifest.reference,
                "active": ({"variant": a.variant, "device": a.device, **a.describe(),
                            "providers": devmod.providers_ran(a.info), "parts": a.info.get("parts"),
                            "remote": a.info.get("remote")} if a else None),
                "pinned": {"variant": pin[0], "device": pin[1]} if pin else None,
                "standby": ({"variant": s.standby.variant, "device": s.standby.device, **s.standby.describe(),
                             "why": s.standby_why} if s.standby is not None else None),
                "requests": s.requests, "errors": s.errors,
                **({"lanes": {**s.lanes, "open": sum(int(w.lanes.get("open", 0)) for w in (a, *s.draining) if w),
                              "cache": a.lanes.get("cache") if a else None,
                              "batching": a.lanes.get("batching") if a else None}}
                   if s.lanes or (a and a.lanes) else {}),
                **(self.fronts[name].stats() if name in self.fronts else {}),
                "variants": {v.id: {"precision": v.precision, "placement": v.placement, **vars(s.state(v.id)),
                                    **({"unfit": v.unfit} if v.unfit else {})} for v in s.manifest.variants},
            }
            remotes = {f"{v.remote.endpoint}/{v.remote.model}": self.reach.get((v.remote.endpoint, v.remote.model))
                       for v in s.manifest.variants if v.remote is not None}
            if remotes:
                out[name]["remotes"] = {k: ({"reachable": r[0], "why": r[1], "at": r[2]} if r else None)
                                        for k, r in remotes.items()}
        return out

