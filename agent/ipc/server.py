"""The daemon's Unix-socket server: frames in, JSON-RPC dispatch, frames out.

Every request runs as its own task so one connection may have many in flight; replies carry the
request's id. A method may also have a *fast* handler (``Server.fast``): called synchronously from the
protocol callback with a :class:`Reply`, it answers later from a callback with no task or future per
request (tensor ``infer``), or declines and the request takes the task path. A malformed frame gets a
JSON-RPC error reply (the connection survives when the frame boundary is known, and is closed after the
reply when it is not, e.g. an oversized length prefix).
Peers are identified with SO_PEERCRED; ``authorize(peer, method)`` may refuse a call.

Connection lifecycle (stalled clients cost nothing):

* a frame must be complete within ``frame_timeout_s`` of its first byte, else the connection gets a
  ``ProtocolError`` and is closed (a client that trickles bytes, or announces a length and stops);
* a peer that half-closes in the middle of a frame gets a ``ProtocolError`` for it;
* while a connection's replies pile up unread (its write buffer over the high-water mark) nothing more
  is read from it, and if it stays so for ``stall_timeout_s`` it is aborted (a stream it stopped reading);
* a connection with nothing in flight, nothing half-received, no subscription and no hold is *idle*:
  when its uid reaches the connection limit, :meth:`Server.evict_idle` closes the idle one that has
  been quiet longest (never-used ones first) to make room, so idle connections do not hold the limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import AgentError, Busy, MethodNotFound, ProtocolError
from agent.ipc import protocol as P
from agent.ipc.peer import peer_groups

log = logging.getLogger(__name__)

# the JSON-RPC id of the request a handler is serving (handlers that stream partial results use it)
REQUEST_ID: contextvars.ContextVar[Any] = contextvars.ContextVar("REQUEST_ID", default=None)
# methods whose handler task is cancelled when the client disconnects or sends ``cancel``
CANCELLABLE = frozenset({"generate"})


@dataclass(eq=False)
class Peer:
    pid: int
    uid: int
    gid: int
    conn_id: int
    groups: frozenset[int] = frozenset()  # supplementary groups at connect time (SO_PEERGROUPS)
    inflight: int = 0
    subscribed: bool = False
    send: Callable[[dict[str, Any], list[Any]], None] = field(default=lambda h, b: None, repr=False)
    close: Callable[[], None] = field(default=lambda: None, repr=False)
    cancel: Callable[[Any], bool] = field(default=lambda rid: False, repr=False)
    # a handler that makes this connection a lane's lease calls it first (Server.on_lease may refuse)
    lease: Callable[[], None] = field(default=lambda: None, repr=False)


@dataclass(frozen=True)
class WithFds:
    """A handler's result that carries file descriptors (SCM_RIGHTS) with its reply frame; the server
    closes its copies once they are sent (or could not be)."""
    result: Any
    fds: list[int]


# a handler gets (peer, params, payload) and returns (result, buffers); the result may be a WithFds
Handler = Callable[[Peer, dict[str, Any], memoryview], Awaitable[tuple[Any, list[Any]]]]


class Reply:
    """The one answer to a request taken by a fast handler: call :meth:`ok` or :meth:`fail` once,
    from the event loop's thread. Buffers passed to :meth:`ok` may be views of shared memory: they are
    written out (or copied) before it returns."""

    __slots__ = ("conn", "done", "rid")

    def __init__(self, conn: _Conn, rid: Any) -> None:
        self.conn, self.rid, self.done = conn, rid, False

    def ok(self, result: Any, bufs: list[Any]) -> None:
        if self.done:
            return
        self.done = True
        if self.rid is not None:
            self.conn.send(P.response(self.rid, result), bufs)
        self.conn._settle()

    def fail(self, err: AgentError) -> None:
        if self.done:
            return
        self.done = True
        self.conn.send(P.error_response(self.rid, err.to_jsonrpc()), [])
        self.conn._settle()


# a fast handler gets (peer, params, payload, reply); True: it took the request and answers through
# ``reply``; False: it declined (the request runs as a task through the normal handler)
FastHandler = Callable[[Peer, dict[str, Any], memoryview, Reply], bool]


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        return pid, uid, gid
    except OSError:
        return -1, -1, -1


class _Conn(asyncio.BufferedProtocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.reader = P.FrameAssembler(server.max_frame)
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.peer: Peer | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.cancellable: dict[Any, asyncio.Task[Any]] = {}
        self.closed = False
        self.eof = False
        # lifecycle (see the module docstring); monotonic seconds
        self.opened = self.last_active = time.monotonic()
        self.frames = 0
        self.partial_since: float | None = None   # first byte of a frame not yet complete
        self.paused_since: float | None = None    # our replies are piling up unread since
        self.closing_since: float | None = None
        self.released = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            P.widen(sock)
        self.fd = P.transport_fd(transport)
        pid, uid, gid = peer_credentials(sock) if sock is not None else (-1, -1, -1)
        groups = peer_groups(sock, pid, uid, gid) if sock is not None and uid >= 0 else frozenset()
        self.server._next_id += 1
        self.peer = Peer(pid, uid, gid, self.server._next_id, groups=groups, send=self.send, close=self.close,
                         cancel=self.cancel_request, lease=self._lease)
        self.server.conns.add(self)
        transport.set_write_buffer_limits(high=self.server.write_high)  # type: ignore[attr-defined]
        self.server._connecting = self   # not a candidate for evict_idle while it is being admitted
        try:
            deny = self.server.on_connect(self.peer) if self.server.on_connect else None
        finally:
            self.server._connecting = None
        if deny:
            self.send(P.error_response(None, deny.to_jsonrpc()), [])
            self.close()

    def send(self, header: dict[str, Any], bufs: list[Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            P.write_parts(self.transport, self.fd, P.encode(header, bufs))

    def send_fds(self, header: dict[str, Any], fds: list[int]) -> None:
        """One small frame with ``fds`` attached, written to the socket directly: only when nothing of
        ours is queued before it (else Busy; the frame must not overtake queued bytes)."""
        try:
            if self.transport is None or self.transport.is_closing() or self.fd < 0:
                return
            if self.transport.get_write_buffer_size():
                raise Busy("replies are queued on this connection; ask for the lane again")
            dup = socket.socket(fileno=os.dup(self.fd))   # the same socket; closing the dup leaves it open
            try:
                socket.send_fds(dup, [P.encode_bytes(header)], fds)
            except OSError as e:
                raise Busy(f"could not pass the file descriptors: {e}") from None
            finally:
                dup.close()
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self) -> None:
        if self.transport is not None:
            if self.closing_since is None:
                self.closing_since = time.monotonic()
            self.transport.close()

    # -- lifecycle ----------------------------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing in flight, half received or unread, no subscription, no hold: safe to close."""
        p = self.peer
        if p is None or p.inflight or p.subscribed or self.reader.pending() or self.closing_since is not None:
            return False
        if self.transport is not None and self.transport.get_write_buffer_size():
            return False
        return not (self.server.is_held is not None and self.server.is_held(p))

    def release(self) -> None:
        """Give the peer's counts back (on_disconnect) once, whether evicted or disconnected."""
        if self.released or self.peer is None:
            return
        self.released = True
        if self.server.on_disconnect is not None:
            try:
                self.server.on_disconnect(self.peer)
            except Exception:
                log.exception("on_disconnect failed")

    def close_with(self, err: AgentError, why: str) -> None:
        """Answer with ``err`` (id null), then close; logged with the peer and the reason."""
        p = self.peer
        log.warning("closing connection", extra={"fields": {
            "why": why, "pid": p.pid if p else None, "uid": p.uid if p else None,
            "conn": p.conn_id if p else None, "frames": self.frames}})
        self.send(P.error_response(None, err.to_jsonrpc()), [])
        self.close()

    def pause_writing(self) -> None:
        self.paused_since = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()   # no new requests while the replies are not read

    def resume_writing(self) -> None:
        self.paused_since = None
        if self.partial_since is not None:   # we stopped reading it: the frame's clock starts again
            self.partial_since = time.monotonic()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _lease(self) -> None:
        if self.server.on_lease is not None and self.peer is not None:
            self.server.on_lease(self.peer)

    def cancel_request(self, rid: Any) -> bool:
        t = self.cancellable.get(rid)
        if t is None or t.done():
            return False
        t.cancel()
        return True

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            frames = self.reader.buffer_updated(nbytes)
        except ProtocolError as e:  # oversized or impossible length prefix: answer, then close
            self.send(P.error_response(None, e.to_jsonrpc()), [])
            self.close()
            return
        now = time.monotonic()
        if frames:
            self.frames += len(frames)
            self.last_active = now
            self.partial_since = now if self.reader.pending() else None
        elif self.partial_since is None:
            self.partial_since = now
        for f in frames:
            if isinstance(f, ProtocolError):
                self.send(P.error_response(None, f.to_jsonrpc()), [])
            else:
                self._dispatch(f)

    def _dispatch(self, f: P.Frame) -> None:
        h = f.header
        rid = h.get("id")
        bad_id = not isinstance(rid, (int, str)) and rid is not None
        if bad_id:
            rid = None
        try:
            if bad_id:   # answered (id null) rather than run silently: its reply could not name it
                raise ProtocolError("'id' must be a string, an integer or null")
            if h.get("jsonrpc") != "2.0" or not isinstance(h.get("method"), str):
                raise ProtocolError("expected a JSON-RPC 2.0 request with a string 'method'")
            params = h.get("params", {})
            if not isinstance(params, dict):
                raise ProtocolError("'params' must be an object")
            method = h["method"]
            handler = self.server.handlers.get(method)
            if handler is None:
                raise MethodNotFound(f"unknown method {method!r}")
            assert self.peer is not None
            if self.peer.inflight >= self.server.max_inflight:
                raise Busy(f"too many requests in flight on this connection (limit {self.server.max_inflight})")
            if self.server.authorize is not None:
                self.server.authorize(self.peer, method)
        except AgentError as e:
            self.send(P.error_response(rid, e.to_jsonrpc()), [])
            return
        # counted now, not when the task first runs: several frames of one read are dispatched before
        # any task starts, and limits and the shutdown drain must see all of them
        self.peer.inflight += 1
        self.server.inflight += 1
        fast = self.server.fast.get(method)
        if fast is not None and self._fast(fast, rid, params, f.payload):
            return
        t = asyncio.ensure_future(self._run(handler, rid, params, f.payload))
        self.tasks.add(t)
        t.add_done_callback(self._finished)  # also runs for a task cancelled before it started
        if method in CANCELLABLE and rid is not None:
            self.cancellable[rid] = t
            t.add_done_callback(functools.partial(self._forget, rid))

    def _fast(self, fast: FastHandler, rid: Any, params: dict[str, Any], payload: memoryview) -> bool:
        assert self.peer is not None
        reply = Reply(self, rid)
        try:
            return fast(self.peer, params, payload, reply)
        except AgentError as e:
            reply.fail(e)
        except Exception as e:  # a bug in a handler must not kill the daemon
            log.exception("fast handler failed")
            reply.fail(AgentError(f"internal error: {type(e).__name__}: {e}"))
        return True

    def _forget(self, rid: Any, _task: asyncio.Task[Any]) -> None:
        self.cancellable.pop(rid, None)

    async def _run(self, handler: Handler, rid: Any, params: dict[str, Any], payload: memoryview) -> None:
        assert self.peer is not None
        REQUEST_ID.set(rid)
        try:
            result, bufs = await handler(self.peer, params, payload)
            if isinstance(result, WithFds):
                self.send_fds(P.response(rid, result.result), result.fds)
            elif rid is not None:
                self.send(P.response(rid, result), bufs)
        except AgentError as e:
            self.send(P.error_response(rid, e.to_jsonrpc()), [])
        except asyncio.CancelledError:
            if rid is not None and not self.closed:
                self.send(P.response(rid, {"cancelled": True}), [])
            raise
        except Exception as e:  # a bug in a handler must not kill the daemon
            log.exception("handler failed")
            self.send(P.error_response(rid, AgentError(f"internal error: {type(e).__name__}: {e}").to_jsonrpc()), [])

    def _finished(self, t: asyncio.Task[Any]) -> None:
        self.tasks.discard(t)
        self.last_active = time.monotonic()
        self._settle()

    def _settle(self) -> None:
        """One request of this connection is answered (task or fast path)."""
        assert self.peer is not None
        self.peer.inflight -= 1
        self.server.inflight -= 1
        if self.server.on_done is not None:
            self.server.on_done(self.peer)
        if self.eof and self.peer.inflight == 0:
            self.close()  # the peer half-closed: its last reply is out, now close

    def eof_received(self) -> bool:
        """The peer shut down its write side: answer what it already sent, then close."""
        self.eof = True
        n = self.reader.pending()
        if n:
            self.send(P.error_response(None, ProtocolError(
                f"connection half-closed in the middle of a frame ({n} bytes of it received)").to_jsonrpc()), [])
            self.reader = P.FrameAssembler(self.server.max_frame)
            self.partial_since = None
        return self.peer is not None and self.peer.inflight > 0  # True keeps the transport open

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        for t in list(self.cancellable.values()):   # a client that left does not need its stream
            t.cancel()
        self.release()


async def _ping(peer: Peer, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
    return {"pong": True}, []


def _ping_now(peer: Peer, params: dict[str, Any], payload: memoryview, reply: Reply) -> bool:
    reply.ok({"pong": True}, [])
    return True


def claim_socket_path(path: Path) -> None:
    """Make ``path`` free to bind: create its folder, remove a stale socket; raise if another agent is
    listening there or the path is something else. agentd calls it before loading any model, so a
    second daemon on a taken socket fails at once instead of after loading its zoo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if path.is_socket() and not _socket_in_use(path):
            path.unlink()
        elif path.is_socket():
            raise AgentError(f"another agent is already listening on {path}")
        else:
            raise AgentError(f"{path} exists and is not a socket; refusing to replace it")


class Server:
    """``ping`` is built in: the bare round trip (frames, dispatch, access checks; no handler work)."""

    def __init__(self, handlers: dict[str, Handler], *, max_frame: int = P.DEFAULT_MAX_FRAME,
                 max_inflight: int = 64,
                 authorize: Callable[[Peer, str], None] | None = None,
                 on_connect: Callable[[Peer], AgentError | None] | None = None,
                 on_disconnect: Callable[[Peer], None] | None = None,
                 frame_timeout_s: float = 5.0, stall_timeout_s: float = 5.0,
                 write_high: int = 4 << 20) -> None:
        self.handlers = {"ping": _ping, **handlers}
        self.fast: dict[str, FastHandler] = {"ping": _ping_now}   # synchronous fronts of methods (see Reply)
        self.frame_timeout_s = frame_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.write_high = write_high
        self.is_held: Callable[[Peer], bool] | None = None   # e.g. the peer holds a profile: never evict it
        self._sweeper: asyncio.Task[None] | None = None
        self._connecting: _Conn | None = None
        self.closed_stalled = 0   # connections closed by the sweeper or evicted (status, tests)
        self.evicted = 0
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.authorize = authorize
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_done: Callable[[Peer], None] | None = None  # after each authorized request (limits)
        self.on_lease: Callable[[Peer], None] | None = None  # a connection becomes a lane's lease (limits)
        self.conns: set[_Conn] = set()
        self.inflight = 0
        self._next_id = 0
        self._server: asyncio.base_events.Server | None = None
        self.path: Path | None = None

    async def start(self, path: Path | None = None, sock: socket.socket | None = None, mode: int = 0o660) -> None:
        loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_forever(), name="ipc-sweeper")
        if sock is not None:  # socket activation: systemd owns the path and its permissions
            sock.setblocking(False)
            self._server = await loop.create_unix_server(lambda: _Conn(self), sock=sock)
            return
        assert path is not None
        claim_socket_path(path)
        old = os.umask(0o777 & ~mode)
        try:
            self._server = await loop.create_unix_server(lambda: _Conn(self), path=str(path), backlog=1024)
        finally:
            os.umask(old)
        self.path = path

    # -- connection lifecycle -----------------------------------------------------------------------
    async def _sweep_forever(self, period: float = 0.5) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                self.sweep(time.monotonic())
            except Exception:   # the sweeper must outlive a bug in one connection's bookkeeping
                log.exception("connection sweep failed")

    def sweep(self, now: float) -> None:
        """Close connections that stalled: a frame not completed in time, replies not read, a close
        that cannot flush."""
        for c in list(self.conns):
            if c.transport is None:
                continue
            if c.closing_since is not None:
                if now - c.closing_since > self.stall_timeout_s:
                    c.transport.abort()   # it never read its last words
                continue
            if c.paused_since is not None and now - c.paused_since > self.stall_timeout_s:
                self.closed_stalled += 1
                log.warning("aborting connection", extra={"fields": {
                    "why": f"replies unread for {now - c.paused_since:.1f} s",
                    "pid": c.peer.pid if c.peer else None, "uid": c.peer.uid if c.peer else None,
                    "buffered": c.transport.get_write_buffer_size()}})
                c.transport.abort()
            elif (c.paused_since is None and c.partial_since is not None
                  and now - c.partial_since > self.frame_timeout_s):
                self.closed_stalled += 1
                n = c.reader.pending()
                c.close_with(ProtocolError(
                    f"no complete frame within {self.frame_timeout_s:g} s ({n} bytes of one received); closing",
                    data={"received": n, "timeout_s": self.frame_timeout_s}), "frame not completed in time")

    def evict_idle(self, uid: int) -> bool:
        """Close the idle connection of ``uid`` that has been quiet longest (never-used first), to make
        room for a new one; False when none is idle."""
        idle = [c for c in self.conns
                if c is not self._connecting and c.peer is not None and c.peer.uid == uid and c.idle()]
        if not idle:
            return False
        c = min(idle, key=lambda c: (c.frames > 0, c.last_active))
        self.evicted += 1
        c.release()
        c.close_with(Busy(f"closed: this connection was idle for {time.monotonic() - c.last_active:.1f} s and uid "
                          f"{uid} needed its place under the connection limit",
                          data={"idle_s": round(time.monotonic() - c.last_active, 1)}), "idle, evicted")
        return True

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - returns False when it passes (no cancel)
        """Wait until no request is in flight or half-received (True), or the timeout passes (False)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        idle = 0
        # idle on 3 checks in a row: a request whose bytes sit in the kernel's socket buffer when the
        # stop signal arrives is read (and counted) by the loop between checks, not dropped
        while idle < 3 and loop.time() < end:
            idle = 0 if self.busy() else idle + 1
            await asyncio.sleep(0.01)
        return not self.busy()

    def busy(self) -> bool:
        """A request in flight, half received, or a reply not yet written out."""
        return self.inflight > 0 or any(
            c.reader.pending() or (c.transport is not None and c.transport.get_write_buffer_size())
            for c in self.conns)

    async def close(self) -> None:
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self.drain(5.0)   # replies still in the write buffers go out first
        for c in list(self.conns):
            c.close()
        if self._server is not None:
            await self._server.wait_closed()
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:
                pass

    def broadcast(self, header: dict[str, Any]) -> None:
        for c in list(self.conns):
            if c.peer is not None and c.peer.subscribed:
                c.send(header, [])


def _socket_in_use(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
