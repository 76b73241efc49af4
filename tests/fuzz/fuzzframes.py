"""Generated frames for fuzzing agentd's socket, and a driver that checks every frame is answered.

Two kinds of case, both drawn from one seeded ``random.Random`` (a run is reproducible from its seed):

* **bounded** frames: the length prefix is honest, the content is not — ``infer`` with dtype, shape and
  buffer mismatches, NaN/inf/huge values, bad tensor descriptions, unknown methods, JSON nested past
  the parser's limit, wrong JSON-RPC fields, header lengths that lie inside the body, invalid JSON and
  UTF-8. They are sent pipelined in batches on one connection, and each must get **exactly one** reply
  (a result or an error) — the connection survives them all.
* **breaking** cases: truncated frames, length prefixes that lie (longer or shorter than what follows),
  oversized or impossible prefixes, raw garbage. One per connection, followed by a half-close: each
  must get at least one error reply and then the daemon must close the connection.

:func:`run` drives a daemon at ``socket_path`` for ``frames`` frames and returns the counts; the
model it targets is the small ``mlp`` of :func:`agent.testing.make_tensor_zoo` (``in_features`` given).
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from agent.ipc import protocol as P

DTYPES = ["float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
SIZES = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
         "uint8": 1, "bool": 1}
SPECIAL = [float("nan"), float("inf"), float("-inf"), -0.0, 3.4e38, -3.4e38, 1e-45, 0.0, 65504.0]
NAMES = ["mlp", "fp32", "int8", "../../etc/passwd", "", "x" * 300, "mlp\x00", "$(reboot)", "ΜΛΠ", "mlp/../mlp"]
# methods that change the daemon's state in costly ways are left out (pin, unpin, reload: a swap or a
# zoo re-read per frame); the cheap ones and unknown ones are in
METHODS = ["infer", "generate", "models", "status", "cancel", "hold", "release", "ping", "variants",
           "unsubscribe"]   # history too is left out: its reply grows with the requests this run makes


def _frame(header_bytes: bytes, payload: bytes = b"", *, header_len: int | None = None,
           body_len: int | None = None) -> bytes:
    h = len(header_bytes) if header_len is None else header_len
    n = 4 + len(header_bytes) + len(payload) if body_len is None else body_len
    return struct.pack("<II", n, h) + header_bytes + payload


def _req(rid: int, method: Any, params: Any) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})


class Gen:
    def __init__(self, seed: int, in_features: int = 16) -> None:
        self.r = random.Random(seed)
        self.f = in_features
        self.rid = 0

    def _id(self) -> int:
        self.rid += 1
        return self.rid

    def _floats(self, n: int) -> bytes:
        r = self.r
        vals = [r.choice(SPECIAL) if r.random() < 0.2 else r.uniform(-4, 4) for _ in range(n)]
        return struct.pack(f"<{n}f", *vals)

    # -- bounded frames: exactly one reply each ---------------------------------------------------------
    def bounded(self) -> tuple[str, bytes]:
        r = self.r
        k = r.random()
        if k < 0.14:
            return "infer_ok_or_nan", self._infer_ok()
        if k < 0.26:
            return "dtype_mismatch", self._infer_dtype()
        if k < 0.38:
            return "shape_mismatch", self._infer_shape()
        if k < 0.50:
            return "buffer_mismatch", self._infer_buffer()
        if k < 0.58:
            return "bad_desc", self._infer_bad_desc()
        if k < 0.66:
            return "unknown_method", _frame(_req(self._id(), self._junk_method(), {}))
        if k < 0.72:
            return "deep_json", self._deep_json()
        if k < 0.80:
            return "bad_jsonrpc", self._bad_jsonrpc()
        if k < 0.88:
            return "bad_header_bytes", self._bad_header_bytes()
        if k < 0.93:
            return "header_len_lies", self._header_len_lies()
        return "other_method", self._other_method()

    def _infer(self, descs: Any, payload: bytes, **extra: Any) -> bytes:
        params = {"model": self.r.choice(["mlp"] * 8 + NAMES), "inputs": descs, **extra}
        if self.r.random() < 0.1:
            params["deadline_ms"] = self.r.choice([1, 50, 5000, 0, -1, "soon", 1e300, True])
        return _frame(_req(self._id(), "infer", params), payload)

    def _infer_ok(self) -> bytes:
        b = self.r.randint(1, 4)
        return self._infer([{"name": "x", "dtype": "float32", "shape": [b, self.f]}], self._floats(b * self.f))

    def _infer_dtype(self) -> bytes:
        b = self.r.randint(1, 3)
        dt = self.r.choice([d for d in DTYPES if d != "float32"] + ["float128", "complex64", "str", 7, None])
        size = SIZES.get(dt, 4) if isinstance(dt, str) else 4
        return self._infer([{"name": "x", "dtype": dt, "shape": [b, self.f]}],
                           self.r.randbytes(b * self.f * size))

    def _infer_shape(self) -> bytes:
        r = self.r
        shape = r.choice([[self.f], [1, self.f + 1], [1, self.f, 1], [], [0, self.f], [1] * 17,
                          [r.randint(1, 3), r.randint(0, 40)], [-1, self.f], [2**31, 1], [1.5, self.f],
                          [True, self.f], ["a", self.f]])
        n = 1
        for d in shape:
            n *= d if isinstance(d, int) and 0 <= d < 64 else 1
        return self._infer([{"name": "x", "dtype": "float32", "shape": shape}], self._floats(min(n, 4096)))

    def _infer_buffer(self) -> bytes:
        b = self.r.randint(1, 3)
        need = b * self.f * 4
        got = self.r.choice([0, need - 1, need + 1, need // 2, need * 2, need - 4])
        return self._infer([{"name": "x", "dtype": "float32", "shape": [b, self.f]}], self.r.randbytes(max(got, 0)))

    def _infer_bad_desc(self) -> bytes:
        r = self.r
        descs = r.choice([None, {}, "x", 5, [None], [{"name": "x"}], [{"dtype": "float32", "shape": [1, self.f]}],
                          [{"name": "", "dtype": "float32", "shape": [1, self.f]}],
                          [{"name": "x", "dtype": "float32", "shape": [1, self.f]}] * 2,
                          [{"name": "y", "dtype": "float32", "shape": [1, self.f]}],
                          [{"name": "x", "dtype": "float32", "shape": "1,16"}],
                          [{"name": ["x"], "dtype": "float32", "shape": [1, self.f]}]])
        return self._infer(descs, self.r.randbytes(self.f * 4))

    def _junk_method(self) -> Any:
        r = self.r
        return r.choice(["", "x" * r.randint(1, 3000), "infer ", "INFER", "zoo.delete", "policy.set", "shutdown",
                         "__init__", "../status", "statüs", "status\x00", "rpc.discover",
                         "".join(chr(r.randint(32, 0x2FFF)) for _ in range(r.randint(1, 20)))])

    def _deep_json(self) -> bytes:
        depth = self.r.choice([10, 100, 500, 1000, 1023, 1024, 1025, 2000, 5000])
        inner = b"[" * depth + b"]" * depth if self.r.random() < 0.5 else b'{"a":' * depth + b"1" + b"}" * depth
        where = self.r.random()
        if where < 0.5:   # nested inside params
            hdr = (b'{"jsonrpc":"2.0","id":%d,"method":"infer","params":{"model":"mlp","inputs":%s}}'
                   % (self._id(), inner))
        else:             # the header itself is the nested value
            hdr = inner
        return _frame(hdr)

    def _bad_jsonrpc(self) -> bytes:
        r = self.r
        base: dict[str, Any] = {"jsonrpc": "2.0", "id": self._id(), "method": "status", "params": {}}
        mut = r.randint(0, 7)
        if mut == 0:
            base["jsonrpc"] = r.choice(["1.0", 2, None, "2.0 "])
        elif mut == 1:
            base["method"] = r.choice([None, 1, [], {}, True])
        elif mut == 2:
            base["params"] = r.choice([[], "x", 1, None, True])
        elif mut == 3:
            base["id"] = r.choice([[1], {"a": 1}, 1.5, True, "x" * 1000])
        elif mut == 4:
            del base["jsonrpc"]
        elif mut == 5:
            del base["method"]
        elif mut == 6:
            base = r.choice([[], "x", 1, None, [base]])   # type: ignore[assignment]
        else:
            base["params"] = {"model": "mlp", "extra": "y" * r.randint(0, 50000)}
        return _frame(orjson.dumps(base))

    def _bad_header_bytes(self) -> bytes:
        r = self.r
        good = _req(self._id(), "status", {})
        k = r.randint(0, 5)
        if k == 0:
            hdr = r.randbytes(r.randint(1, 200))
        elif k == 1:
            hdr = good[: r.randint(1, len(good) - 1)]
        elif k == 2:
            hdr = good.replace(b"status", b"st\xff\xfeus")
        elif k == 3:
            hdr = b'{"jsonrpc":"2.0","id":1,"method":"infer","params":{"deadline_ms":NaN}}'
        elif k == 4:
            hdr = b'{"jsonrpc":"2.0","id":1,"method":"infer","params":{"deadline_ms":1e999}}'
        else:
            hdr = b""
        return _frame(hdr)

    def _header_len_lies(self) -> bytes:
        good = _req(self._id(), "models", {})
        payload = self.r.randbytes(self.r.randint(0, 64))
        h = self.r.choice([len(good) + len(payload) + 1, len(good) - 1, 0, 2**32 - 1, len(good) + 1])
        return _frame(good, payload, header_len=h)

    def _other_method(self) -> bytes:
        r = self.r
        m = r.choice(METHODS)
        params: dict[str, Any] = r.choice([{}, {"model": r.choice(NAMES)}, {"id": r.choice([1, "x", None, [1]])},
                                           {"profile": r.choice(["power-saver", "turbo", "", 5])},
                                           {"cookie": r.choice(["x", "", None])},
                                           {"model": "mlp", "prompt": "hi"}])
        return _frame(_req(self._id(), m, params))

    # -- breaking cases: one per connection, at least one error and then a close ----------------------
    def breaking(self, max_frame: int) -> tuple[str, bytes]:
        r = self.r
        k = r.randint(0, 5)
        good = self._infer_ok()
        if k == 0:
            return "truncated", good[: r.randint(1, len(good) - 1)]
        if k == 1:   # the prefix promises more than follows
            return "length_longer", struct.pack("<I", len(good) - 4 + r.randint(1, 1000)) + good[4:]
        if k == 2:   # the prefix promises less: the rest is read as the next frame(s)
            return "length_shorter", struct.pack("<I", r.randint(4, len(good) - 5)) + good[4:]
        if k == 3:
            return "oversized", struct.pack("<II", r.randint(max_frame + 1, 2**32 - 1), 10) + good[8:]
        if k == 4:
            return "impossible_length", struct.pack("<II", r.randint(0, 3), 0) + good[8:]
        return "garbage", r.randbytes(r.randint(1, 300))


@dataclass
class Counts:
    frames: int = 0
    bounded: int = 0
    breaking: int = 0
    replies: int = 0
    results: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0
    not_closed: int = 0
    bad_replies: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "bounded": self.bounded, "breaking": self.breaking,
                "replies": self.replies, "results": self.results, "unanswered": self.unanswered,
                "not_closed": self.not_closed, "bad_replies": self.bad_replies,
                "errors": dict(self.errors.most_common()), "kinds": dict(self.kinds.most_common()),
                "seconds": round(self.seconds, 1),
                "frames_per_s": round(self.frames / self.seconds) if self.seconds else None}


def _connect(path: str, timeout: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    s.settimeout(timeout)
    return s


def _read_replies(s: socket.socket, reader: P.FrameReader, want: int | None, c: Counts) -> tuple[int, bool]:
    """Read until ``want`` replies arrived (None: until the daemon closes). Returns (replies, closed)."""
    got = 0
    while want is None or got < want:
        try:
            data = s.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            return got, True
        except TimeoutError:
            return got, False
        if not data:
            return got, True
        for f in reader.feed(data):
            if isinstance(f, Exception) or not isinstance(f.header, dict) or f.header.get("jsonrpc") != "2.0":
                c.bad_replies += 1
                continue
            h = f.header
            if "result" in h:
                c.results += 1
            elif isinstance(h.get("error"), dict):
                c.errors[str((h["error"].get("data") or {}).get("type", h["error"].get("code")))] += 1
            else:
                continue   # a notification (event, token) is not a reply
            got += 1
            c.replies += 1
    return got, False


def run(socket_path: str, frames: int, *, seed: int = 0, in_features: int = 16, max_frame: int = 65536,
        batch: int = 48, breaking_share: float = 0.03, timeout: float = 20.0,
        progress: Any = None) -> Counts:
    """Send ``frames`` generated frames; every one must be answered (see the module docstring)."""
    g = Gen(seed, in_features)
    c = Counts()
    t0 = time.perf_counter()
    s = _connect(socket_path, timeout)
    reader = P.FrameReader(1 << 26)
    on_conn = 0
    next_report = 50_000
    # per loop turn: a breaking case (1 frame) with probability p, else a batch; so that breaking
    # cases are ``breaking_share`` of all frames
    p_break = breaking_share * batch / (1 - breaking_share + breaking_share * batch)
    while c.frames < frames:
        if g.r.random() < p_break:
            kind, data = g.breaking(max_frame)
            b = _connect(socket_path, timeout)
            try:
                b.sendall(data)
                b.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass   # it answered and closed before we finished: still read what it said
            got, closed = _read_replies(b, P.FrameReader(1 << 26), None, c)
            b.close()
            c.breaking += 1
            c.frames += 1
            c.kinds[kind] += 1
            if got == 0:
                c.unanswered += 1
            if not closed:
                c.not_closed += 1
            continue
        n = min(batch, frames - c.frames)
        parts = []
        for _ in range(n):
            kind, data = g.bounded()
            c.kinds[kind] += 1
            parts.append(data)
        try:
            s.sendall(b"".join(parts))
            got, closed = _read_replies(s, reader, n, c)
        except (BrokenPipeError, ConnectionResetError):
            got, closed = 0, True
        c.bounded += n
        c.frames += n
        if got < n:
            c.unanswered += n - got
        on_conn += n
        if closed or got < n or on_conn > 20_000:   # a fresh connection now and then (and after a failure)
            s.close()
            s = _connect(socket_path, timeout)
            reader = P.FrameReader(1 << 26)
            on_conn = 0
        if progress is not None and c.frames >= next_report:
            next_report += 50_000
            c.seconds = time.perf_counter() - t0
            progress(c)
    s.close()
    c.seconds = time.perf_counter() - t0
    return c
