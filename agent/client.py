"""Client library for agentd: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

    from agent.client import Client
    with Client() as c:                       # socket from $AGENT_SOCKET or the system default
        r = c.infer("mlp", {"x": x})          # -> InferResult(outputs, variant, device, latency_ms, ...)
        r.outputs["y"], r.variant, r.device

Tensor requests without QoS hints go over a *lane* (:mod:`agent.ipc.lane`) when the daemon grants one:
straight to the worker serving the model, past the daemon's event loop; a swap ends the lane and the
request is sent through the daemon instead (``Client(lanes=False)`` or ``AGENT_LANES=0`` turns lanes off).

Errors come back as the agent's own exception types (:mod:`agent.errors`), rebuilt from the JSON-RPC
error code, e.g. ``NotFound`` for an unknown model, ``InvalidParams`` for a wrong dtype or shape.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import AgentError, ConnectionClosed, ProtocolError, Unavailable, error_from_jsonrpc
from agent.ipc import protocol as P
from agent.ipc.lane import Lane, LaneClosed, open_lane
from agent.paths import default_socket

LANE_RETRY_S = 2.0   # after the daemon refused a lane to a model, ask again no sooner than this
LANE_OPEN_S = 5.0    # the longest a lane grant may take (then the request goes framed)
LANE_AFTER = 2       # requests to a model that go framed before a lane is asked for: a one-shot client
                     # (agentctl infer) would only pay for the lane (a grant round trip, two memfds, a thread)


@dataclass
class Chunk:
    """One streamed piece of a generation; the last has ``finish_reason``, ``usage``, ``variant``, ``device``."""

    text: str
    index: int | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    variant: str | None = None
    device: str | None = None
    result: dict[str, Any] | None = None


def _gen_params(model: str, prompt: str | None, messages: list[dict[str, Any]] | None,
                params: dict[str, Any]) -> dict[str, Any]:
    p: dict[str, Any] = {"model": model, **params}
    if messages is not None:
        p["messages"] = messages
    elif prompt is not None:
        p["prompt"] = prompt
    return p


def _final_chunk(res: dict[str, Any]) -> Chunk:
    return Chunk(res.get("tail", ""), None, res.get("finish_reason"), res.get("usage"), res.get("variant"),
                 res.get("device"), res)


@dataclass
class InferResult:
    outputs: dict[str, np.ndarray]
    model: str
    variant: str
    device: str
    latency_ms: float          # round trip seen by this client
    server_ms: float           # time inside the daemon
    run_ms: float              # time inside session.run in the worker
    retried: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _infer_result(res: dict[str, Any], payload: memoryview, t0: float) -> InferResult:
    outs = P.tensors_from(res.get("outputs", []), payload)
    return InferResult(outs, res.get("model", ""), res.get("variant", ""), res.get("device", ""),
                       (time.perf_counter() - t0) * 1e3, float(res.get("server_ms", 0.0)),
                       float(res.get("run_ms", 0.0)), bool(res.get("retried", False)),
                       {k: v for k, v in res.items() if k not in ("outputs",)})


def _sock_path(path: str | os.PathLike[str] | None) -> str:
    return str(path) if path is not None else str(default_socket())


class Client:
    """Blocking client. Requests on one connection are matched by id, so a stream may stay open while
    the same client (or another thread) makes other calls: whoever reads the socket keeps each frame
    for the request it belongs to."""

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float | None = 120.0,
                 max_frame: int = P.DEFAULT_MAX_FRAME, lanes: bool = True) -> None:
        self.path = _sock_path(path)
        self.max_frame = max_frame
        self.lanes = lanes and os.environ.get("AGENT_LANES", "1") != "0"
        self._lanes: dict[str, Lane] = {}
        self._no_lane: dict[str, float] = {}   # model -> monotonic time before which no lane is asked for
        self._framed: collections.Counter[str] = collections.Counter()   # requests sent framed, per model
        self._lane_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._cv = threading.Condition()   # guards _inbox and _reading (one reader of the socket at a time)
        self._inbox: dict[int, collections.deque[P.Frame]] = {}
        self._reading = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        P.widen(self.sock)
        try:
            self.sock.connect(self.path)
        except OSError as e:
            self.sock.close()
            raise ConnectionClosed(f"cannot connect to agentd at {self.path}: {e.strerror or e}") from None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lane_lock:
            for lane in self._lanes.values():
                lane.close()
            self._lanes.clear()
        self.sock.close()

    def _lane(self, model: str, eager: bool = False) -> Lane | None:
        """This client's lane to ``model`` (asked for after LANE_AFTER framed requests, or at once when
        ``eager``), or None (not yet, refused lately, or lanes off)."""
        with self._lane_lock:
            lane = self._lanes.get(model)
            if lane is not None and not lane.closed:
                return lane
            if time.monotonic() < self._no_lane.get(model, 0.0):
                return None
            if self._framed[model] < LANE_AFTER and not eager:
                self._framed[model] += 1
                return None
            try:
                t = self.sock.gettimeout()
                lane = open_lane(self.path, model, min(t, LANE_OPEN_S) if t is not None else LANE_OPEN_S)
            except AgentError:
                self._no_lane[model] = time.monotonic() + LANE_RETRY_S
                return None
            self._lanes[model] = lane
            return lane

    def _on_lane(self, model: str, descs: list[dict[str, Any]], bufs: list[Any], t0: float) -> InferResult | None:
        """The request over this client's lane; None when it must go through the daemon instead: no
        lane, the lane busy with another thread, the lane ended (a swap), or an error (the daemon's path
        gives the error its full context, e.g. the expected signature)."""
        lane = self._lane(model)
        if lane is None or not lane.lock.acquire(blocking=False):
            return None
        try:
            res, payload = lane.call("run", {"inputs": descs}, bufs)
        except (LaneClosed, AgentError):
            return None
        finally:
            lane.lock.release()
        res["model"] = model
        return _infer_result(res, payload, t0)

    def lane_ping(self, model: str) -> dict[str, Any]:
        """One round trip on this client's lane to ``model``'s worker, no work (Unavailable: no lane)."""
        lane = self._lane(model, eager=True)
        if lane is None:
            raise Unavailable(f"no lane to {model!r} (refused lately, or lanes are off)")
        with lane.lock:
            try:
                return lane.call("ping", {})[0]
            except LaneClosed as e:
                raise Unavailable(f"the lane to {model!r} ended: {e}") from None

    def _open(self) -> int:
        with self._cv:
            rid = next(self._ids)
            self._inbox[rid] = collections.deque()
            return rid

    def _forget(self, rid: int) -> None:
        with self._cv:
            self._inbox.pop(rid, None)

    def _send(self, header: Mapping[str, Any], buffers: list[Any] | tuple[Any, ...] = ()) -> None:
        with self._send_lock:
            P.send_frame(self.sock, header, list(buffers))

    def _next(self, rid: int) -> P.Frame:
        """The next frame of request ``rid`` (its ``token`` notifications, then its reply). Frames of the
        other open requests read meanwhile are kept for them; an error without an id is raised."""
        while True:
            with self._cv:
                while not self._inbox[rid] and self._reading:
                    self._cv.wait()
                if self._inbox[rid]:
                    return self._inbox[rid].popleft()
                self._reading = True
            try:
                f: P.Frame | None = P.recv_frame(self.sock, self.max_frame)
            except BaseException:
                with self._cv:
                    self._reading = False
                    self._cv.notify_all()
                raise
            assert f is not None
            hd = f.header
            to = (hd.get("params") or {}).get("id") if hd.get("method") == "token" else hd.get("id")
            with self._cv:   # kept for its request before the next reader starts (none waits on a kept frame)
                self._reading = False
                if to != rid and isinstance(to, int) and to in self._inbox:
                    self._inbox[to].append(f)
                    f = None
                self._cv.notify_all()
            if f is None:
                continue
            if to == rid:
                return f
            if "error" in hd and hd.get("id") is None:
                raise error_from_jsonrpc(hd["error"])
            # anything else (an event, a late token of a cancelled stream) belongs to nobody here

    def call(self, method: str, params: Mapping[str, Any] | None = None,
             buffers: list[Any] | tuple[Any, ...] = ()) -> tuple[Any, memoryview]:
        rid = self._open()
        try:
            self._send(P.request(rid, method, params), buffers)
            while True:
                f = self._next(rid)
                if "method" not in f.header:
                    break
        except (EOFError, OSError) as e:
            refusal = self._last_word()
            if refusal is not None:  # e.g. PermissionDenied: refused at connect, closed before we sent
                raise refusal from None
            raise ConnectionClosed(f"agentd closed the connection: {e}") from None
        finally:
            self._forget(rid)
        if "error" in f.header:
            raise error_from_jsonrpc(f.header["error"])
        return f.header.get("result"), f.payload

    def _last_word(self) -> AgentError | None:
        """An error the daemon sent before closing the connection, if one is still unread."""
        try:
            self.sock.settimeout(0.5)
            f = P.recv_frame(self.sock, self.max_frame)
        except (EOFError, OSError, AgentError):
            return None
        err = f.header.get("error")
        return error_from_jsonrpc(err) if isinstance(err, dict) and f.header.get("id") is None else None

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], **qos: Any) -> InferResult:
        """One inference; ``qos``: ``deadline_ms``, ``min_quality``, ``priority`` (a request that no
        variant can finish within its deadline raises DeadlineInfeasible at once)."""
        descs, bufs = P.tensor_descs(inputs)
        t0 = time.perf_counter()
        if self.lanes and all(v is None for v in qos.values()):
            r = self._on_lane(model, descs, list(bufs), t0)
            if r is not None:
                return r
        res, payload = self.call("infer", {"model": model, "inputs": descs, **qos}, bufs)
        return _infer_result(res, payload, t0)

    def generate(self, model: str, prompt: str | None = None, *, messages: list[dict[str, Any]] | None = None,
                 **params: Any) -> Iterator[Chunk]:
        """Stream a generation. Stopping the iteration early cancels it in the daemon. ``params`` include the
        sampling keys and the QoS keys ``deadline_ms``, ``min_quality``, ``priority``. Other calls on this
        client may be made while the stream is open."""
        rid = self._open()
        done = False
        try:
            self._send(P.request(rid, "generate", _gen_params(model, prompt, messages, params)))
            while True:
                hd = self._next(rid).header
                if hd.get("method") == "token":
                    p = hd["params"]
                    yield Chunk(p.get("text", ""), p.get("index"))
                elif "method" not in hd:
                    done = True
                    if "error" in hd:
                        raise error_from_jsonrpc(hd["error"])
                    yield _final_chunk(hd.get("result") or {})
                    return
        except (EOFError, OSError) as e:
            done = True
            raise ConnectionClosed(f"agentd closed the connection: {e}") from None
        finally:
            try:
                if not done:   # the caller stopped early: cancel, then read up to the final reply
                    self._send(P.request(None, "cancel", {"id": rid}))
                    while "method" in self._next(rid).header:
                        pass
            except (EOFError, OSError, AgentError):
                pass
            finally:
                self._forget(rid)

    def complete(self, model: str, prompt: str | None = None, **kw: Any) -> Chunk:
        """The whole generation at once (the final chunk, whose ``result['text']`` is the full text)."""
        last = None
        for chunk in self.generate(model, prompt, **kw):
            last = chunk
        assert last is not None
        return last

    def models(self) -> Any:
        return self.call("models")[0]

    def ping(self) -> Any:
        """The bare round trip to agentd (no model work)."""
        return self.call("ping")[0]

    def status(self) -> Any:
        return self.call("status")[0]

    def pin(self, model: str, variant: str, device: str = "") -> Any:
        return self.call("pin", {"model": model, "variant": variant, "device": device})[0]

    def unpin(self, model: str) -> Any:
        return self.call("unpin", {"model": model})[0]

    def hold(self, profile: str, reason: str = "") -> str:
        return str(self.call("hold", {"profile": profile, "reason": reason})[0]["cookie"])

    def release(self, cookie: str) -> Any:
        return self.call("release", {"cookie": cookie})[0]

    def reload(self) -> Any:
        return self.call("reload")[0]

    def history(self, since: str = "1h", tables: list[str] | None = None) -> Any:
        return self.call("history", {"since": since, "tables": tables})[0]

    def events(self) -> Iterator[dict[str, Any]]:
        """Subscribe on this connection and yield events until it closes (use a dedicated Client)."""
        self.call("subscribe")
        while True:
            try:
                f = P.recv_frame(self.sock, self.max_frame)
            except (EOFError, OSError):
                return
            if f.header.get("method") == "event":
                yield f.header.get("params") or {}


class AsyncClient:
    """asyncio client: many requests in flight on one connection, matched by id."""

    def __init__(self, path: str | os.PathLike[str] | None = None, max_frame: int = P.DEFAULT_MAX_FRAME) -> None:
        self.path = _sock_path(path)
        self.max_frame = max_frame
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._streams: dict[int, asyncio.Queue[Any]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> AsyncClient:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=1 << 20)
        except OSError as e:
            raise ConnectionClosed(f"cannot connect to agentd at {self.path}: {e.strerror or e}") from None
        self._task = asyncio.ensure_future(self._read_loop())
        return self

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - best-effort close: futures already failed
                pass

    async def _read_loop(self) -> None:
        assert self._reader is not None
        err: AgentError = ConnectionClosed("agentd closed the connection")
        try:
            while True:
                pre = await self._reader.readexactly(8)
                n, h = struct.unpack("<II", pre)
                if n > self.max_frame or n < 4:
                    raise ProtocolError(f"bad frame length {n}")
                body = await self._reader.readexactly(n - 4)
                f = P.parse_body(body, h)
                hd = f.header
                if hd.get("method") == "event":
                    self._events.put_nowait(hd.get("params") or {})
                    continue
                if hd.get("method") == "token":
                    sid = (hd.get("params") or {}).get("id")
                    q = self._streams.get(sid) if isinstance(sid, int) else None
                    if q is not None:
                        q.put_nowait(hd["params"])
                    continue
                rid = hd.get("id")
                fut = self._pending.pop(rid, None) if isinstance(rid, int) else None
                if fut is None or fut.done():
                    continue
                if "error" in hd:
                    fut.set_exception(error_from_jsonrpc(hd["error"]))
                else:
                    fut.set_result((hd.get("result"), f.payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except AgentError as e:
            err = e
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self._pending.clear()
            self._events.put_nowait(None)

    async def call(self, method: str, params: Mapping[str, Any] | None = None,
                   buffers: list[Any] | tuple[Any, ...] = ()) -> tuple[Any, memoryview]:
        if self._writer is None or self._task is None or self._task.done():
            raise ConnectionClosed("not connected")
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._writer.writelines(P.encode(P.request(rid, method, params), list(buffers)))
        await self._writer.drain()
        return await fut

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], **qos: Any) -> InferResult:
        descs, bufs = P.tensor_descs(inputs)
        t0 = time.perf_counter()
        res, payload = await self.call("infer", {"model": model, "inputs": descs, **qos}, bufs)
        return _infer_result(res, payload, t0)

    async def generate(self, model: str, prompt: str | None = None, *,
                       messages: list[dict[str, Any]] | None = None, **params: Any) -> AsyncIterator[Chunk]:
        """Stream a generation; closing the iterator early (or cancelling the task) cancels it."""
        if self._writer is None or self._task is None or self._task.done():
            raise ConnectionClosed("not connected")
        rid = next(self._ids)
        q: asyncio.Queue[Any] = asyncio.Queue()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._streams[rid] = q
        fut.add_done_callback(lambda f: q.put_nowait(None))
        done = False
        try:
            self._writer.writelines(P.encode(P.request(rid, "generate", _gen_params(model, prompt, messages, params))))
            await self._writer.drain()
            while True:
                item = await q.get()
                if item is None:
                    break
                yield Chunk(item.get("text", ""), item.get("index"))
            done = True
            while not q.empty():
                item = q.get_nowait()
                if item is not None:
                    yield Chunk(item.get("text", ""), item.get("index"))
            res, _ = fut.result()
            yield _final_chunk(res)
        finally:
            self._streams.pop(rid, None)
            if not done and self._writer is not None and not self._writer.is_closing():
                self._writer.writelines(P.encode(P.request(None, "cancel", {"id": rid})))

    async def status(self) -> Any:
        return (await self.call("status"))[0]

    async def models(self) -> Any:
        return (await self.call("models"))[0]

    async def ping(self) -> Any:
        return (await self.call("ping"))[0]

    async def pin(self, model: str, variant: str, device: str = "") -> Any:
        return (await self.call("pin", {"model": model, "variant": variant, "device": device}))[0]

    async def unpin(self, model: str) -> Any:
        return (await self.call("unpin", {"model": model}))[0]

    async def hold(self, profile: str, reason: str = "") -> str:
        return str((await self.call("hold", {"profile": profile, "reason": reason}))[0]["cookie"])

    async def release(self, cookie: str) -> Any:
        return (await self.call("release", {"cookie": cookie}))[0]

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        await self.call("subscribe")
        while True:
            ev = await self._events.get()
            if ev is None:
                return
            yield ev


def wait_for_socket(path: str | os.PathLike[str], timeout: float = 30.0) -> None:
    """Block until agentd answers ``status`` on ``path`` (for scripts and tests)."""
    end = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < end:
        if Path(path).exists():
            try:
                with Client(path, timeout=5) as c:
                    c.status()
                    return
            except AgentError as e:
                last = e
        time.sleep(0.05)
    raise ConnectionClosed(f"agentd did not answer on {path} within {timeout}s ({last})")
