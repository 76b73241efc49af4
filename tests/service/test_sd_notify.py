"""agent.systemd: notify messages, socket activation and the watchdog, against real sockets."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from svc_helpers import NotifySocket, connect_when_listening

from agent.service import systemd as sd


def _fields(msg: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in msg.splitlines())


def test_ready_with_status_reaches_a_path_notify_socket(notify_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.address}
    assert sd.ready("serving vad/fp32 (balanced)", env=env) is True
    assert _fields(notify_socket.recv()) == {"READY": "1", "STATUS": "serving vad/fp32 (balanced)"}


def test_messages_reach_an_abstract_notify_socket(abstract_notify_socket: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": abstract_notify_socket.address}
    assert abstract_notify_socket.address.startswith("@")
    assert sd.stopping(env=env)
    assert sd.watchdog_ping(env=env)
    assert abstract_notify_socket.recv() == "STOPPING=1"
    assert abstract_notify_socket.recv() == "WATCHDOG=1"


def test_reloading_carries_the_current_monotonic_time(notify_socket: NotifySocket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sd.reloading("reloading policy", env={"NOTIFY_SOCKET": notify_socket.address})
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    f = _fields(notify_socket.recv())
    assert f["RELOADING"] == "1" and f["STATUS"] == "reloading policy"
    assert before <= int(f["MONOTONIC_USEC"]) <= after


def test_status_text_cannot_inject_another_assignment(notify_socket: NotifySocket) -> None:
    sd.status("variant a\nREADY=1", env={"NOTIFY_SOCKET": notify_socket.address})
    msg = notify_socket.recv()
    assert msg == "STATUS=variant a READY=1"
    assert "\n" not in msg


def test_notify_without_socket_is_a_noop() -> None:
    assert sd.notify("READY=1", env={}) is False


@pytest.mark.parametrize("bad", ["relative/path", "vsock:2:1234"])
def test_unusable_notify_address_is_ignored(bad: str) -> None:
    assert sd.notify("READY=1", env={"NOTIFY_SOCKET": bad}) is False


def test_vanished_notify_socket_does_not_raise(tmp_path: Path) -> None:
    assert sd.ready(env={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


# -- watchdog_interval ---------------------------------------------------------------------------


def test_watchdog_interval_reads_usec_for_this_pid() -> None:
    assert sd.watchdog_interval(env={"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 3.0
    assert sd.watchdog_interval(env={"WATCHDOG_USEC": "500000"}) == 0.5


@pytest.mark.parametrize("env", [
    {},
    {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"},       # meant for another process
    {"WATCHDOG_USEC": "abc"},
    {"WATCHDOG_USEC": "0"},
    {"WATCHDOG_USEC": "-5"},
    {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"},
])
def test_watchdog_interval_is_none_when_absent_foreign_or_malformed(env: dict[str, str]) -> None:
    assert sd.watchdog_interval(env=env) is None


# -- Watchdog ------------------------------------------------------------------------------------


def test_watchdog_pings_at_half_the_interval_while_healthy(notify_socket: NotifySocket) -> None:
    wd = sd.Watchdog(lambda: True, env={"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "400000"})
    assert wd.interval == 0.4
    wd.start()
    try:
        got = notify_socket.drain(1.1)
    finally:
        wd.stop()
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    # one at start, then every 0.2 s: about 6 in 1.1 s; generous bounds for a loaded 2-core machine
    assert 4 <= len(pings) <= 7, got
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.1 < g < 0.4 for g in gaps), gaps


def test_watchdog_stops_pinging_while_unhealthy_and_resumes(notify_socket: NotifySocket) -> None:
    healthy = {"ok": True}
    wd = sd.Watchdog(lambda: healthy["ok"], interval=0.2, env={"NOTIFY_SOCKET": notify_socket.address})
    wd.start()
    try:
        assert notify_socket.drain(0.35)
        healthy["ok"] = False
        notify_socket.drain(0.15)  # a ping already on its way may still arrive
        assert notify_socket.drain(0.5) == []
        assert wd.skipped >= 2
        healthy["ok"] = True
        assert [m for _, m in notify_socket.drain(0.35)] and wd.pings >= 2
    finally:
        wd.stop()


def test_a_raising_health_check_counts_as_unhealthy(notify_socket: NotifySocket) -> None:
    def boom() -> bool:
        raise RuntimeError("sampling loop state corrupt")

    wd = sd.Watchdog(boom, interval=10, env={"NOTIFY_SOCKET": notify_socket.address})
    assert wd.check_and_ping() is False
    assert wd.skipped == 1
    assert notify_socket.drain(0.1) == []


def test_stale_heartbeat_stops_watchdog_pings(notify_socket: NotifySocket) -> None:
    now = [100.0]
    hb = sd.Heartbeat(clock=lambda: now[0])
    wd = sd.Watchdog(lambda: hb.fresh(2.0), interval=10, env={"NOTIFY_SOCKET": notify_socket.address})
    assert wd.check_and_ping() is True
    now[0] += 5.0  # the sampling loop did not beat for 5 s
    assert wd.check_and_ping() is False
    hb.beat()
    assert wd.check_and_ping() is True
    assert [m for _, m in notify_socket.drain(0.2)] == ["WATCHDOG=1", "WATCHDOG=1"]


def test_watchdog_without_configuration_does_not_start() -> None:
    wd = sd.Watchdog(lambda: True, env={})
    wd.start()
    assert not wd.enabled and wd._thread is None


# -- listen_fds ----------------------------------------------------------------------------------


def test_listen_fds_ignores_fds_meant_for_another_process_and_unsets_env() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "agent"}
    assert sd.listen_fds(env=env) == []
    assert env == {}


@pytest.mark.parametrize("env", [{}, {"LISTEN_FDS": "1"}, {"LISTEN_PID": "x", "LISTEN_FDS": "1"},
                                 {"LISTEN_PID": "PID", "LISTEN_FDS": "0"}])
def test_listen_fds_is_empty_without_valid_variables(env: dict[str, str]) -> None:
    env = {k: (str(os.getpid()) if v == "PID" else v) for k, v in env.items()}
    assert sd.listen_fds(env=env, unset_environment=False) == []


_CHILD = r"""
import json, os, sys
from agent.service import systemd as sd
fds = sd.listen_fds()
sock = sd.unix_listener(fds, name=sys.argv[1] if len(sys.argv) > 1 else None)
out = {"fds": [[f.fd, f.name] for f in fds], "env_left": "LISTEN_FDS" in os.environ,
       "inheritable": [os.get_inheritable(f.fd) for f in fds], "listener": sock is not None}
if sock is not None:
    conn, _ = sock.accept()
    conn.sendall(json.dumps(out).encode())
    conn.close()
else:
    print(json.dumps(out), flush=True)
"""


def _activate(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    sock_path = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(sock_path), "--fdname=agent",
         sys.executable, "-c", _CHILD, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    for _ in range(200):
        if sock_path.exists():
            break
        time.sleep(0.02)
    return proc, sock_path


@pytest.mark.skipif(not Path("/usr/bin/systemd-socket-activate").exists(), reason="needs systemd-socket-activate")
def test_unix_listener_takes_the_socket_passed_by_systemd(tmp_path: Path) -> None:
    import json

    proc, sock_path = _activate(tmp_path, "agent")
    try:
        with connect_when_listening(str(sock_path)) as c:
            c.settimeout(30)
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        info = json.loads(data)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)   # reaps it and closes its stdout/stderr pipes
    assert info == {"fds": [[3, "agent"]], "env_left": False, "inheritable": [False], "listener": True}


@pytest.mark.skipif(not Path("/usr/bin/systemd-socket-activate").exists(), reason="needs systemd-socket-activate")
def test_unix_listener_skips_a_passed_socket_with_another_name(tmp_path: Path) -> None:
    import json

    proc, sock_path = _activate(tmp_path, "metrics")
    c = connect_when_listening(str(sock_path))  # triggers the start
    out, _ = proc.communicate(timeout=30)
    c.close()
    assert json.loads(out) == {"fds": [[3, "agent"]], "env_left": False, "inheritable": [False],
                               "listener": False}


# -- Supervisor (asyncio) ------------------------------------------------------------------------


def test_supervisor_stops_pinging_while_the_event_loop_is_blocked(notify_socket: NotifySocket) -> None:
    import asyncio
    import threading

    env = {"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "400000"}
    got: list[tuple[float, str]] = []
    collector = threading.Thread(target=lambda: got.extend(notify_socket.drain(2.0)))
    collector.start()
    marks: dict[str, float] = {}

    async def main() -> None:
        sup = sd.Supervisor(status_text=lambda: "serving test", env=env)
        sup.start()
        await asyncio.sleep(0.6)
        marks["block"] = time.monotonic()
        time.sleep(1.0)  # noqa: ASYNC251 -- the point: a stalled loop, no await for 1 s
        marks["unblock"] = time.monotonic()
        await asyncio.sleep(0.3)
        await sup.stop()

    asyncio.run(main())
    collector.join()
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    assert [m for _, m in got].count("STATUS=serving test") == 1
    assert any(t < marks["block"] for t in pings)
    # the heartbeat may be up to max_age (0.2 s) old when the loop blocks; after that, silence
    assert not [t for t in pings if marks["block"] + 0.3 < t < marks["unblock"]], (pings, marks)
    assert any(t > marks["unblock"] for t in pings)


def test_supervisor_health_requires_every_check(notify_socket: NotifySocket) -> None:
    flags = {"workers": True}
    sup = sd.Supervisor(lambda: flags["workers"], env={"NOTIFY_SOCKET": notify_socket.address})
    assert sup.healthy()
    flags["workers"] = False
    assert not sup.healthy()
    sup.stopping("bye")  # workers are stopped on purpose during shutdown: only the loop matters
    assert sup.healthy()
    assert notify_socket.recv() == "STOPPING=1\nSTATUS=bye"
