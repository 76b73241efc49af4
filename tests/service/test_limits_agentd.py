"""Per-peer limits from [access], enforced by a real agentd: concurrency, connections, frame size."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from svc_agentd import Agentd, start_agentd
from svc_helpers import NotifySocket

from agent.errors import Busy, FrameTooLarge
from agent.ipc import protocol as P

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slow_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test MLP with a wide hidden layer (~5M weights): a request of a few MB runs for a long time
    compared with the time its frame takes to arrive, so concurrent requests really overlap."""
    from agent.testing import make_tensor_zoo

    zoo = tmp_path_factory.mktemp("slow-zoo")
    make_tensor_zoo(zoo, "mlp", in_features=256, hidden=16384, out_features=64)
    return zoo


@pytest.fixture
def limited_agentd(slow_zoo: Path, tmp_path: Path, notify_socket: NotifySocket) -> Iterator[Agentd]:
    cfg = tmp_path / "access.toml"
    cfg.write_text("[access]\nmax_concurrent = 2\nmax_connections = 6\nmax_frame_bytes = 33554432\n")
    a = start_agentd(tmp_path, slow_zoo, notify_socket, activate=False,
                     extra=["--access-config", str(cfg)])
    notify_socket.wait_for("READY=1", 60)
    yield a
    assert a.stop() == 0, a.log_text()[-2000:]


def _open(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(str(path))
    return s


def test_requests_over_the_per_uid_concurrency_limit_get_busy(limited_agentd: Agentd) -> None:
    x = np.ones((4000, 256), np.float32)  # 4 MB in, ~20 GFLOP: hundreds of ms per run, a few ms to arrive
    descs, bufs = P.tensor_descs({"x": x})
    socks = [_open(limited_agentd.socket_path) for _ in range(5)]  # 5 connections, one uid
    for i, s in enumerate(socks):
        P.send_frame(s, P.request(i, "infer", {"model": "mlp", "inputs": descs}), bufs)
    outcomes = []
    for s in socks:
        f = P.recv_frame(s, 1 << 26)
        outcomes.append("ok" if "result" in f.header else f.header["error"]["data"]["type"])
        s.close()
    assert outcomes.count("ok") >= 2 and outcomes.count("Busy") >= 1, outcomes
    assert set(outcomes) <= {"ok", "Busy"}
    # the slots are given back: later requests are served again
    with _client(limited_agentd) as c:
        assert c.infer("mlp", {"x": np.ones((1, 256), np.float32)}).outputs["y"].shape == (1, 64)


def _client(a: Agentd):  # type: ignore[no-untyped-def]
    from agent.client import Client

    return Client(a.socket_path, timeout=60)


def test_connections_over_the_per_uid_limit_are_refused_with_busy(limited_agentd: Agentd) -> None:
    from agent.client import Client

    held = [_settled_client(limited_agentd) for _ in range(6)]
    for c in held:   # a connection holding a profile is in use, never closed as idle
        c.hold("power-saver", "limit test")
    with Client(limited_agentd.socket_path, timeout=10) as extra, \
            pytest.raises(Busy, match=r"too many connections .*6 open"):
        extra.status()
    held.pop().close()
    with _settled_client(limited_agentd) as c:  # the freed slot is usable again
        assert c.status()["models"]["mlp"]["active"] is not None
    for c in held:
        c.close()


def test_an_idle_connection_makes_room_for_a_new_one_of_its_uid(limited_agentd: Agentd) -> None:
    held = [_settled_client(limited_agentd) for _ in range(6)]
    with _client(limited_agentd) as c:   # over the limit: the longest-idle connection is closed instead
        assert c.status()["models"]["mlp"]["active"] is not None
    with pytest.raises(Busy, match=r"idle for .* needed its place"):
        held[0].status()   # the evicted one was told why
    for c in held:
        c.close()


def _settled_client(a: Agentd):  # type: ignore[no-untyped-def]
    """A connected client, retrying while connections closed just before are still being counted."""
    end = time.monotonic() + 10
    while True:
        c = _client(a)
        try:
            c.status()
            return c
        except Busy:
            c.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def test_frame_over_the_limit_is_refused_from_its_length_prefix(limited_agentd: Agentd) -> None:
    s = _open(limited_agentd.socket_path)
    s.sendall(struct.pack("<II", 40 * 1024 * 1024, 10))  # only the prefix: nothing else is needed
    f = P.recv_frame(s)
    assert f.header["error"]["code"] == FrameTooLarge.code
    assert f.header["error"]["data"]["limit"] == 33554432
    assert s.recv(1) == b""  # and the connection is closed
    s.close()
