"""agentd as a systemd service, for real: socket activation, notify protocol, watchdog, reload, stop.

agentd runs under ``systemd-socket-activate -l PATH -E NOTIFY_SOCKET -E WATCHDOG_USEC`` with a real
datagram socket standing in for systemd, and a real zoo (an MLP and its int8 variant built with ONNX
Runtime's quantizer).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from svc_agentd import SOCKET_ACTIVATE, Agentd, start_agentd
from svc_helpers import NotifySocket, connect_when_listening

from agent.client import Client
from agent.ipc import protocol as P

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(SOCKET_ACTIVATE).exists(), reason="needs systemd-socket-activate"),
]

IN, HIDDEN = 256, 2048


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    from agent.testing import make_tensor_zoo

    z = tmp_path_factory.mktemp("zoo")
    make_tensor_zoo(z, "mlp", in_features=IN, hidden=HIDDEN, out_features=64)
    return z


@pytest.fixture
def agentd_factory(tmp_path: Path, notify_socket: NotifySocket) -> Iterator[list[Agentd]]:
    started: list[Agentd] = []
    yield started
    for a in started:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait(10)


def _launch(started: list[Agentd], tmp_path: Path, zoo: Path, notify: NotifySocket,
            **kw: object) -> Agentd:
    a = start_agentd(tmp_path, zoo, notify, **kw)  # type: ignore[arg-type]
    started.append(a)
    return a


def _fields(msg: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in msg.splitlines())


def _connect_and_wait_ready(a: Agentd, timeout: float = 60) -> tuple[Client, list[str]]:
    """The first connection makes systemd-socket-activate exec agentd; READY follows the warm-up."""
    connect_when_listening(str(a.socket_path)).close()  # bound a moment before it listens
    client = Client(a.socket_path, timeout=60)
    try:
        before = a.notify.wait_for("READY=1", timeout)
    except AssertionError:
        raise AssertionError(a.log_text()) from None
    return client, before


def test_ready_comes_after_the_default_variant_is_warm_and_reports_it(
        tmp_path: Path, zoo: Path, notify_socket: NotifySocket, agentd_factory: list[Agentd]) -> None:
    a = _launch(agentd_factory, tmp_path, zoo, notify_socket)
    client, msgs = _connect_and_wait_ready(a)
    assert sum("READY=1" in m for m in msgs) == 1
    ready = _fields(msgs[-1])
    assert re.fullmatch(r"serving mlp=(fp32|int8)@cpu; profile [a-z-]+; holds: none", ready["STATUS"]), ready
    st = client.status()["models"]["mlp"]
    assert st["active"]["variant"] == "fp32" and st["variants"]["fp32"]["status"] == "active"
    assert st["variants"]["fp32"]["warmup_ms"] is not None
    # the connection that started it is served
    r = client.infer("mlp", {"x": np.ones((2, IN), np.float32)})
    assert r.outputs["y"].shape == (2, 64)
    client.close()
    assert a.stop() == 0


def test_watchdog_pings_at_half_the_interval(
        tmp_path: Path, zoo: Path, notify_socket: NotifySocket, agentd_factory: list[Agentd]) -> None:
    a = _launch(agentd_factory, tmp_path, zoo, notify_socket, watchdog_usec=1_000_000)
    client, _ = _connect_and_wait_ready(a)
    got = notify_socket.drain(3.2)
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    gaps = [b - a_ for a_, b in itertools.pairwise(pings)]
    assert len(pings) >= 5, got
    assert 0.4 <= statistics.median(gaps) <= 0.6, gaps
    client.close()
    assert a.stop() == 0


def test_a_dead_or_hung_worker_does_not_stop_the_watchdog_while_the_runtime_replaces_it(
        tmp_path: Path, zoo: Path, notify_socket: NotifySocket, agentd_factory: list[Agentd]) -> None:
    """One worker is not the daemon: a worker that died and whose variant can no longer load, and then
    a hung (SIGSTOPped) one, are the runtime's to replace; only a stuck daemon stops the pings."""
    own_zoo = shutil.copytree(zoo, tmp_path / "zoo")
    a = _launch(agentd_factory, tmp_path, own_zoo, notify_socket, watchdog_usec=600_000)
    client, _ = _connect_and_wait_ready(a)
    assert [m for _, m in notify_socket.drain(0.8)].count("WATCHDOG=1") >= 2
    worker = client.status()["models"]["mlp"]["active"]["pid"]
    saved = (own_zoo / "mlp" / "fp32.onnx").read_bytes()
    (own_zoo / "mlp" / "fp32.onnx").write_bytes(b"not an onnx model")
    os.kill(worker, signal.SIGKILL)
    time.sleep(0.5)  # the death is noticed, the restarts start failing (and back off)
    later = [m for _, m in notify_socket.drain(1.5)]
    assert later.count("WATCHDOG=1") >= 2, later
    mlp = client.status()["models"]["mlp"]
    assert mlp["active"] is None and mlp["variants"]["fp32"]["status"] in ("failed", "loading"), mlp  # retrying
    (own_zoo / "mlp" / "fp32.onnx").write_bytes(saved)   # the next restart attempt succeeds
    end = time.monotonic() + 30
    while (client.status()["models"]["mlp"]["active"] or {}).get("alive") is not True:
        assert time.monotonic() < end, client.status()["models"]["mlp"]
        time.sleep(0.2)
    hung = client.status()["models"]["mlp"]["active"]["pid"]
    os.kill(hung, signal.SIGSTOP)
    try:
        assert [m for _, m in notify_socket.drain(4.0)].count("WATCHDOG=1") >= 5
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    client.close()
    assert a.stop() == 0
    assert "worker_died" in a.log_text() and "worker declared hung" in a.log_text()


def test_sighup_gives_reloading_with_monotonic_time_then_ready(
        tmp_path: Path, zoo: Path, notify_socket: NotifySocket, agentd_factory: list[Agentd]) -> None:
    a = _launch(agentd_factory, tmp_path, zoo, notify_socket)
    client, _ = _connect_and_wait_ready(a)
    t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    a.signal(signal.SIGHUP)
    msgs = notify_socket.wait_for("READY=1", 30)
    reloading = [m for m in msgs if "RELOADING=1" in m]
    assert len(reloading) == 1 and msgs.index(reloading[0]) < len(msgs) - 1
    assert int(_fields(reloading[0])["MONOTONIC_USEC"]) >= t0
    assert client.status()["daemon"]["last_reload"] is not None
    client.close()
    assert a.stop() == 0


def _send_big_requests(path: Path, n: int, batch: int) -> list[socket.socket]:
    socks = []
    x = np.random.default_rng(0).standard_normal((batch, IN)).astype(np.float32)
    descs, bufs = P.tensor_descs({"x": x})
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect(str(path))
        P.send_frame(s, P.request(i + 1, "infer", {"model": "mlp", "inputs": descs}), bufs)
        socks.append(s)
    return socks


def test_sigterm_finishes_in_flight_requests_then_exits_0(
        tmp_path: Path, zoo: Path, notify_socket: NotifySocket, agentd_factory: list[Agentd]) -> None:
    a = _launch(agentd_factory, tmp_path, zoo, notify_socket)
    client, _ = _connect_and_wait_ready(a)
    client.close()
    socks = _send_big_requests(a.socket_path, n=8, batch=8192)
    time.sleep(0.15)  # read and dispatched by the daemon; the worker runs them one after another
    a.signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING=1", 10)[-1]
    inflight = int(_fields(stopping)["STATUS"].split("finishing ")[1].split()[0])
    assert inflight >= 2, stopping  # the signal really arrived while requests were running
    for i, s in enumerate(socks):
        f = P.recv_frame(s)
        assert f.header.get("id") == i + 1 and "result" in f.header, f.header
        assert P.tensors_from(f.header["result"]["outputs"], f.payload)["y"].shape == (8192, 64)
        s.close()
    assert a.proc.wait(30) == 0, a.log_text()
    assert '"drained":true' in a.log_text()
    # it stopped accepting: nobody listens on the path any more
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, pytest.raises(OSError):
        s.connect(str(a.socket_path))


def test_second_sigterm_forces_exit(
        tmp_path: Path, zoo: Path, notify_socket: NotifySocket, agentd_factory: list[Agentd]) -> None:
    a = _launch(agentd_factory, tmp_path, zoo, notify_socket)
    client, _ = _connect_and_wait_ready(a)
    client.close()
    socks = _send_big_requests(a.socket_path, n=8, batch=8192)
    time.sleep(0.15)
    t0 = time.monotonic()
    a.signal(signal.SIGTERM)
    notify_socket.wait_for("STOPPING=1", 10)
    a.signal(signal.SIGTERM)
    rc = a.proc.wait(20)
    assert rc == 1
    assert time.monotonic() - t0 < 5
    answered = 0
    for s in socks:
        try:
            f = P.recv_frame(s)
            answered += "result" in f.header
        except (EOFError, OSError):
            pass
        s.close()
    assert answered < 8  # it did not wait for all of them


def test_started_by_hand_it_binds_its_own_socket_and_notify_is_harmless(
        tmp_path: Path, zoo: Path, notify_socket: NotifySocket, agentd_factory: list[Agentd]) -> None:
    a = _launch(agentd_factory, tmp_path, zoo, notify_socket, activate=False)
    notify_socket.wait_for("READY=1", 60)
    with Client(a.socket_path) as c:
        assert c.status()["models"]["mlp"]["active"]["variant"] == "fp32"
    assert a.stop() == 0
    assert not a.socket_path.exists()  # it removes the path it bound


def test_bad_access_config_stops_agentd_with_a_located_error(
        tmp_path: Path, zoo: Path, notify_socket: NotifySocket) -> None:
    import subprocess

    from svc_agentd import AGENTD

    bad = tmp_path / "access.toml"
    bad.write_text('[access]\nmax_concurrent = "lots"\n')
    r = subprocess.run([AGENTD, "--zoo", str(zoo), "--socket", str(tmp_path / "s"), "--state-dir",
                        str(tmp_path / "st"), "--access-config", str(bad)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert f"{bad}:2: access.max_concurrent: expected an integer" in r.stderr
