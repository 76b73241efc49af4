"""Fixtures for the service tests: a fake notify socket and real throw-away users and groups."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from svc_helpers import NotifySocket, ServiceUsers


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    os.chmod(path, 0o666)
    yield NotifySocket(str(path), s)
    s.close()


@pytest.fixture
def abstract_notify_socket() -> Iterator[NotifySocket]:
    name = f"ondevice-agent-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(b"\0" + name.encode())
    yield NotifySocket("@" + name, s)
    s.close()


def _need_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create users")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


@pytest.fixture(scope="session")
def test_users() -> Iterator[ServiceUsers]:
    """Real system users and groups, created for this session and removed afterwards."""
    _need_root_tools()
    tag = f"odat{os.getpid() % 100000}"
    groups = [f"{tag}cli", f"{tag}adm"]
    users = {"member": f"{tag}mem", "outsider": f"{tag}out", "admin": f"{tag}root"}
    made_groups: list[str] = []
    made_users: list[str] = []
    try:
        for g in groups:
            subprocess.run(["groupadd", "--system", g], check=True, capture_output=True)
            made_groups.append(g)
        spec = {"member": [groups[0]], "outsider": [], "admin": [groups[0], groups[1]]}
        for role, name in users.items():
            cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
            if spec[role]:
                cmd += ["--groups", ",".join(spec[role])]
            subprocess.run([*cmd, name], check=True, capture_output=True)
            made_users.append(name)
        yield ServiceUsers(groups[0], groups[1], pwd.getpwnam(users["member"]),
                        pwd.getpwnam(users["outsider"]), pwd.getpwnam(users["admin"]))
    finally:
        for name in made_users:
            subprocess.run(["userdel", name], check=False, capture_output=True)
        for g in made_groups:
            subprocess.run(["groupdel", g], check=False, capture_output=True)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory other users can traverse (pytest's tmp_path is 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="oda-svc-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)
