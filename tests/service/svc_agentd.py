"""Starting a real agentd for the service tests: under systemd-socket-activate, or binding its own path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from svc_helpers import NotifySocket, connect_when_listening

AGENTD = str(Path(sysconfig.get_path("scripts")) / "agentd")
SOCKET_ACTIVATE = "/usr/bin/systemd-socket-activate"


class Agentd:
    """A running agentd process and the fake notify socket it reports to."""

    def __init__(self, proc: subprocess.Popen[bytes], socket_path: Path, notify: NotifySocket,
                 log: Path) -> None:
        self.proc, self.socket_path, self.notify, self.log = proc, socket_path, notify, log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _wait_path(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before creating {path}")
        if time.monotonic() > end:
            raise AssertionError(f"{path} not created within {timeout}s")
        time.sleep(0.02)


def start_agentd(workdir: Path, zoo: Path, notify: NotifySocket, *, activate: bool = True,
                 watchdog_usec: int | None = None, extra: list[str] | None = None) -> Agentd:
    """Start agentd; with ``activate`` under ``systemd-socket-activate -l PATH -E NOTIFY_SOCKET
    -E WATCHDOG_USEC`` (agentd starts on the first connection), else binding ``--socket`` itself."""
    sock = workdir / "agent.sock"
    log = workdir / "agentd.log"
    env = dict(os.environ, NOTIFY_SOCKET=notify.address, PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_USEC", None)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    args = [AGENTD, "--zoo", str(zoo), "--state-dir", str(workdir / "state"), "--spare-workers", "0",
            "--log-level", "info", *(extra or [])]
    if activate:
        cmd = [SOCKET_ACTIVATE, "-l", str(sock), "--fdname=agent", "-E", "NOTIFY_SOCKET"]
        if watchdog_usec is not None:
            cmd += ["-E", "WATCHDOG_USEC"]
        if env.get("PYTHONPATH"):   # it passes only the variables named: a checkout's agent must win
            cmd += ["-E", "PYTHONPATH"]
        cmd += args
    else:
        cmd = [*args, "--socket", str(sock)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_path(sock, proc)
        if not activate:  # bound a moment before it listens; under socket activation a connect starts it
            connect_when_listening(str(sock), timeout=60).close()
    except (AssertionError, OSError):
        proc.kill()
        proc.wait(10)
        raise
    return Agentd(proc, sock, notify, log)


def python() -> str:
    return sys.executable
