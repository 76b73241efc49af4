"""Serving one tensor model: the response cache, dynamic batching, and submission to the active worker.

A :class:`TensorFront` per model takes requests from the runtime's callback path (no task per request):

    cache hit? ── yes ─► answer now (the variant and device that computed it)
        │ no
    batching on and rows < max_batch? ── no ─► submit alone to the active worker
        │ yes
    queue by (input names, dtypes, trailing dims) ─► stacked along dim 0 up to ``max_batch`` rows,
    run once on one worker, split back per request

Only a variant whose outputs per row were measured at load not to depend on the other rows of a batch
is batched (``batch_invariant`` in the worker's load info): dynamic int8 quantization, for one, takes
one activation scale over the whole batch, so its variants serve requests one by one.

A queued request waits at most ``max_queue_delay_ms``; it goes at once when the batch is full, or when
no batch of this model is running (a lone request on an idle worker is never held back, so batching
costs nothing at low load and forms batches by itself under load). A batch is served by the one
variant that is active when it leaves the queue, and every reply names it and the batch size. A request
whose worker died is retried once (alone or in a new batch) on the slot's next worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from agent.errors import AgentError, WorkerDied
from agent.runtime.cache import Entry, ResponseCache, digest
from agent.runtime.devices import providers_ran
from agent.runtime.handle import WorkerHandle
from agent.runtime.slots import InferResult
from agent.runtime.stacking import group as _group
from agent.runtime.stacking import split as _split
from agent.runtime.stacking import stack as _stack
from agent.zoo.manifest import ServingConfig

log = logging.getLogger("agent.runtime")

Done = Callable[[InferResult | None, AgentError | None], None]


class Pending:
    """One request on its way: its inputs (views of the client's frame), its callback, its cache key."""

    __slots__ = ("descs", "done", "key", "payload", "retried", "rows")

    def __init__(self, descs: list[dict[str, Any]], payload: memoryview, done: Done, key: bytes | None,
                 retried: bool) -> None:
        self.descs, self.payload, self.done, self.key, self.retried = descs, payload, done, key, retried
        self.rows = int(descs[0]["shape"][0]) if descs and descs[0]["shape"] else 1


class TensorFront:
    def __init__(self, model: str, cfg: ServingConfig, active: Callable[[], WorkerHandle | None],
                 wait_active: Callable[[], Awaitable[WorkerHandle]],
                 on_error: Callable[[], None] = lambda: None) -> None:
        self.model, self.cfg = model, cfg
        self.active = active            # the slot's serving worker now, or None
        self.wait_active = wait_active  # waits for one (raises Unavailable)
        self.on_error = on_error
        self.cache = ResponseCache(cfg.cache_bytes)
        self.queues: dict[tuple[Any, ...], list[Pending]] = {}
        self.timers: dict[tuple[Any, ...], asyncio.TimerHandle] = {}
        self.running = 0                # batches of this model on a worker now
        self.batches = 0
        self.batched_requests = 0
        self.max_seen = 0
        self.sizes: dict[int, int] = {}  # requests per batch -> how many batches
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- entry --------------------------------------------------------------------------------------
    def submit(self, descs: list[dict[str, Any]], payload: memoryview, done: Done, retried: bool = False,
               dkey: bytes | None = None) -> bool:
        """Serve one validated request (``dkey``: its descriptions as JSON, when the caller has them);
        False when no worker is serving now (the caller waits for one)."""
        h = self.active()
        if h is None:
            return False
        key = None
        if self.cache.enabled:
            key = digest(dkey if dkey is not None else orjson.dumps(descs), payload)
            e = self.cache.get(h.variant or "?", h.device or "?", key)
            if e is not None:
                done(InferResult(e.outputs, e.data, self.model, e.variant, e.device, e.run_ms, 0.0,
                                 retried=retried, cached=True), None)
                return True
        p = Pending(descs, payload, done, key, retried)
        if self.cfg.batching and p.rows < self.cfg.max_batch and h.info.get("batch_invariant"):
            self._enqueue(p)
        else:
            self._send(h, [p])
        return True

    def on_swap(self) -> None:
        """The active variant changed: nothing computed by the old one may be served from the cache."""
        self.cache.invalidate()

    # -- batching -----------------------------------------------------------------------------------
    def _enqueue(self, p: Pending) -> None:
        g = _group(p.descs)
        q = self.queues.setdefault(g, [])
        q.append(p)
        if self.running == 0 or sum(x.rows for x in q) >= self.cfg.max_batch:
            self._flush(g)
        elif g not in self.timers:
            loop = asyncio.get_running_loop()
            self.timers[g] = loop.call_later(self.cfg.max_queue_delay_ms / 1e3, self._flush, g)

    def _flush(self, g: tuple[Any, ...]) -> None:
        t = self.timers.pop(g, None)
        if t is not None:
            t.cancel()
        q = self.queues.get(g)
        if not q:
            return
        take, rows = 0, 0
        while take < len(q) and (take == 0 or rows + q[take].rows <= self.cfg.max_batch):
            rows += q[take].rows
            take += 1
        batch, rest = q[:take], q[take:]
        if rest:
            self.queues[g] = rest
            self.timers[g] = asyncio.get_running_loop().call_later(self.cfg.max_queue_delay_ms / 1e3, self._flush, g)
        else:
            del self.queues[g]
        h = self.active()
        if h is None:
            self._retry_later(batch, None)
        elif len(batch) > 1 and not h.info.get("batch_invariant"):   # a swap meanwhile: this variant serves alone
            for p in batch:
                self._send(h, [p])
        else:
            self._send(h, batch)

    def _flush_ready(self) -> None:
        """A batch finished: what queued meanwhile goes now, as the next batch."""
        for g in list(self.queues):
            if self.running:
                return
            self._flush(g)

    # -- running ------------------------------------------------------------------------------------
    def _send(self, h: WorkerHandle, batch: list[Pending]) -> None:
        if len(batch) == 1:
            descs, payload = batch[0].descs, batch[0].payload
        else:
            descs, payload = _stack(batch)
        h.inflight += 1
        self.running += 1

        def done(result: dict[str, Any] | None, data: memoryview | None, err: AgentError | None) -> None:
            h.inflight -= 1
            self.running -= 1
            try:
                if err is None:
                    assert result is not None and data is not None
                    self._deliver(h, batch, result, data)
                elif isinstance(err, WorkerDied) and not all(p.retried for p in batch):
                    log.warning("retrying %d %s request(s) after worker %s died", len(batch), self.model, h.pid)
                    self._retry_later(batch, err)
                else:
                    self._fail(batch, err)
            finally:
                if self.queues and self.running == 0:
                    self._flush_ready()
        try:
            h.submit(descs, payload, done)
        except WorkerDied as e:   # it died between active() and now
            h.inflight -= 1
            self.running -= 1
            self._retry_later(batch, e)

    def _deliver(self, h: WorkerHandle, batch: list[Pending], result: dict[str, Any], data: memoryview) -> None:
        variant, device = h.variant or "?", h.device or "?"
        run_ms, cpu_s = float(result.get("run_ms", 0.0)), float(result.get("cpu_s", 0.0))
        n = len(batch)
        providers = providers_ran(h.info)
        if n > 1:
            self.batches += 1
            self.batched_requests += n
            self.sizes[n] = self.sizes.get(n, 0) + 1
            self.max_seen = max(self.max_seen, n)
        if n == 1:
            parts: list[tuple[list[dict[str, Any]], list[Any]]] = [(result["outputs"], [data])]
        else:
            try:
                parts = _split(result["outputs"], data, batch)
            except AgentError as e:
                self._fail(batch, e)
                return
        for p, (descs, bufs) in zip(batch, parts, strict=True):
            if p.key is not None:
                self.cache.put(p.key, Entry(descs, b"".join(bufs), variant, device, run_ms))
            r = InferResult(descs, bufs if n > 1 else bufs[0], self.model, variant, device, run_ms, cpu_s / n,
                            retried=p.retried, batch=n, providers=providers)
            _call(p.done, r, None)

    def _fail(self, batch: list[Pending], err: AgentError) -> None:
        for p in batch:
            self.on_error()
            _call(p.done, None, err)

    def _retry_later(self, batch: list[Pending], err: AgentError | None) -> None:
        async def again(p: Pending) -> None:
            try:
                await self.wait_active()
            except AgentError as e:
                self.on_error()
                _call(p.done, None, e)
                return
            if not self.submit(p.descs, p.payload, p.done, retried=True):
                self.on_error()
                _call(p.done, None, err or WorkerDied(f"no worker of {self.model!r} to retry on"))
        for p in batch:
            if p.retried and err is not None:
                self.on_error()
                _call(p.done, None, err)
                continue
            t = asyncio.ensure_future(again(p))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cache": self.cache.stats() if self.cache.enabled else None}
        if self.cfg.batching:
            h = self.active()
            out["batching"] = {"active_variant_batches": bool(h is not None and h.info.get("batch_invariant")),
                               "max_batch": self.cfg.max_batch, "max_queue_delay_ms": self.cfg.max_queue_delay_ms,
                               "batches": self.batches, "batched_requests": self.batched_requests,
                               "max_batch_seen": self.max_seen,
                               "mean_batch": round(self.batched_requests / self.batches, 2) if self.batches else None,
                               "queued": sum(len(q) for q in self.queues.values())}
        return out


def _call(done: Done, r: InferResult | None, err: AgentError | None) -> None:
    try:
        done(r, err)
    except Exception:
        log.exception("a request's completion callback failed")


def status_lines(model_status: dict[str, Any]) -> list[str]:
    """``agentctl status`` lines for a tensor model's cache and batching (empty when both are off)."""
    out = []
    c = model_status.get("cache")
    if c:
        out.append(f"  response cache: {c['hits']} hits, {c['misses']} misses, {c['entries']} entries, "
                   f"{c['bytes']} of {c['max_bytes']} bytes, {c['evictions']} evictions, "
                   f"{c['invalidations']} invalidations")
    ln = model_status.get("lanes")
    if ln:
        lc = ln.get("cache")
        lb = ln.get("batching")
        out.append(f"  lanes: {ln.get('open', 0)} open, {ln.get('requests', 0)} requests, {ln.get('errors', 0)} errors"
                   + (f"; worker cache {lc['hits']} hits, {lc['entries']} entries, {lc['bytes']} of "
                      f"{lc['max_bytes']} bytes" if lc else "")
                   + (f"; {lb['batches']} batches of up to {lb['max_batch']} ({lb['batched_requests']} requests, "
                      f"largest {lb['max_batch_seen']})" if lb else ""))
    b = model_status.get("batching")
    if b:
        state = "on" if b["active_variant_batches"] else "off for this variant (its rows depend on the batch)"
        out.append(f"  batching {state}: max_batch {b['max_batch']}, delay {b['max_queue_delay_ms']} ms, "
                   f"{b['batches']} batches, mean {b['mean_batch'] or '-'} requests, largest {b['max_batch_seen']}")
    return out
