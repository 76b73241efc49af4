"""Lanes, the worker's side: clients that talk to this worker directly, past the daemon's event loop.

The daemon grants a lane (:meth:`agent.runtime.handle.WorkerHandle.open_lane`) and sends this worker,
over its lane-control socket, one end of a fresh socketpair and two memfds (the client's inputs, this
worker's outputs); the client gets the other end and the same memfds. One thread serves every lane
(a selector over their sockets: no thread per lane to wake, none fighting over the GIL, no second
hop): ``run`` (a tensor request, inline or in the lane's shared memory) and ``ping``, one request at a
time per lane (a client that queues more than ``MAX_QUEUED`` loses its lane). After the last ready
request the thread polls briefly before it blocks (``POLL_S``).

A lane request never fails for the lane's sake: when this worker stops (a swap, a crash) or the daemon
closes its lanes, the client sees its lane end and sends the request the framed way through the daemon,
which retries it like any other. Runs of every lane and of the daemon's framed path take one lock, so
the variant runs one request at a time, as it always did. The lanes' counts (requests, cache hits,
CPU time) go to the daemon with the heartbeat; it records them in telemetry and in the energy
accounting. A model whose manifest opts in to the response cache gets one here too, for lane
requests (:class:`agent.runtime.cache.ResponseCache`; it dies with the worker, so a swap clears it).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson

from agent.errors import InvalidParams, error_payload
from agent.ipc import protocol as P
from agent.ipc.lane import LaneEnd
from agent.ipc.shm import Shm, place
from agent.runtime.backends import Backend, Call
from agent.runtime.cache import Entry, ResponseCache, digest
from agent.runtime.stacking import group, split, stack

log = logging.getLogger("agent.worker")

MAX_LANES = 256           # per worker; the daemon refuses more (the client then uses the framed path)
MAX_QUEUED = 16           # frames queued on one lane; a lane is one request at a time (the client library)
WINDOW = 4096             # service times kept between two reports (the latest ones)
POLL_S = 100e-6           # after the last ready request, the lane loop polls this long before it blocks: a
                          # burst is not slowed by vCPU wake-ups (see protocol.BusyPoll)
COUNTS = ("requests", "hits", "errors")


class LaneServer:
    """Every lane of one worker: one thread for the control socket and all lanes, the shared counts."""

    def __init__(self, ctl: socket.socket, run_lock: threading.Lock, inline_max: int) -> None:
        self.ctl = ctl
        self.run_lock = run_lock
        self.inline_max = inline_max
        self.backend: Backend | None = None
        self.variant = self.device = "?"
        self.cache = ResponseCache(0)
        self._lanes: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)   # notified when a lane finishes a request
        self.busy = 0                                  # lane requests being run now
        self._poll = P.BusyPoll(POLL_S)                # its cpu_s is counted in the lanes' cpu_s
        self.providers: list[str] = []
        self.opened = 0
        self.max_batch = 1
        self.batches = self.batched_requests = self.max_batch_seen = 0
        self.counts = dict.fromkeys(COUNTS, 0)
        self.cpu_s = self.run_ms = 0.0
        self._reported: tuple[Any, ...] = ()
        self._service_ms: collections.deque[float] = collections.deque(maxlen=WINDOW)   # since the last report

    def serve(self, backend: Backend, info: dict[str, Any], params: dict[str, Any]) -> None:
        """The variant is loaded: lanes may run it (its cache bound is ``lane_cache_bytes`` of the load)."""
        from agent.runtime.devices import providers_ran

        self.backend = backend
        self.providers = providers_ran(info)
        self.variant, self.device = str(params.get("variant", "?")), str(params.get("device") or "?")
        self.cache = ResponseCache(max(0, int(params.get("lane_cache_bytes") or 0)))
        # dynamic batching across lanes: only a variant whose rows do not depend on their neighbours
        self.max_batch = max(1, int(params.get("lane_max_batch") or 1)) if info.get("batch_invariant") else 1

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._loop, name="lanes", daemon=True)
        t.start()
        return t

    # -- the loop: one thread, every lane -------------------------------------------------------------
    def _loop(self) -> None:
        """One thread serves every lane (a selector over their sockets and the control socket): requests
        of different lanes are taken in turn, one at a time, with no thread per lane to wake or to fight
        over the GIL. After the last ready request it polls for ``POLL_S`` before it blocks."""
        sel = selectors.DefaultSelector()
        sel.register(self.ctl, selectors.EVENT_READ, None)
        ready: collections.deque[_Lane] = collections.deque()   # lanes with a complete frame queued
        try:
            while True:
                events = sel.select(0) if ready else self._wait(sel)
                for key, _ in events:
                    if key.data is None:
                        if not self._accept(sel):
                            return
                    else:
                        self._read(sel, key.data, ready)
                if ready:
                    batch = [lane for lane in self._take(ready) if lane.frames and not lane.closed]
                    if not batch:
                        continue
                    if len(batch) == 1:
                        self._serve_one(sel, batch[0])
                    else:
                        self._serve_batch(sel, batch)
                    for lane in batch:
                        if lane.frames and not lane.closed:
                            ready.append(lane)
        finally:
            for key in list(sel.get_map().values()):
                if key.data is not None:
                    key.data.close()
            sel.close()

    def _wait(self, sel: selectors.BaseSelector) -> list[Any]:
        return self._poll.wait(lambda: sel.select(0)) or sel.select(None)

    def _accept(self, sel: selectors.BaseSelector) -> bool:
        try:
            msg, fds, _, _ = socket.recv_fds(self.ctl, 4096, 4)
        except OSError:
            return False
        if not msg and not fds:
            return False   # the daemon closed the control socket
        if len(fds) != 3 or self.backend is None:
            for fd in fds:
                os.close(fd)
            log.warning("lane refused: %s", "no variant loaded" if self.backend is None else f"{len(fds)} fds")
            return True
        lane = _Lane(socket.socket(fileno=fds[0]), Shm(fds[1]), Shm(fds[2]))
        sel.register(lane.sock, selectors.EVENT_READ, lane)
        with self._lock:
            self._lanes.add(lane.sock)
            self.opened += 1
        return True

    def _read(self, sel: selectors.BaseSelector, lane: _Lane, ready: collections.deque[_Lane]) -> None:
        had = bool(lane.frames)
        try:
            got = lane.read()
        except Exception as e:  # noqa: BLE001 - a malformed frame ends this lane, never the worker
            log.warning("lane closed on a bad frame: %s", e)
            got = None
        if got is None or len(lane.frames) > MAX_QUEUED:   # EOF (the client left, close_all), an error,
            self._drop(sel, lane)                          # a bad frame, a flood
        elif lane.frames and not had:
            ready.append(lane)

    def _drop(self, sel: selectors.BaseSelector, lane: _Lane) -> None:
        if lane.closed:
            return
        try:
            sel.unregister(lane.sock)
        except (KeyError, ValueError):
            pass
        with self._lock:
            self._lanes.discard(lane.sock)
        lane.close()

    def close_all(self, wait_s: float = 0.0) -> int:
        """Stop taking lane requests (a swap, a stop): each lane ends after the request it is running,
        which is answered (waited for up to ``wait_s``); its client sends what follows through the daemon."""
        with self._lock:
            lanes = list(self._lanes)
        for s in lanes:
            try:
                s.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        end = time.monotonic() + wait_s
        with self._idle:
            while self.busy and time.monotonic() < end:
                self._idle.wait(max(0.0, end - time.monotonic()))
        return len(lanes)

    # -- batching across lanes -----------------------------------------------------------------------
    def _take(self, ready: collections.deque[_Lane]) -> list[_Lane]:
        """The next lane, and (batching on) the other ready lanes whose next request stacks with its own,
        up to ``max_batch`` rows. Nothing waits for a batch: one forms from what queued during the last
        run, so a lone request on an idle worker goes at once."""
        lane = ready.popleft()
        while lane.closed and ready:
            lane = ready.popleft()
        first = _stackable(lane.frames[0]) if self.max_batch > 1 and lane.frames else None
        if first is None:
            return [lane]
        g, rows = first
        batch = [lane]
        for other in list(ready):
            if rows >= self.max_batch:
                break
            nxt = _stackable(other.frames[0]) if other.frames and not other.closed else None
            if nxt is None or nxt[0] != g or rows + nxt[1] > self.max_batch:
                continue
            ready.remove(other)
            batch.append(other)
            rows += nxt[1]
        return batch

    def _serve_batch(self, sel: selectors.BaseSelector, lanes: list[_Lane]) -> None:
        """One run for the head requests of ``lanes`` (cache hits answered first); if the stacked run
        fails (one bad request), each is served alone, so only the bad one gets the error."""
        reqs = [_Req(lane, lane.frames.popleft()) for lane in lanes]
        with self._running():
            todo = [r for r in reqs if not self._answer_from_cache(sel, r)]
            if len(todo) > 1:
                try:
                    descs, payload = stack(todo)
                    assert self.backend is not None
                    with self.run_lock:
                        out = self.backend.run(Call(None, "run", {"inputs": descs}, payload))
                    assert out is not None
                    result, bufs = out
                    data = memoryview(b"".join(bufs)) if len(bufs) > 1 else memoryview(bufs[0])
                    parts = split(result["outputs"], data, todo)
                except Exception:  # noqa: BLE001 - served one by one below: each gets its own answer
                    parts = []
                if parts:
                    self._batched(sel, todo, result, parts)
                    return
            for r in todo:   # alone (a single miss, or a batch that failed); the cache was looked up
                r.lane.frames.appendleft(r.frame)
                self._serve_one(sel, r.lane, lookup=False)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Counts a lane request being run (close_all waits for none to be left)."""
        with self._lock:
            self.busy += 1
        try:
            yield
        finally:
            with self._idle:
                self.busy -= 1
                self._idle.notify_all()

    # -- the worker's response cache (lane requests) ----------------------------------------------------
    def _lookup(self, descs: list[dict[str, Any]], payload: memoryview, lookup: bool = True
                ) -> tuple[bytes | None, Entry | None]:
        """(the request's cache key, its cached entry): (None, None) with the cache off; a hit is counted."""
        if not self.cache.enabled:
            return None, None
        key = digest(orjson.dumps(descs), payload)
        with self._lock:
            e = self.cache.get(self.variant, self.device, key) if lookup else None
            if e is not None:
                self.counts["hits"] += 1
                self.counts["requests"] += 1
        return key, e

    def _hit(self, e: Entry) -> dict[str, Any]:
        return {"outputs": e.outputs, "run_ms": e.run_ms, "cpu_s": 0.0, "cached": True, **self._who()}

    def _store(self, key: bytes | None, descs: list[dict[str, Any]], bufs: list[Any], run_ms: float) -> None:
        """Keep a computed reply (the caller holds ``_lock``)."""
        if key is not None:
            self.cache.put(key, Entry(descs, b"".join(bufs), self.variant, self.device, run_ms))

    def _answer_from_cache(self, sel: selectors.BaseSelector, r: _Req) -> bool:
        r.key, e = self._lookup(r.descs, r.payload)
        if e is None:
            return False
        self._reply(sel, r.lane, r.frame, self._hit(e), [e.data])
        return True

    def _batched(self, sel: selectors.BaseSelector, todo: list[_Req], result: dict[str, Any],
                 parts: list[tuple[list[dict[str, Any]], list[Any]]]) -> None:
        n = len(todo)
        run_ms, cpu_s = float(result.get("run_ms", 0.0)), float(result.get("cpu_s", 0.0))
        with self._lock:
            self.counts["requests"] += n
            self.cpu_s += cpu_s
            self.run_ms += run_ms * n   # each request waited for the whole run
            self.batches += 1
            self.batched_requests += n
            self.max_batch_seen = max(self.max_batch_seen, n)
            for r, (descs, bufs) in zip(todo, parts, strict=True):
                self._store(r.key, descs, bufs, run_ms)
        for r, (descs, bufs) in zip(todo, parts, strict=True):
            self._reply(sel, r.lane, r.frame, {"outputs": descs, "run_ms": run_ms, "cpu_s": cpu_s / n, "batch": n,
                                               **self._who()}, bufs)

    def _reply(self, sel: selectors.BaseSelector, lane: _Lane, f: P.Frame, result: dict[str, Any],
               bufs: list[Any]) -> None:
        res, out = place(result, bufs, lane.shm_out, self.inline_max)
        if not lane.send(P.response(f.header.get("id"), res), out):
            self._drop(sel, lane)

    def _serve_one(self, sel: selectors.BaseSelector, lane: _Lane, lookup: bool = True) -> None:
        f = lane.frames.popleft()
        rid = f.header.get("id")
        t0 = time.perf_counter()
        with self._running():
            try:
                result, bufs = self._handle(f, lane.shm_in, lane.shm_out, lookup)
                header = P.response(rid, result)
            except Exception as e:  # noqa: BLE001 - reported to the client, the lane goes on
                with self._lock:
                    self.counts["errors"] += 1
                header, bufs = P.error_response(rid, error_payload(e)), []
            if not lane.send(header, bufs):
                self._drop(sel, lane)   # a client that does not read its replies loses its lane
            elif f.header.get("method") == "run" and "error" not in header:
                self._service_ms.append((time.perf_counter() - t0) * 1e3)

    def _handle(self, f: P.Frame, shm_in: Shm, shm_out: Shm, lookup: bool = True) -> tuple[dict[str, Any], list[Any]]:
        method, params = f.header.get("method"), f.header.get("params")
        if method == "ping":
            return {"pid": os.getpid(), "variant": self.variant, "device": self.device}, []
        if method != "run":
            raise InvalidParams(f"a lane serves 'run' and 'ping', not {method!r}")
        if not isinstance(params, dict) or not isinstance(params.get("inputs"), list):
            raise InvalidParams("'run' needs params with a list of 'inputs'")
        descs = params["inputs"]
        payload = f.payload
        if params.get("shm"):
            payload = shm_in.view(P.iter_nbytes(descs), params.get("shm_size"))
        key, e = self._lookup(descs, payload, lookup)
        if e is not None:
            return place(self._hit(e), [e.data], shm_out, self.inline_max)
        backend = self.backend
        assert backend is not None
        with self.run_lock:
            out = backend.run(Call(f.header.get("id"), "run", {"inputs": descs}, payload))
        del payload
        assert out is not None
        result, bufs = out
        with self._lock:
            self.counts["requests"] += 1
            self.cpu_s += float(result.get("cpu_s", 0.0))
            self.run_ms += float(result.get("run_ms", 0.0))
            self._store(key, result["outputs"], bufs, float(result.get("run_ms", 0.0)))
        return place({**result, **self._who()}, bufs, shm_out, self.inline_max)

    def _who(self) -> dict[str, Any]:
        return {"variant": self.variant, "device": self.device, "providers": self.providers, "lane": True}

    # -- reporting ----------------------------------------------------------------------------------
    def report(self) -> dict[str, Any] | None:
        """The lanes' totals when they changed since the last report (for the heartbeat), else None."""
        with self._lock:
            now = (self.opened, len(self._lanes), *self.counts.values(), self.cache.bytes, self.batches)
            if now == self._reported:
                return None
            self._reported = now
            times = sorted(self._service_ms)
            self._service_ms.clear()
            window = ({"n": len(times), "mean_ms": round(sum(times) / len(times), 4),
                       "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 4)} if times else None)
            return {"opened": self.opened, "open": len(self._lanes), **self.counts,
                    "cpu_s": round(self.cpu_s + self._poll.cpu_s, 6), "poll_cpu_s": round(self._poll.cpu_s, 6),
                    "run_ms": round(self.run_ms, 3), "window": window,
                    "batching": {"max_batch": self.max_batch, "batches": self.batches,
                                 "batched_requests": self.batched_requests, "max_batch_seen": self.max_batch_seen}
                    if self.max_batch > 1 else None,
                    "cache": self.cache.stats() if self.cache.enabled else None, "at": time.time()}


def _stackable(f: P.Frame) -> tuple[tuple[Any, ...], int] | None:
    """(input group, rows) of an inline ``run`` request that may join a batch, else None."""
    params = f.header.get("params")
    if f.header.get("method") != "run" or not isinstance(params, dict) or params.get("shm"):
        return None
    descs = params.get("inputs")
    try:
        rows = int(descs[0]["shape"][0])   # type: ignore[index]
        return group(descs), rows            # type: ignore[arg-type]
    except (TypeError, KeyError, IndexError, ValueError):
        return None


class _Req:
    """One request of a batch (stacking.Rows): its lane, frame, inputs, rows, cache key."""

    __slots__ = ("descs", "frame", "key", "lane", "payload", "rows")

    def __init__(self, lane: _Lane, frame: P.Frame) -> None:
        self.lane, self.frame = lane, frame
        params = frame.header["params"]
        self.descs: list[dict[str, Any]] = params["inputs"]
        self.payload: memoryview = frame.payload
        self.rows = int(self.descs[0]["shape"][0])
        self.key: bytes | None = None


class _Lane(LaneEnd):
    """The worker's end of one lane (its socket read with MSG_DONTWAIT on readiness) and its frames."""

    def __init__(self, sock: socket.socket, shm_in: Shm, shm_out: Shm) -> None:
        super().__init__(sock, shm_in, shm_out)
        self.asm = P.FrameAssembler()
        self.frames: collections.deque[P.Frame] = collections.deque()

    def read(self) -> int | None:
        """Take what the socket holds now into complete frames; None at EOF or on an error."""
        n_total = 0
        while True:
            buf = self.asm.get_buffer()
            room = len(buf)
            try:
                n = self.sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return n_total
            except OSError:
                return None
            finally:
                buf.release()   # the assembler may grow its buffer next time: no view may be alive
            if n == 0:
                return None
            n_total += n
            for f in self.asm.buffer_updated(n):
                if isinstance(f, Exception):
                    raise f
                self.frames.append(f)
            if n < room:          # the socket is drained (the selector reports it again when more comes):
                return n_total    # no second recv that could only fail with EAGAIN

    def send(self, header: dict[str, Any], bufs: list[Any]) -> bool:
        """The reply, without blocking (False: the peer's buffer is full or the lane is gone)."""
        parts = P.encode(header, bufs)
        total = sum(memoryview(x).nbytes for x in parts)
        try:
            return self.sock.sendmsg(parts, [], socket.MSG_DONTWAIT) == total
        except OSError:
            return False
