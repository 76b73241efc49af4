"""Helpers shared by the service tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import time
from dataclasses import dataclass


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address  # what goes into $NOTIFY_SOCKET
        self.sock = sock
        self.messages: list[tuple[float, str]] = []

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode()
        self.messages.append((time.monotonic(), data))
        return data

    def drain(self, duration: float) -> list[tuple[float, str]]:
        """Everything that arrives within ``duration`` seconds, with arrival times."""
        out = []
        end = time.monotonic() + duration
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                break
            out.append((time.monotonic(), data))
        self.messages.extend(out)
        return out

    def wait_for(self, needle: str, timeout: float) -> list[str]:
        """Messages received until one contains ``needle`` (inclusive); fails after ``timeout``."""
        seen = []
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} within {timeout}s; got {seen}")
            try:
                msg = self.recv(left)
            except TimeoutError:
                continue
            seen.append(msg)
            if needle in msg:
                return seen


@dataclass(frozen=True)
class ServiceUsers:
    clients_group: str
    admin_group: str
    member: pwd.struct_passwd      # in clients_group only
    outsider: pwd.struct_passwd    # in neither group
    admin: pwd.struct_passwd       # in admin_group and clients_group

    def gid(self, group: str) -> int:
        return grp.getgrnam(group).gr_gid


def as_user(user: pwd.struct_passwd, *, groups: list[int] | None = None) -> list[str]:
    """setpriv prefix running a command as ``user`` with exactly the given supplementary groups
    (default: the user's groups from the user database)."""
    if groups is None:
        groups = [g for g in os.getgrouplist(user.pw_name, user.pw_gid)]
    cmd = ["setpriv", "--reuid", str(user.pw_uid), "--regid", str(user.pw_gid)]
    cmd += ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return cmd


def connect_when_listening(path: str, timeout: float = 10.0) -> socket.socket:
    """Connect to a Unix socket that may exist (bound) a moment before it listens."""
    end = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.02)
