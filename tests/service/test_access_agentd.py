"""Access control end to end: real users (created for the test) talk to a real agentd via setpriv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from svc_agentd import Agentd, start_agentd
from svc_helpers import NotifySocket, ServiceUsers, as_user

pytestmark = pytest.mark.integration

_CLIENT = r"""
import json, sys, time
import numpy as np
from agent.client import Client
from agent.errors import AgentError
out = {}
try:
    c = Client(sys.argv[1], timeout=30)
except AgentError as e:
    print(json.dumps({"connect": type(e).__name__})); raise SystemExit(0)
ops = {
    "status": lambda: c.status(),
    "infer": lambda: c.infer("mlp", {"x": np.ones((1, 16), np.float32)}).variant,
    "hold": lambda: c.hold("power-saver", "test"),
    "pin": lambda: c.pin("mlp", "int8"),
    "unpin": lambda: c.unpin("mlp"),
    "reload": lambda: c.reload(),
    "wait": lambda: time.sleep(0.3),  # let the daemon act first (e.g. refuse and close)
}
for name in sys.argv[2].split(","):
    try:
        ops[name]()
        out[name] = "ok"
    except AgentError as e:
        out[name] = type(e).__name__
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    from agent.testing import make_tensor_zoo

    z = tmp_path_factory.mktemp("zoo")
    make_tensor_zoo(z, "mlp", in_features=16, hidden=32, out_features=4)
    return z


@pytest.fixture
def guarded_agentd(test_users: ServiceUsers, shared_tmp: Path, small_zoo: Path,
                   notify_socket: NotifySocket) -> Iterator[Agentd]:
    cfg = shared_tmp / "access.toml"
    cfg.write_text(f'[access]\nclients_group = "{test_users.clients_group}"\n'
                   f'admin_group = "{test_users.admin_group}"\n')
    a = start_agentd(shared_tmp, small_zoo, notify_socket, activate=False,
                     extra=["--access-config", str(cfg)])
    try:
        notify_socket.wait_for("READY=1", 60)
        # what the socket unit does: root:clients, 0660
        os.chown(a.socket_path, 0, test_users.gid(test_users.clients_group))
        os.chmod(a.socket_path, 0o660)
        yield a
    finally:
        a.stop()


def _as(prefix: list[str], sock: Path, ops: str) -> dict[str, str]:
    r = subprocess.run([*prefix, sys.executable, "-c", _CLIENT, str(sock), ops],
                       capture_output=True, text=True, timeout=60, check=False, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


ALL = "status,infer,hold,pin,unpin,reload"


def test_member_of_clients_group_may_infer_but_not_administer(
        guarded_agentd: Agentd, test_users: ServiceUsers) -> None:
    got = _as(as_user(test_users.member), guarded_agentd.socket_path, ALL)
    assert got == {"status": "ok", "infer": "ok", "hold": "ok",
                   "pin": "PermissionDenied", "unpin": "PermissionDenied", "reload": "PermissionDenied"}


def test_member_of_admin_group_may_administer(guarded_agentd: Agentd, test_users: ServiceUsers) -> None:
    got = _as(as_user(test_users.admin), guarded_agentd.socket_path, ALL)
    assert got == dict.fromkeys(ALL.split(","), "ok")


def test_non_member_cannot_connect_through_the_socket_permissions(
        guarded_agentd: Agentd, test_users: ServiceUsers) -> None:
    assert _as(as_user(test_users.outsider), guarded_agentd.socket_path, "status") == {
        "connect": "ConnectionClosed"}


def test_non_member_is_refused_by_the_daemon_even_when_the_socket_is_open(
        guarded_agentd: Agentd, test_users: ServiceUsers) -> None:
    os.chmod(guarded_agentd.socket_path, 0o666)  # a misconfigured socket: the role check still holds
    got = _as(as_user(test_users.outsider), guarded_agentd.socket_path, "status,infer")
    assert set(got.values()) <= {"PermissionDenied", "ConnectionClosed"}
    assert got["status"] == "PermissionDenied"
    # refused and closed before the client even sent: it still learns why
    got = _as(as_user(test_users.outsider), guarded_agentd.socket_path, "wait,status")
    assert got == {"wait": "ok", "status": "PermissionDenied"}
    # and the same user given the clients group by the kernel (setpriv) gets in
    cli = test_users.gid(test_users.clients_group)
    assert _as(as_user(test_users.outsider, groups=[cli]), guarded_agentd.socket_path, "status") == {
        "status": "ok"}


def test_admin_dropping_its_admin_group_loses_admin_rights(
        guarded_agentd: Agentd, test_users: ServiceUsers) -> None:
    cli = test_users.gid(test_users.clients_group)
    got = _as(as_user(test_users.admin, groups=[cli]), guarded_agentd.socket_path, "status,pin")
    assert got == {"status": "ok", "pin": "PermissionDenied"}
