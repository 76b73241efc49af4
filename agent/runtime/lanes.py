"""Lanes, the worker's side: clients that talk to this worker directly, past the daemon's event loop.

The daemon grants a lane (:meth:`agent.runtime.handle.WorkerHandle.open_lane`) and sends this worker,
over its lane-control socket, one end of a fresh socketpair and two memfds (the client's inputs, this
worker's outputs); the client gets the other end and the same memfds. Each lane is served by its own
thread with a blocking read, so a request wakes the thread that runs it (no event loop, no task, no
second hop): ``run`` (a tensor request, inline or in the lane's shared memory) and ``ping``.

A lane request never fails for the lane's sake: when this worker stops (a swap, a crash) or the daemon
closes its lanes, the client sees its lane end and sends the request the framed way through the daemon,
which retries it like any other. Runs of every lane and of the daemon's framed path take one lock, so
the variant runs one request at a time, as it always did. The lanes' counts (requests, cache hits,
CPU time) go to the daemon with the heartbeat; it records them in telemetry and in the demand the
policy sees. A model whose manifest opts in to the response cache gets one here too, for lane
requests (:class:`agent.runtime.cache.ResponseCache`; it dies with the worker, so a swap clears it).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import threading
import time
from typing import Any

import orjson

from agent.errors import InvalidParams, error_payload
from agent.ipc import protocol as P
from agent.ipc.shm import Shm, place
from agent.runtime.backends import Backend, Call
from agent.runtime.cache import Entry, ResponseCache, digest

log = logging.getLogger("agent.worker")

MAX_LANES = 256           # per worker; the daemon refuses more (the client then uses the framed path)
WINDOW = 4096             # service times kept between two reports (the latest ones)
POLL_S = 100e-6           # after a reply, one lane thread at a time polls this long for the next request
                          # before blocking (P.poll_readable): a burst is not slowed by vCPU wake-ups
COUNTS = ("requests", "hits", "errors")


class LaneServer:
    """Every lane of one worker: the control socket's reader, one thread per lane, the shared counts."""

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
        self._poll_token = threading.Lock()            # held by the one lane thread polling now
        self.poll_cpu_s = 0.0                          # CPU time spent polling (counted in cpu_s)
        self.providers: list[str] = []
        self.opened = 0
        self.counts = dict.fromkeys(COUNTS, 0)
        self.cpu_s = self.run_ms = 0.0
        self._reported: tuple[Any, ...] = ()
        self._service_ms: collections.deque[float] = collections.deque(maxlen=WINDOW)   # since the last report

    @property
    def used(self) -> bool:
        return self.opened > 0

    def serve(self, backend: Backend, info: dict[str, Any], params: dict[str, Any]) -> None:
        """The variant is loaded: lanes may run it (its cache bound is ``lane_cache_bytes`` of the load)."""
        from agent.runtime.devices import providers_ran

        self.backend = backend
        self.providers = providers_ran(info)
        self.variant, self.device = str(params.get("variant", "?")), str(params.get("device") or "?")
        self.cache = ResponseCache(max(0, int(params.get("lane_cache_bytes") or 0)))

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._accept, name="lanes", daemon=True)
        t.start()
        return t

    def _accept(self) -> None:
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(self.ctl, 4096, 4)
            except OSError:
                return
            if not msg and not fds:
                return   # the daemon closed the control socket
            if len(fds) != 3 or self.backend is None:
                for fd in fds:
                    os.close(fd)
                log.warning("lane refused: %s", "no variant loaded" if self.backend is None else f"{len(fds)} fds")
                continue
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(True)
            P.widen(sock)
            with self._lock:
                self._lanes.add(sock)
                self.opened += 1
            threading.Thread(target=self._serve_lane, args=(sock, Shm(fds[1]), Shm(fds[2])),
                             name=f"lane-{self.opened}", daemon=True).start()

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

    # -- one lane -----------------------------------------------------------------------------------
    def _serve_lane(self, sock: socket.socket, shm_in: Shm, shm_out: Shm) -> None:
        frames = P.SocketFrames(sock)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        try:
            while True:
                if not frames.ready and self._poll_token.acquire(blocking=False):
                    c0 = time.thread_time()
                    try:
                        P.poll_readable(poller, POLL_S)
                    finally:
                        self.poll_cpu_s += time.thread_time() - c0   # one poller at a time: no lost update
                        self._poll_token.release()
                try:
                    f = frames.next()
                except (EOFError, OSError):
                    return
                except Exception as e:  # noqa: BLE001 - a malformed frame ends this lane, never the worker
                    log.warning("lane closed on a bad frame: %s", e)
                    return
                rid = f.header.get("id")
                t0 = time.perf_counter()
                with self._lock:
                    self.busy += 1
                try:
                    result, bufs = self._handle(f, shm_in, shm_out)
                    P.send_frame(sock, P.response(rid, result), bufs)
                    if f.header.get("method") == "run":
                        self._service_ms.append((time.perf_counter() - t0) * 1e3)
                except OSError:
                    return
                except Exception as e:  # noqa: BLE001 - reported to the client, the lane goes on
                    with self._lock:
                        self.counts["errors"] += 1
                    try:
                        P.send_frame(sock, P.error_response(rid, error_payload(e)))
                    except OSError:
                        return
                finally:
                    with self._idle:
                        self.busy -= 1
                        self._idle.notify_all()
        finally:
            with self._lock:
                self._lanes.discard(sock)
            sock.close()
            shm_in.close()
            shm_out.close()

    def _handle(self, f: P.Frame, shm_in: Shm, shm_out: Shm) -> tuple[dict[str, Any], list[Any]]:
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
        key = None
        if self.cache.enabled:
            key = digest(orjson.dumps(descs), payload)
            with self._lock:
                e = self.cache.get(self.variant, self.device, key)
                if e is not None:
                    self.counts["hits"] += 1
                    self.counts["requests"] += 1
            if e is not None:
                return place({"outputs": e.outputs, "run_ms": e.run_ms, "cpu_s": 0.0, "cached": True,
                              **self._who()}, [e.data], shm_out, self.inline_max)
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
            if key is not None:
                self.cache.put(key, Entry(result["outputs"], b"".join(bytes(b) for b in bufs), self.variant,
                                          self.device, float(result.get("run_ms", 0.0))))
        return place({**result, **self._who()}, bufs, shm_out, self.inline_max)

    def _who(self) -> dict[str, Any]:
        return {"variant": self.variant, "device": self.device, "providers": self.providers, "lane": True}

    # -- reporting ----------------------------------------------------------------------------------
    def report(self) -> dict[str, Any] | None:
        """The lanes' totals when they changed since the last report (for the heartbeat), else None."""
        with self._lock:
            now = (self.opened, len(self._lanes), *self.counts.values(), self.cache.bytes)
            if now == self._reported:
                return None
            self._reported = now
            times = sorted(self._service_ms)
            self._service_ms.clear()
            window = ({"n": len(times), "mean_ms": round(sum(times) / len(times), 4),
                       "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 4)} if times else None)
            return {"opened": self.opened, "open": len(self._lanes), **self.counts,
                    "cpu_s": round(self.cpu_s + self.poll_cpu_s, 6), "poll_cpu_s": round(self.poll_cpu_s, 6),
                    "run_ms": round(self.run_ms, 3), "window": window,
                    "cache": self.cache.stats() if self.cache.enabled else None, "at": time.time()}
