"""Daemon-side handle of one worker process: spawn, call, stream, stop.

The handle speaks the frame protocol over a socketpair with an asyncio protocol (no thread per worker),
and moves large tensors through two memfds shared with the worker (inputs in, outputs out).

Tensor requests go through :meth:`WorkerHandle.submit`, a callback API with no task, lock or future:
the worker runs requests in arrival order, so small ones are pipelined (the next one already waits in
the socket when a run ends). The two shared buffers are one *token*: the request holding it may put
its inputs in ``shm_in`` and get its outputs back in ``shm_out``; others travel inline. A request with
large inputs waits for the token; a small one takes it when free, else goes inline both ways.

Hang detection: the worker sends a ``heartbeat`` notification every ``heartbeat_s`` from a thread
(ONNX Runtime releases the GIL while it loads and runs, so a busy worker still beats). Any bytes from
the worker count as a sign of life. A worker that stays silent for ``hang_after_s`` (a SIGSTOPped
process, a stuck driver holding the GIL), or that the runtime finds past a request's deadline, is
*declared hung* (:meth:`WorkerHandle.declare_hung`): SIGKILLed, its pending calls and submitted
requests fail with :class:`~agent.errors.WorkerHung`, and ``on_death`` lets the manager replace it as
after a crash. A stalled event loop is not blamed on the workers: a watch tick that comes late restarts
the count.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import mmap
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import AgentError, WorkerDied, WorkerHung, error_from_jsonrpc
from agent.ipc import protocol as P
from agent.ipc.shm import INLINE_MAX

log = logging.getLogger(__name__)
HEARTBEAT_S = 0.5     # the worker's beat period
HANG_AFTER_S = 3.0    # silence after which a worker is declared hung
REAP_S = 30.0         # how long a background reaper waits for a killed or disconnected worker to exit


class _Shm:
    def __init__(self, name: str, size: int) -> None:
        self.fd = os.memfd_create(name, 0)
        os.ftruncate(self.fd, size)
        self.size = size
        self.mm = mmap.mmap(self.fd, size)

    def ensure(self, n: int) -> None:
        if n > self.size:
            new = max(n, self.size * 2)
            os.ftruncate(self.fd, new)
            _close_map(self.mm)
            self.mm = mmap.mmap(self.fd, new)
            self.size = new

    def remap(self) -> None:
        size = os.fstat(self.fd).st_size
        if size != self.size:
            _close_map(self.mm)
            self.mm = mmap.mmap(self.fd, size)
            self.size = size

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:
            pass
        os.close(self.fd)


def _close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:   # a caller still holds a view: the map goes when the view does
        pass


# done(result, data, error): ``data`` is valid only during the call (it may view shared memory)
Done = Callable[[dict[str, Any] | None, memoryview | None, AgentError | None], None]


class _Req:
    __slots__ = ("descs", "done", "payload", "token")

    def __init__(self, descs: list[dict[str, Any]], payload: memoryview, done: Done) -> None:
        self.descs, self.payload, self.done, self.token = descs, payload, done, False


class _Proto(asyncio.BufferedProtocol):
    def __init__(self, handle: WorkerHandle) -> None:
        self.h = handle
        self.reader = P.FrameAssembler(max_frame=(1 << 32) - 1)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.h.last_seen = time.monotonic()   # any bytes are a sign of life (see _watch)
        try:
            frames = self.reader.buffer_updated(nbytes)
        except AgentError as e:
            log.error("worker %s sent a bad frame: %s", self.h.pid, e)
            self.h._transport.close()  # type: ignore[union-attr]
            return
        for f in frames:
            if isinstance(f, P.Frame):
                self.h._on_frame(f)

    def connection_lost(self, exc: Exception | None) -> None:
        self.h._on_lost()


def _package_root() -> str:
    import agent

    return str(Path(agent.__file__).resolve().parent.parent)


class WorkerHandle:
    """One worker process. Create with :meth:`spawn`; then :meth:`load`, :meth:`run`, :meth:`stop`."""

    _ids = itertools.count(1)

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._runs: dict[int, _Req] = {}           # submitted tensor requests by id
        self._token_free = True                    # the shared buffers (see the module doc)
        self._token_wait: collections.deque[_Req] = collections.deque()
        self._fd = -1
        self._streams: dict[int, Callable[[dict[str, Any], memoryview], None]] = {}
        self._hello: asyncio.Future[Any] | None = None
        self._lock = asyncio.Lock()
        self.alive = False
        self.stopping = False
        self.inflight = 0
        self.info: dict[str, Any] = {}
        self.variant: str | None = None
        self.model: str | None = None
        self.device: str | None = None
        self.on_death: Callable[[WorkerHandle], None] | None = None
        self.started = time.monotonic()
        self.cpu_s = 0.0
        self.requests = 0
        self.shm_in: _Shm
        self.shm_out: _Shm
        self.last_seen = time.monotonic()
        self.last_reply = 0.0                   # when it last answered a call (monotonic)
        self.active_since: float | None = None  # when the manager made it a slot's active worker
        self.hung: str | None = None          # why it was declared hung, once it was
        self._watch_task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[bool] | None = None
        self._lane_ctl: socket.socket | None = None   # lanes go to the worker over this (agent.runtime.lanes)
        self.lanes: dict[str, Any] = {}               # the worker's last lane report (heartbeat)
        self.on_lanes: Callable[[WorkerHandle, dict[str, Any], dict[str, Any]], None] | None = None

    @classmethod
    async def spawn(cls, shm_size: int = 4 << 20, start_timeout: float = 60.0, *,
                    heartbeat_s: float = HEARTBEAT_S, hang_after_s: float = HANG_AFTER_S,
                    backend: str = "auto", backend_config: str = "{}") -> WorkerHandle:
        """Start a worker process; ``backend`` names what will run its variant (agent.runtime.backends:
        ``auto`` by the load's kind; ``fake`` for tests, with ``backend_config`` its JSON settings)."""
        h = cls()
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        P.widen(parent)
        P.widen(child)
        h._lane_ctl, lane_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        h.shm_in = _Shm("agent-in", shm_size)
        h.shm_out = _Shm("agent-out", shm_size)
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, "-m", "agent.runtime.worker", "--fd", str(child.fileno()),
               "--shm-in", str(h.shm_in.fd), "--shm-out", str(h.shm_out.fd), "--inline-max", str(INLINE_MAX),
               "--heartbeat", str(heartbeat_s), "--backend", backend, "--backend-config", backend_config,
               "--lane-fd", str(lane_child.fileno())]
        h.proc = subprocess.Popen(  # noqa: ASYNC220 - returns once the child is exec'd; exited() polls and reaps it
            cmd, pass_fds=(child.fileno(), h.shm_in.fd, h.shm_out.fd, lane_child.fileno()), env=env,
            stdin=subprocess.DEVNULL, start_new_session=False)
        child.close()
        lane_child.close()
        h.pid = h.proc.pid
        h._hello = loop.create_future()
        # a start cancelled mid-way (a runtime closing) leaves the shielded hello to fail later, unawaited
        h._hello.add_done_callback(lambda f: f.cancelled() or f.exception())
        parent.setblocking(False)
        try:
            h._transport, _ = await loop.create_unix_connection(lambda: _Proto(h), sock=parent)
            h._fd = P.transport_fd(h._transport)
            h.alive = True
            await asyncio.wait_for(asyncio.shield(h._hello), start_timeout)
        except (TimeoutError, WorkerDied) as e:
            h.kill()
            raise WorkerDied(f"worker did not start: {e or 'timeout'}") from None
        except BaseException:
            h.kill()   # cancelled mid-start (a runtime closing): nobody else will ever stop this process
            if h._transport is None:
                parent.close()
            raise
        h.start_watch(heartbeat_s, hang_after_s)
        return h

    # -- hang detection -----------------------------------------------------------------------------
    def start_watch(self, heartbeat_s: float, hang_after_s: float) -> None:
        self.last_seen = time.monotonic()
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(max(0.05, heartbeat_s / 2), hang_after_s), name=f"watch-worker-{self.pid}")

    async def _watch(self, period: float, hang_after_s: float) -> None:
        last_tick = time.monotonic()
        while self.alive:
            await asyncio.sleep(period)
            now = time.monotonic()
            if now - last_tick > max(4 * period, 1.0):
                # the daemon's own loop was stalled: the worker's beats may sit unread in the socket
                self.last_seen = now
            last_tick = now
            silent = now - self.last_seen
            if silent > hang_after_s:
                self.declare_hung(f"no heartbeat for {silent:.1f} s (limit {hang_after_s:g} s)")
                return

    def declare_hung(self, why: str) -> None:
        """The worker stopped answering: SIGKILL it (works on a stopped process too); its pending calls
        fail with WorkerHung and ``on_death`` runs, so the manager replaces it as after a crash."""
        if self.hung is not None or not self.alive:
            return
        self.hung = why
        log.error("worker declared hung", extra={"fields": {
            "pid": self.pid, "model": self.model, "variant": self.variant, "why": why}})
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._transport is not None:
            self._transport.close()   # connection_lost -> _on_lost now, not when the kernel notices

    # -- protocol callbacks -------------------------------------------------------------------------
    def _on_frame(self, f: P.Frame) -> None:
        hd = f.header
        if hd.get("method") == "heartbeat":
            lanes = (hd.get("params") or {}).get("lanes")
            if isinstance(lanes, dict):
                before, self.lanes = self.lanes, lanes
                if self.on_lanes is not None:
                    try:
                        self.on_lanes(self, before, lanes)
                    except Exception:
                        log.exception("lane report callback failed")
            return
        if hd.get("method") == "hello":
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(hd.get("params"))
            return
        if hd.get("method") == "event":  # a streamed partial result of a pending request
            params = hd.get("params") or {}
            cb = self._streams.get(params.get("id", -1))
            if cb is not None:
                cb(params, f.payload)
            return
        if hd.get("method") == "events":  # several streams' events in one frame (backends.llm.coalesce_events)
            for params in (hd.get("params") or {}).get("events") or ():
                cb = self._streams.get(params.get("id", -1))
                if cb is not None:
                    cb(params, f.payload)
            return
        rid = hd.get("id")
        self.last_reply = time.monotonic()   # it answers: busy with a queue is not hung (manager deadlines)
        req = self._runs.pop(rid, None) if isinstance(rid, int) else None
        if req is not None:
            self._ran(req, hd, f.payload)
            return
        fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if fut is None or fut.done():
            return
        if "error" in hd:
            fut.set_exception(error_from_jsonrpc(hd["error"]))
        else:
            fut.set_result((hd.get("result"), f.payload))

    def _on_lost(self) -> None:
        was_alive = self.alive
        self.alive = False
        self._close_lane_ctl()   # no lane can be granted to a worker that is gone
        if self._watch_task is not None and self._watch_task is not asyncio.current_task():
            self._watch_task.cancel()
        err: WorkerDied = (WorkerHung(f"worker {self.pid} ({self.model}/{self.variant}) hung: {self.hung}; killed",
                                      data={"model": self.model, "variant": self.variant, "pid": self.pid})
                           if self.hung else WorkerDied(f"worker {self.pid} ({self.model}/{self.variant}) died"))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        runs = [*self._runs.values(), *self._token_wait]
        self._runs.clear()
        self._token_wait.clear()
        for req in runs:
            req.done(None, None, err)
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(err)
        self._reap_later()   # never wait for the process here: this runs on the event loop
        if was_alive and not self.stopping and self.on_death is not None:
            self.on_death(self)

    # -- calls --------------------------------------------------------------------------------------
    async def call(self, method: str, params: dict[str, Any], bufs: list[Any] | None = None,
                   timeout: float | None = None,  # noqa: ASYNC109 - handle API: bounds the reply wait only
                   on_event: Callable[[dict[str, Any], memoryview], None] | None = None) -> tuple[Any, memoryview]:
        if not self.alive or self._transport is None:
            raise WorkerDied(f"worker {self.pid} is not running")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if on_event is not None:
            self._streams[rid] = on_event
        try:
            self._transport.writelines(P.encode(P.request(rid, method, params), bufs or []))
            if timeout is None:
                return await fut
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(rid, None)
            self._streams.pop(rid, None)

    async def stream(self, method: str, params: dict[str, Any],
                     on_event: Callable[[dict[str, Any], memoryview], None]) -> Any:
        """A call whose partial results arrive as events; cancelling the awaiting task cancels it in the worker."""
        if not self.alive or self._transport is None:
            raise WorkerDied(f"worker {self.pid} is not running")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._streams[rid] = on_event
        try:
            self._transport.writelines(P.encode(P.request(rid, method, params)))
            result, _ = await fut
            return result
        except asyncio.CancelledError:
            if self.alive and self._transport is not None:
                self._transport.writelines(P.encode(P.request(next(self._ids), "cancel", {"id": rid})))
            raise
        finally:
            self._pending.pop(rid, None)
            self._streams.pop(rid, None)

    async def load(self, params: dict[str, Any],
                   timeout: float = 600.0) -> dict[str, Any]:  # noqa: ASYNC109 - passed on to call()
        async with self._lock:
            result, _ = await self.call("load", params, timeout=timeout)
        self.info = result
        return result

    def submit(self, descs: list[dict[str, Any]], payload: memoryview, done: Done) -> None:
        """Queue one tensor request; ``done(result, data, error)`` is called once, from the event loop.
        Raises :class:`WorkerDied` at once when the worker is not running."""
        if not self.alive or self._transport is None:
            raise WorkerDied(f"worker {self.pid} is not running")
        req = _Req(descs, payload, done)
        if self._token_free:
            self._token_free = False
            req.token = True
            self._send_run(req)
        elif len(payload) > INLINE_MAX:
            self._token_wait.append(req)
        else:
            self._send_run(req)

    def _send_run(self, req: _Req) -> None:
        rid = next(self._ids)
        n = len(req.payload)
        if req.token and n > INLINE_MAX:
            self.shm_in.ensure(n)
            self.shm_in.mm[:n] = req.payload
            parts = P.encode(P.request(rid, "run", {"inputs": req.descs, "shm": True, "shm_out": True}))
        else:
            parts = P.encode(P.request(rid, "run", {"inputs": req.descs, "shm_out": req.token}), [req.payload])
        self._runs[rid] = req
        assert self._transport is not None
        P.write_parts(self._transport, self._fd, parts)

    def _ran(self, req: _Req, hd: dict[str, Any], payload: memoryview) -> None:
        try:
            if "error" in hd:
                req.done(None, None, error_from_jsonrpc(hd["error"]))
                return
            result = hd.get("result") or {}
            self.requests += 1
            self.cpu_s += float(result.get("cpu_s", 0.0))
            if result.get("shm"):
                self.shm_out.remap()
                view = memoryview(self.shm_out.mm)[:P.iter_nbytes(result["outputs"])]
                try:
                    req.done(result, view, None)
                finally:
                    view.release()
            else:
                req.done(result, payload, None)
        except Exception:
            log.exception("a request's completion callback failed")
        finally:
            if req.token:
                self._pass_token()

    def _pass_token(self) -> None:
        if self._token_wait and self.alive:
            nxt = self._token_wait.popleft()
            nxt.token = True
            self._send_run(nxt)
        else:
            self._token_free = True

    async def run(self, descs: list[dict[str, Any]], payload: memoryview) -> tuple[dict[str, Any], bytes]:
        """Run one request; returns (result header, output bytes)."""
        fut: asyncio.Future[tuple[dict[str, Any], bytes]] = asyncio.get_running_loop().create_future()

        def done(result: dict[str, Any] | None, data: memoryview | None, err: AgentError | None) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(err)
            else:
                assert result is not None and data is not None
                fut.set_result((result, bytes(data)))
        self.submit(descs, payload, done)
        return await fut

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a grace period before SIGKILL
        """Ask the worker to exit; kill it if it does not."""
        self.stopping = True
        if self.alive:
            try:
                await self.call("exit", {}, timeout=timeout)
            except (TimeoutError, AgentError):
                pass
        if self.proc is not None and not await self.exited(timeout):
            self.kill()
            await self.exited(5.0)
        if self._transport is not None:
            self._transport.close()
        self._close_shm()

    def kill(self) -> None:
        """SIGKILL the worker and close its channel. Does not wait: the process is reaped in the
        background (``await exited()`` to wait for it), so a swap or a restart never blocks the loop."""
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap_later()
        if self._transport is not None:
            self._transport.close()
        self._close_shm()

    async def exited(self, timeout: float) -> bool:  # noqa: ASYNC109 - returns False when it passes (no cancel)
        """Wait (without blocking the loop) up to ``timeout`` s for the process to exit; reaps it."""
        end = time.monotonic() + timeout
        step = 0.005
        while self.proc is not None and self.proc.poll() is None:
            left = end - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(step, left))
            step = min(step * 2, 0.25)
        return True

    def _reap_later(self) -> None:
        """Collect the exit status once the process is gone (no zombie), from a task on the loop: nothing
        here waits or even polls, the task does on the loop's next turns."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if self._reaper is not None and not self._reaper.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # no loop (a synchronous caller): nobody's loop to block
            try:
                self.proc.wait(timeout=REAP_S)
            except subprocess.TimeoutExpired:
                pass
            return
        self._reaper = loop.create_task(self._reap(), name=f"reap-worker-{self.pid}")

    async def _reap(self) -> bool:
        try:
            return await self.exited(REAP_S)
        except asyncio.CancelledError:
            # the loop is shutting down: collect a SIGKILLed process (gone in moments) rather than leave
            # it unreaped; a bounded wait, on this path only
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            raise

    # -- lanes --------------------------------------------------------------------------------------
    def open_lane(self) -> list[int]:
        """A direct lane to this worker (:mod:`agent.runtime.lanes`): the worker gets one end of a new
        socketpair and two fresh memfds; returns the client's end and the same memfds (the caller sends
        them on and closes them). Raises :class:`WorkerDied` when the worker is gone."""
        if not self.alive or self._lane_ctl is None:
            raise WorkerDied(f"worker {self.pid} is not running")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [os.memfd_create("agent-lane-in", os.MFD_CLOEXEC), os.memfd_create("agent-lane-out", os.MFD_CLOEXEC)]
        try:   # each end is widened where it is used (agent.ipc.lane.LaneEnd)
            socket.send_fds(self._lane_ctl, [b"lane"], [theirs.fileno(), *fds])
        except OSError as e:
            for fd in fds:
                os.close(fd)
            mine.close()
            raise WorkerDied(f"worker {self.pid} did not take a lane: {e}") from None
        finally:
            theirs.close()
        return [mine.detach(), *fds]

    async def close_lanes(self, timeout: float = 10.0) -> int:  # noqa: ASYNC109 - passed on to call()
        """End the worker's lanes after the request each one is running (their clients go on through
        the daemon, then open a lane to the new active worker); returns how many were open."""
        if not self.alive or not self.lanes.get("open"):
            return 0
        try:
            res, _ = await self.call("lanes_close", {"wait_s": max(0.0, timeout - 0.5)}, timeout=timeout)
        except (TimeoutError, AgentError):
            return 0
        return int((res or {}).get("closed", 0))

    def _close_lane_ctl(self) -> None:
        if self._lane_ctl is not None:
            self._lane_ctl.close()
            self._lane_ctl = None

    def _close_shm(self) -> None:
        self._close_lane_ctl()
        for s in (getattr(self, "shm_in", None), getattr(self, "shm_out", None)):
            if s is not None and s.fd >= 0:
                try:
                    s.close()
                except OSError:
                    pass
                s.fd = -1

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "alive": self.alive, "inflight": self.inflight, "requests": self.requests,
                "silent_s": round(time.monotonic() - self.last_seen, 2),
                "cpu_s": round(self.cpu_s, 4), "device": self.device,
                "rss_bytes": self.info.get("rss_bytes"), "providers": self.info.get("providers"),
                "assignment": self.info.get("assignment")}
