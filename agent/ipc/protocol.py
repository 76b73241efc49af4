"""Wire format shared by the client socket and the daemon<->worker channel.

A frame is::

    u32 LE  body length N (everything after these 4 bytes)
    u32 LE  header length H
    H bytes JSON header (UTF-8): a JSON-RPC 2.0 request, response or notification
    N-4-H   payload: the raw buffers of the tensors named in the header, back to back

Tensors are described in the header as ``{"name": ..., "dtype": "float32", "shape": [1, 3]}`` in a
list (``params.inputs`` / ``result.outputs``); their bytes follow in the same order, C-contiguous,
little-endian. The reader checks the length prefix against a maximum *before* reading the body, and
checks that the payload is exactly as long as the described tensors.
"""

from __future__ import annotations

import collections
import os
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from agent.errors import FrameTooLarge, InvalidParams, ProtocolError

PREFIX = struct.Struct("<II")
DEFAULT_MAX_FRAME = 256 * 1024 * 1024
MAX_HEADER = 1024 * 1024
WIRE_DTYPES = frozenset({
    "float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
})
MAX_RANK = 16
# numpy computes dtype.name on every access (~7 µs): look names and dtypes up instead
_NAME_OF: dict[np.dtype, str] = {np.dtype(n): n for n in WIRE_DTYPES}
_DTYPE_OF: dict[str, np.dtype] = {n: np.dtype(n) for n in WIRE_DTYPES}


_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def dumps(obj: Any) -> bytes:
    """JSON for headers. orjson: ~10x faster than the standard library on these small headers, and
    headers are encoded and decoded four times per request on the hot path (see benchmarks/)."""
    return orjson.dumps(obj, default=_json_default, option=_JSON_OPTS)


def encode(header: Mapping[str, Any], buffers: Sequence[bytes | memoryview] = ()) -> list[bytes | memoryview]:
    """The parts of one frame, ready for ``sendmsg``/``writelines`` (buffers are not copied)."""
    h = dumps(header)
    n = 4 + len(h) + sum(memoryview(b).nbytes for b in buffers)
    return [PREFIX.pack(n, len(h)) + h, *buffers]


def write_parts(transport: Any, fd: int, parts: Sequence[bytes | memoryview]) -> None:
    """Send a frame's parts on an asyncio transport without joining them first. Python 3.11's
    ``writelines`` copies every buffer into one bytes object (a 1 MB tensor costs a memcpy per hop);
    when the transport has nothing queued we ``writev`` the parts straight to its socket, as its own
    ``write`` would ``send`` them, and only a remainder the kernel did not take goes through the transport.
    Callers may pass views of shared memory: once this returns they may be overwritten."""
    if fd < 0 or transport.get_write_buffer_size() or transport.is_closing():
        transport.writelines(parts)
        return
    try:
        sent = os.writev(fd, parts)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:   # a dead peer: let the transport see the error and close as it always does
        transport.writelines(parts)
        return
    total = 0
    for i, p in enumerate(parts):
        n = memoryview(p).nbytes
        if sent < total + n:
            rest = [memoryview(p).cast("B")[sent - total:], *parts[i + 1:]]
            transport.write(b"".join(rest))
            return
        total += n


def transport_fd(transport: Any) -> int:
    """The socket fd under an asyncio transport, or -1 (then :func:`write_parts` uses the transport)."""
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return -1


def encode_bytes(header: Mapping[str, Any], buffers: Sequence[bytes | memoryview] = ()) -> bytes:
    return b"".join(bytes(p) if isinstance(p, memoryview) else p for p in encode(header, buffers))


@dataclass
class Frame:
    header: dict[str, Any]
    payload: memoryview


def parse_body(body: memoryview | bytes, header_len: int) -> Frame:
    body = memoryview(body)
    if header_len > len(body) or header_len > MAX_HEADER:
        raise ProtocolError(f"header length {header_len} exceeds the frame body ({len(body)} bytes)")
    try:
        header = orjson.loads(body[:header_len])
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    return Frame(header, body[header_len:])


class FrameAssembler:
    """Zero-copy frame assembly for ``asyncio.BufferedProtocol``: small frames are cut out of a
    64 KiB scratch buffer; a frame larger than that gets one exact-size body buffer that the socket
    reads straight into, so a 1 MB tensor is copied once by the kernel and never by Python.

    Use: ``transport`` calls :meth:`get_buffer` then :meth:`buffer_updated`, which returns the complete
    frames (or a :class:`ProtocolError` in place of a frame with a malformed header). An oversized or
    impossible length prefix raises, as the stream cannot be resynchronised after it."""

    SCRATCH = 64 * 1024
    FIRST_BODY = 4 << 20   # a large body buffer starts at most this big and doubles as bytes arrive

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.scratch = bytearray(self.SCRATCH)
        self.have = 0
        self.body: bytearray | None = None
        self.body_total = 0
        self.body_got = 0
        self.body_h = 0

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self.body is not None:
            if self.body_got == len(self.body):   # grow here: no view of the buffer is alive now
                self.body.extend(bytes(min(self.body_total, 2 * len(self.body)) - len(self.body)))
            return memoryview(self.body)[self.body_got:]
        return memoryview(self.scratch)[self.have:]

    def buffer_updated(self, nbytes: int) -> list[Frame | ProtocolError]:
        out: list[Frame | ProtocolError] = []
        if self.body is not None:
            self.body_got += nbytes
            if self.body_got < self.body_total:
                return out
            out.append(self._parse(self.body, self.body_h))
            self.body = None
            return out
        self.have += nbytes
        pos = 0
        sc = self.scratch
        while self.have - pos >= 4:
            (n,) = struct.unpack_from("<I", sc, pos)
            if n > self.max_frame:
                raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of {self.max_frame} bytes",
                                    data={"size": n, "limit": self.max_frame})
            if n < 4:
                raise ProtocolError(f"frame body of {n} bytes is shorter than its header-length field")
            if self.have - pos < 8:
                break
            (h,) = struct.unpack_from("<I", sc, pos + 4)
            total = 4 + n
            if self.have - pos >= total:
                out.append(self._parse(bytes(sc[pos + 8: pos + total]), h))
                pos += total
                continue
            if total > len(sc):  # a large frame: read the rest of it straight into its own buffer
                # the buffer starts at FIRST_BODY at most and grows as bytes arrive, so a length
                # prefix alone (8 bytes from a client) cannot make us commit the frame's size; an
                # anonymous mmap would too, but its page faults cost ~0.9 ms per MB here
                body = bytearray(min(n - 4, self.FIRST_BODY))
                got = self.have - pos - 8
                body[:got] = sc[pos + 8: self.have]
                self.body, self.body_total, self.body_got, self.body_h = body, n - 4, got, h
                pos = self.have
            break
        if pos:
            rest = self.have - pos
            sc[:rest] = sc[pos: self.have]
            self.have = rest
        return out

    @staticmethod
    def _parse(body: bytes | bytearray, h: int) -> Frame | ProtocolError:
        try:
            return parse_body(memoryview(body), h)
        except ProtocolError as e:
            return e

    def pending(self) -> int:
        return self.have + (self.body_got if self.body is not None else 0)


class FrameReader:
    """Incremental decoder over :class:`FrameAssembler` for callers that have bytes in hand."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.asm = FrameAssembler(max_frame)

    def feed(self, data: bytes) -> list[Frame | ProtocolError]:
        out: list[Frame | ProtocolError] = []
        view = memoryview(data)
        while len(view):
            buf = self.asm.get_buffer()
            k = min(len(buf), len(view))
            buf[:k] = view[:k]
            buf.release()
            view = view[k:]
            out += self.asm.buffer_updated(k)
        return out

    def pending(self) -> int:
        return self.asm.pending()


class SocketFrames:
    """Blocking frame reader over a socket (the worker's side): one ``recv_into`` per wake-up takes
    the prefix and a small body together, and frames pipelined into one read come out one by one."""

    def __init__(self, sock: Any, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.sock = sock
        self.asm = FrameAssembler(max_frame)
        self.ready: collections.deque[Frame] = collections.deque()

    def next(self) -> Frame:
        while not self.ready:
            buf = self.asm.get_buffer()
            try:
                n = self.sock.recv_into(buf)
            finally:
                buf.release()   # the assembler may grow its buffer next time: no view may be alive
            if n == 0:
                raise EOFError("connection closed")
            for f in self.asm.buffer_updated(n):
                if isinstance(f, ProtocolError):
                    raise f
                self.ready.append(f)
        return self.ready.popleft()


SOCK_BUFFER = 4 << 20


class BusyPoll:
    """Busy-poll before blocking. On these VMs a thread blocked in ``recv`` on an idle vCPU takes 30-60 µs
    to be woken; a peer that answers within ``budget_s`` is caught without that wake-up (lanes: a burst of
    small requests). The CPU time spent polling is kept (``cpu_s``) so it can be charged to the requests.
    (A back-off once polls mostly came back empty was tried: on the interleaved benchmark it misfired and
    cost ~60 µs per 1 KB request, so it is not here; docs/SERVING.md.)"""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.hits = self.misses = 0
        self.cpu_s = 0.0   # thread CPU time spent polling

    def wait(self, check: Callable[[], Any], budget_s: float | None = None) -> Any:
        """Call ``check`` (a non-blocking readiness test) until it returns something truthy or the budget
        is spent; returns its last result (falsy: the caller blocks as usual)."""
        budget = self.budget_s if budget_s is None else budget_s
        if budget <= 0:
            return None
        c0 = time.thread_time()
        end = time.perf_counter() + budget
        while True:
            got = check()
            if got or time.perf_counter() >= end:
                break
        self.cpu_s += time.thread_time() - c0
        if got:
            self.hits += 1
        else:
            self.misses += 1
        return got


def widen(sock: Any) -> None:
    """Larger socket buffers: a 1 MB tensor crosses in one or two wake-ups instead of five or more
    (the default is ~200 KB). The kernel caps the value at net.core.[rw]mem_max; failures are harmless."""
    import socket as _s

    for opt in (_s.SO_SNDBUF, _s.SO_RCVBUF):
        try:
            sock.setsockopt(_s.SOL_SOCKET, opt, SOCK_BUFFER)
        except OSError:
            pass


def recv_frame(sock: Any, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Blocking read of one frame from a socket (client and worker side)."""
    pre = _recv_exact(sock, 4)
    (n,) = struct.unpack("<I", pre)
    if n > max_frame:
        raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of {max_frame} bytes")
    if n < 4:
        raise ProtocolError(f"frame body of {n} bytes is shorter than its header-length field")
    body = _recv_exact(sock, n)
    (h,) = struct.unpack_from("<I", body, 0)
    return parse_body(memoryview(body)[4:], h)


def _recv_exact(sock: Any, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("connection closed")
        got += k
    return buf


def send_frame(sock: Any, header: Mapping[str, Any], buffers: Sequence[bytes | memoryview] = ()) -> None:
    parts = encode(header, buffers)
    if len(parts) == 1:
        sock.sendall(parts[0])
        return
    total = sum(memoryview(p).nbytes for p in parts)
    sent = sock.sendmsg(parts)
    if sent < total:  # rare: fall back to sending the rest piece by piece
        rest = b"".join(bytes(p) for p in parts)[sent:]
        sock.sendall(rest)


# ---- tensors -------------------------------------------------------------------------------------

def tensor_descs(tensors: Mapping[str, np.ndarray]) -> tuple[list[dict[str, Any]], list[memoryview]]:
    descs: list[dict[str, Any]] = []
    bufs: list[memoryview] = []
    for name, arr in tensors.items():
        a = np.asarray(arr)
        if not a.flags.c_contiguous or a.dtype.byteorder == ">":
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        dname = _NAME_OF.get(a.dtype)
        if dname is None:
            raise InvalidParams(f"tensor {name!r}: dtype {a.dtype.name} cannot be sent")
        descs.append({"name": name, "dtype": dname, "shape": list(a.shape)})
        bufs.append(memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b""))  # type: ignore[arg-type]
    return descs, bufs


def check_desc(d: Any) -> tuple[str, np.dtype, tuple[int, ...], int]:
    if not isinstance(d, dict):
        raise InvalidParams("each tensor must be an object with name, dtype and shape")
    name, dtype, shape = d.get("name"), d.get("dtype"), d.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidParams("tensor name must be a non-empty string")
    if dtype not in WIRE_DTYPES:
        raise InvalidParams(f"tensor {name!r}: unknown dtype {dtype!r}; expected one of {sorted(WIRE_DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31 for x in shape)):
        raise InvalidParams(f"tensor {name!r}: shape must be a list of at most {MAX_RANK} non-negative ints")
    dt = _DTYPE_OF[dtype]
    count = 1
    for x in shape:
        count *= x
    return name, dt, tuple(shape), count * dt.itemsize


def tensors_from(descs: Any, payload: memoryview, *, copy: bool = False) -> dict[str, np.ndarray]:
    """Decode tensors described by ``descs`` from ``payload``; the payload must match exactly."""
    if not isinstance(descs, list):
        raise InvalidParams("tensors must be a list of {name, dtype, shape}")
    out: dict[str, np.ndarray] = {}
    off = 0
    for d in descs:
        name, dt, shape, nbytes = check_desc(d)
        if name in out:
            raise InvalidParams(f"tensor {name!r} given twice")
        if off + nbytes > len(payload):
            raise InvalidParams(f"tensor {name!r}: needs {nbytes} bytes but the payload has {len(payload) - off} left")
        arr = np.frombuffer(payload, dtype=dt, count=nbytes // dt.itemsize, offset=off).reshape(shape)
        out[name] = arr.copy() if copy else arr
        off += nbytes
    if off != len(payload):
        raise InvalidParams(f"payload has {len(payload) - off} bytes beyond the described tensors")
    return out


def request(id_: int | str | None, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    h: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": dict(params or {})}
    if id_ is not None:
        h["id"] = id_
    return h


def response(id_: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "result": result}


def error_response(id_: Any, err: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def iter_nbytes(descs: Iterable[dict[str, Any]]) -> int:
    return sum(check_desc(d)[3] for d in descs)
