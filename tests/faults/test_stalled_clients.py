"""Stalled clients cost nothing: idle connections make room at the per-uid limit, a frame that is not
completed in time and a connection that stops reading its replies are closed."""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from agent.client import Client
from agent.errors import Busy
from agent.ipc import protocol as P

pytestmark = pytest.mark.integration


def _raw(path) -> socket.socket:  # type: ignore[no-untyped-def]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))   # blocking: waits in the backlog instead of failing with EAGAIN
    s.settimeout(30)
    return s


def test_300_connections_that_never_send_do_not_lock_out_a_normal_client_of_that_uid(daemon):
    idle = []
    try:
        for _ in range(300):
            idle.append(_raw(daemon.socket))
        t0 = time.monotonic()
        with Client(daemon.socket, timeout=10) as c:
            r = c.infer("mlp", {"x": np.ones((1, 256), np.float32)})
        took = time.monotonic() - t0
        assert r.outputs["y"].shape == (1, 64)
        assert took < 5.0, took
    finally:
        for s in idle:
            s.close()
    assert daemon.stop() == 0
    assert "idle, evicted" in daemon.log_text()   # complete only once agentd has exited


def test_the_limit_error_says_how_many_are_open_and_since_when(daemon):
    """Connections that hold a profile are not idle: past the limit (16) the error names the count."""
    held = []
    try:
        for _ in range(16):
            c = Client(daemon.socket, timeout=10)
            c.hold("power-saver", "test")
            held.append(c)
        with Client(daemon.socket, timeout=10) as extra, \
                pytest.raises(Busy, match=r"too many connections from uid \d+: 16 open \(limit 16\), "
                                          r"the oldest since \d{4}-\d\d-\d\dT[\d:]+Z .*none of them is idle") as ei:
            extra.status()
        assert ei.value.data["open"] == 16 and ei.value.data["oldest_since"] <= time.time()
    finally:
        for c in held:
            c.close()


@pytest.mark.parametrize("daemon", [["--frame-timeout", "1.5"]], indirect=True)
def test_a_frame_not_completed_within_the_timeout_is_answered_and_closed(daemon):
    s = _raw(daemon.socket)
    s.sendall(struct.pack("<II", 1000, 10) + b'{"jsonrpc"')   # a header promised, then silence
    t0 = time.monotonic()
    f = P.recv_frame(s)
    took = time.monotonic() - t0
    assert f.header["error"]["data"]["type"] == "ProtocolError"
    assert "no complete frame within 1.5 s" in f.header["error"]["message"]
    assert 1.4 <= took <= 5.0, took
    assert s.recv(1) == b""   # closed
    s.close()
    with Client(daemon.socket, timeout=10) as c:
        assert c.status()["models"]["mlp"]["active"] is not None


def test_a_half_close_in_the_middle_of_a_frame_gets_an_error(shared_daemon):
    s = _raw(shared_daemon.socket)
    s.sendall(struct.pack("<II", 500, 10) + b"{}")
    s.shutdown(socket.SHUT_WR)
    f = P.recv_frame(s)
    assert f.header["error"]["data"]["type"] == "ProtocolError"
    assert "half-closed in the middle of a frame" in f.header["error"]["message"]
    s.close()


@pytest.mark.parametrize("daemon", [["--stall-timeout", "1"]], indirect=True)
def test_a_client_that_stops_reading_its_replies_is_closed_and_others_are_served(daemon):
    x = np.ones((20000, 256), np.float32)   # 5 MB of output per reply
    descs, bufs = P.tensor_descs({"x": x})
    s = _raw(daemon.socket)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    try:
        for i in range(6):   # pipelined, never read; the daemon stops reading too once replies pile up
            P.send_frame(s, P.request(i, "infer", {"model": "mlp", "inputs": descs}), bufs)
    except (BrokenPipeError, ConnectionResetError):
        pass   # it was aborted while we were still sending
    time.sleep(1.0 + 2.0)   # the stall limit, one sweep, a margin
    with Client(daemon.socket, timeout=10) as c:
        assert c.infer("mlp", {"x": np.ones((1, 256), np.float32)}).outputs["y"].shape == (1, 64)
    # what was queued for it is dropped: reading now ends in a reset or EOF, not 6 replies
    got = 0
    s.settimeout(5)
    try:
        while True:
            P.recv_frame(s, 1 << 26)
            got += 1
    except (ConnectionResetError, EOFError):
        pass
    assert got < 6
    s.close()
    assert daemon.stop() == 0
    assert "replies unread for" in daemon.log_text()   # complete only once agentd has exited
