"""Shared fixtures: a real tensor zoo (fp32 + int8 built with ORT's quantizer) and a real agentd."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tensor_zoo_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agent.testing import make_tensor_zoo

    zoo = tmp_path_factory.mktemp("zoo-src")
    make_tensor_zoo(zoo, "mlp", in_features=256, hidden=512, out_features=64)
    return zoo


@pytest.fixture
def tensor_zoo(tensor_zoo_src: Path, tmp_path: Path) -> Path:
    """A private copy, so a test may corrupt files."""
    dst = tmp_path / "zoo"
    shutil.copytree(tensor_zoo_src, dst)
    return dst


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    socket: Path
    state_dir: Path
    zoo: Path
    log: Path

    def client(self, timeout: float = 60.0):  # type: ignore[no-untyped-def]
        from agent.client import Client

        return Client(self.socket, timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_daemon(zoo: Path, tmp: Path, *extra: str, wait: bool = True) -> Daemon:
    from agent.client import wait_for_socket

    # a short socket path: AF_UNIX paths are limited to 108 bytes
    sock_dir = Path(tempfile.mkdtemp(prefix="agt", dir="/tmp"))
    sock = sock_dir / "a.sock"
    state = tmp / "state"
    log = tmp / "agentd.log"
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    cmd = [sys.executable, "-m", "agent.daemon", "--zoo", str(zoo), "--socket", str(sock),
           "--state-dir", str(state), *extra]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    d = Daemon(proc, sock, state, zoo, log)
    if wait:
        try:
            wait_for_socket(sock, timeout=60)
        except Exception as e:  # whatever went wrong: stop the daemon, fail with its log
            d.stop(5)
            raise AssertionError("agentd did not start:\n" + d.log_text()) from e
    return d


@pytest.fixture
def daemon(tensor_zoo: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Daemon]:
    """agentd on a private zoo copy; extra agentd arguments with
    ``@pytest.mark.parametrize("daemon", [["--flag", "value"]], indirect=True)``."""
    d = start_daemon(tensor_zoo, tmp_path, *getattr(request, "param", ()))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def shared_daemon(tensor_zoo_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One agentd for a whole module of tests that do not change its state."""
    tmp = tmp_path_factory.mktemp("shared")
    zoo = tmp / "zoo"
    shutil.copytree(tensor_zoo_src, zoo)
    d = start_daemon(zoo, tmp)
    yield d
    d.stop()


def ctl(daemon: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``agentctl --socket DAEMON ARGS``; AssertionError with its stderr when ``check`` and it fails."""
    p = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(daemon.socket), *args],
                       capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p
