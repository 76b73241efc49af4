"""Fuzzing the daemon's socket: >= 10,000 random and mutated frames while a good client keeps being served.

Each example opens a connection, sends a burst of frames (random bytes, well-formed frames with
random JSON-RPC headers, and mutations of a valid ``infer`` frame: flipped bytes, truncations,
forged length fields), half-closes, and reads until the daemon closes. Everything that comes back
must be a JSON-RPC response (or event), and the daemon must close every connection. The peer is root
(admin), so every method is reachable; model/variant names include path traversal attempts.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from svc_agentd import Agentd, start_agentd
from svc_helpers import NotifySocket

from agent.client import Client
from agent.ipc import protocol as P

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("AGENT_FUZZ_EXAMPLES", "1300"))
MIN_FRAMES = 10_000


@pytest.fixture(scope="module")
def fuzz_agentd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agentd]:
    pytest.importorskip("onnx")
    from agent.testing import make_tensor_zoo

    work = tmp_path_factory.mktemp("fuzz")
    make_tensor_zoo(work / "zoo", "mlp", in_features=16, hidden=32, out_features=4)
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(work / "notify"))
    notify = NotifySocket(str(work / "notify"), ns)
    # a small frame limit so forged lengths above it are exercised without sending megabytes
    a = start_agentd(work, work / "zoo", notify, activate=False, extra=["--max-frame", "65536"])
    notify.wait_for("READY=1", 60)
    yield a
    rc = a.stop()
    ns.close()
    assert rc == 0, a.log_text()[-3000:]


_scalar = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=12)
_json = _scalar | st.lists(_scalar, max_size=3) | st.dictionaries(st.text(max_size=8), _scalar, max_size=3)
_names = st.sampled_from(["mlp", "fp32", "int8", "../../etc/passwd", "/etc/shadow", "mlp/../../x",
                          "", "x" * 300, "mlp\x00", "power-saver", "$(reboot)", "__import__('os')"]) \
    | st.text(max_size=16)
_desc = st.fixed_dictionaries({"name": _names, "dtype": st.sampled_from(["float32", "int64", "bogus"]) | _json,
                               "shape": st.lists(st.integers(-3, 2**33), max_size=4) | _json})
_params = st.fixed_dictionaries({}, optional={
    "model": _names | _json, "variant": _names | _json, "device": _names, "profile": _names,
    "cookie": _names, "reason": st.text(max_size=30) | _json, "since": _names | _json,
    "tables": st.lists(_names, max_size=3) | _json, "inputs": st.lists(_desc, max_size=3) | _json,
}) | _json
_methods = st.sampled_from(["infer", "models", "status", "pin", "unpin", "hold", "release", "reload",
                            "subscribe", "history", "generate", "shutdown", "__init__", "../x"]) | _json
_header = st.fixed_dictionaries(
    {"method": _methods},
    optional={"jsonrpc": st.just("2.0") | _json, "params": _params, "id": st.integers() | st.text(max_size=6) | _json},
)


def _valid_infer() -> bytes:
    descs, bufs = P.tensor_descs({"x": np.ones((2, 16), np.float32)})
    return P.encode_bytes(P.request(7, "infer", {"model": "mlp", "inputs": descs}), bufs)


VALID = _valid_infer()


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    b = bytearray(VALID)
    kind = draw(st.sampled_from(["flip", "truncate", "length", "header_len", "splice"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.integers(0, 255))
    elif kind == "truncate":
        b = b[: draw(st.integers(0, len(b) - 1))]
    elif kind == "length":
        struct.pack_into("<I", b, 0,
                         draw(st.sampled_from([0, 1, 3, 4, 2**32 - 1, 65537, len(b)]) | st.integers(0, 2**32 - 1)))
    elif kind == "header_len":
        struct.pack_into("<I", b, 4, draw(st.integers(0, 2**32 - 1)))
    else:
        i = draw(st.integers(0, len(b)))
        b[i:i] = draw(st.binary(max_size=16))
    return bytes(b)


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    """A cheap seeded mutation of a frame (hypothesis chooses the seed and the base frames)."""
    b = bytearray(frame)
    kind = rng.randrange(6)
    if kind == 0 and b:
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1 and b:
        b = b[: rng.randrange(len(b))]
    elif kind == 2 and len(b) >= 4:
        struct.pack_into("<I", b, 0, rng.choice([0, 3, 4, 65537, 2**32 - 1, rng.randrange(2**32)]))
    elif kind == 3 and len(b) >= 8:
        struct.pack_into("<I", b, 4, rng.choice([0, len(b), 2**31, rng.randrange(2**32)]))
    elif kind == 4:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 16))
    else:
        b = bytearray(rng.randbytes(rng.randint(1, 48)))
    return bytes(b)


def _encoded(header: object, payload: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<II", 4 + len(h) + len(payload), len(h)) + h + payload


_well_framed = st.builds(_encoded, _header, st.binary(max_size=64))
# weighted towards frames the daemon parses and dispatches; the seeded mutations add the broken ones
_frames = st.one_of(
    _well_framed,
    st.builds(_encoded, _json, st.binary(max_size=8)),
    _well_framed,
    st.just(VALID),
    _well_framed,
    _mutated(),
    st.binary(min_size=1, max_size=64),
)


def _exchange(path: Path, data: bytes) -> list[dict[str, object]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(str(path))
    try:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon already closed (e.g. on a forged length): that is an allowed answer
        got = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break  # the daemon closed the connection
            got += chunk
    finally:
        s.close()
    reader = P.FrameReader(1 << 24)
    frames = reader.feed(bytes(got))
    assert reader.pending() == 0, "daemon sent a partial frame"
    out = []
    for f in frames:
        assert isinstance(f, P.Frame), f
        out.append(f.header)
    return out


def test_random_and_mutated_frames_are_answered_or_closed_while_a_good_client_is_served(
        fuzz_agentd: Agentd) -> None:
    path = fuzz_agentd.socket_path
    good = Client(path, timeout=30)
    stats = {"frames": 0, "examples": 0, "served": 0, "responses": 0}
    x = np.full((1, 16), 0.5, np.float32)

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(_frames, min_size=2, max_size=3), st.integers(0, 2**32 - 1))
    def burst(base: list[bytes], seed: int) -> None:
        rng = random.Random(seed)
        # the structured frames first (they are answered unless one is fatal), then the mutations
        frames = [*base, *(_mutate(rng, rng.choice([*base, VALID])) for _ in range(6))]
        stats["frames"] += len(frames)
        stats["examples"] += 1
        for h in _exchange(path, b"".join(frames)):
            stats["responses"] += 1
            assert h.get("jsonrpc") == "2.0"
            assert ("result" in h or "error" in h) or h.get("method") == "event", h
            if "error" in h:
                err = h["error"]
                assert isinstance(err, dict) and isinstance(err.get("code"), int), h
                assert "internal error" not in str(err.get("message")), h  # no handler crashed
        if stats["examples"] % 25 == 0:
            r = good.infer("mlp", {"x": x})
            assert r.outputs["y"].shape == (1, 4) and np.isfinite(r.outputs["y"]).all()
            stats["served"] += 1

    t0 = time.monotonic()
    burst()
    elapsed = time.monotonic() - t0
    assert stats["frames"] >= MIN_FRAMES or EXAMPLES < 1300, stats
    assert stats["served"] >= stats["examples"] // 25 and stats["responses"] > 0, stats
    assert fuzz_agentd.proc.poll() is None, "agentd died under fuzzing"
    assert good.status()["models"]["mlp"]["active"] is not None
    good.close()
    print(f"fuzz: {stats} in {elapsed:.1f}s")
