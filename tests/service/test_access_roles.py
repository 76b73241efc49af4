"""agent.ipc.access: roles from real kernel credentials of real users, limits, config errors."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from svc_helpers import ServiceUsers, as_user

from agent.errors import Busy, ConfigError, FrameTooLarge, PermissionDenied
from agent.ipc.access import AccessPolicy, PeerCred, PeerLimiter, Role, peer_credentials


def _policy(users: ServiceUsers, **kw: object) -> AccessPolicy:
    kw.setdefault("owner_uid", 0)
    return AccessPolicy(clients_group=users.clients_group, admin_group=users.admin_group, **kw)  # type: ignore[arg-type]


def _cred(user: object, groups: list[int] | None = None) -> PeerCred:
    import pwd
    assert isinstance(user, pwd.struct_passwd)
    gs = os.getgrouplist(user.pw_name, user.pw_gid) if groups is None else groups
    return PeerCred(pid=0, uid=user.pw_uid, gid=user.pw_gid, groups=frozenset(gs))


def test_roles_follow_group_membership_of_real_users(test_users: ServiceUsers) -> None:
    p = _policy(test_users)
    assert p.role_of(_cred(test_users.member)) is Role.CLIENT
    assert p.role_of(_cred(test_users.outsider)) is Role.NONE
    assert p.role_of(_cred(test_users.admin)) is Role.ADMIN
    assert p.role_of(PeerCred(1234, 0, 0)) is Role.ADMIN  # root always


def test_daemon_owner_is_admin_only_when_configured(test_users: ServiceUsers) -> None:
    outsider = _cred(test_users.outsider)
    assert _policy(test_users, owner_uid=outsider.uid).role_of(outsider) is Role.ADMIN
    assert _policy(test_users, owner_uid=outsider.uid, owner_is_admin=False).role_of(outsider) is Role.NONE


def test_missing_or_disabled_groups_leave_only_root(test_users: ServiceUsers) -> None:
    p = AccessPolicy(clients_group="no-such-group-xyz", admin_group=None, owner_uid=0)
    assert p.role_of(_cred(test_users.member)) is Role.NONE
    assert p.role_of(_cred(test_users.admin)) is Role.NONE
    assert p.role_of(PeerCred(1, 0, 0)) is Role.ADMIN


def test_client_methods_allowed_admin_methods_refused_for_clients() -> None:
    p = AccessPolicy(owner_uid=0)
    for m in ("infer", "generate", "hold", "release", "status", "models", "subscribe"):
        p.authorize(Role.CLIENT, m)
    for m in ("pin", "unpin", "reload", "zoo.add", "policy.set", "some.future.method"):
        with pytest.raises(PermissionDenied) as ei:
            p.authorize(Role.CLIENT, m)
        assert ei.value.data["required"] == "admin"
        p.authorize(Role.ADMIN, m)
    with pytest.raises(PermissionDenied):
        p.authorize(Role.NONE, "status")


def test_frame_limit_is_checked_on_the_length_prefix() -> None:
    p = AccessPolicy(max_frame_bytes=1024, owner_uid=0)
    p.check_frame(1024)
    with pytest.raises(FrameTooLarge) as ei:
        p.check_frame(1025)
    assert ei.value.data == {"length": 1025, "limit": 1024}


def test_limiter_refuses_past_max_concurrent_per_uid_and_recovers() -> None:
    lim = PeerLimiter(AccessPolicy(max_concurrent=2, max_connections=1, owner_uid=0))
    a, a2, b = PeerCred(10, 1000, 1000), PeerCred(11, 1000, 1000), PeerCred(12, 1001, 1001)
    lim.begin(a)
    lim.begin(a2)  # same uid, other process: the same peer
    with pytest.raises(Busy):
        lim.begin(a)
    lim.begin(b)  # another uid is not affected
    lim.end(a)
    with lim.request(a):
        assert lim.inflight(1000) == 2
    assert lim.inflight(1000) == 1
    with lim.connection(a), pytest.raises(Busy):
        lim.open(a2)
    assert lim.connections(1000) == 0


# -- configuration -------------------------------------------------------------------------------


def test_access_table_is_read_from_toml(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text('[other]\nx = 1\n[access]\nclients_group = "apps"\nadmin_group = ""\nmax_concurrent = 3\n')
    p = AccessPolicy.load(f)
    assert (p.clients_group, p.admin_group, p.max_concurrent) == ("apps", None, 3)
    assert AccessPolicy.load(tmp_path / "agent.toml").max_frame_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize("body, line, key, text", [
    ('[access]\nclient_group = "x"\n', 2, "access.client_group", "unknown key"),
    ('[access]\nmax_concurrent = 0\n', 2, "access.max_concurrent", "expected a number in 1"),
    ('[access]\nmax_concurrent = "8"\n', 2, "access.max_concurrent", "expected an integer"),
    ('[access]\nmax_frame_bytes = 1.5\n', 2, "access.max_frame_bytes", "expected an integer"),
    ('[access]\nowner_is_admin = 1\n', 2, "access.owner_is_admin", "expected true or false"),
    ('\n[access]\nadmin_group = "wheel; rm -rf /"\n', 3, "access.admin_group", "expected a group name"),
    ('access = 3\n', 1, "access", "expected a table"),
])
def test_malformed_access_config_names_file_line_and_key(
        tmp_path: Path, body: str, line: int, key: str | None, text: str) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(body)
    with pytest.raises(ConfigError) as ei:
        AccessPolicy.load(f)
    e = ei.value
    assert (e.file, e.line, e.key) == (str(f), line, key)
    assert text in str(e) and str(e).startswith(f"{f}:{line}: ")


def test_unparsable_config_file_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text("[access\n")
    with pytest.raises(ConfigError, match="invalid TOML") as ei:
        AccessPolicy.load(f)
    assert ei.value.file == str(f)
    with pytest.raises(ConfigError, match="cannot read"):
        AccessPolicy.load(tmp_path / "missing.toml")


def test_policy_rejects_non_positive_limits_in_code() -> None:
    with pytest.raises(ConfigError):
        AccessPolicy(max_connections=0)


# -- real peers over a real socket ---------------------------------------------------------------


class RoleServer:
    """Accepts connections and answers each with the role the policy gives the kernel-reported peer."""

    def __init__(self, path: Path, policy: AccessPolicy) -> None:
        self.policy = policy
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                cred = peer_credentials(conn)
                conn.sendall(json.dumps({"role": self.policy.role_of(cred).name, "uid": cred.uid,
                                         "groups": sorted(cred.groups)}).encode())

    def close(self) -> None:
        self.sock.close()


_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print('{"error": %d}' % e.errno); raise SystemExit(0)
print(s.recv(4096).decode())
"""


@pytest.fixture
def role_server(test_users: ServiceUsers, shared_tmp: Path) -> Iterator[tuple[RoleServer, Path]]:
    path = shared_tmp / "agent.sock"
    srv = RoleServer(path, _policy(test_users))
    # like the socket unit: root:clients 0660
    os.chown(path, 0, test_users.gid(test_users.clients_group))
    os.chmod(path, 0o660)
    yield srv, path
    srv.close()


def _connect_as(prefix: list[str], path: Path) -> dict[str, object]:
    out = subprocess.run([*prefix, sys.executable, "-I", "-c", _CLIENT, str(path)],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_socket_mode_keeps_non_members_out(role_server: tuple[RoleServer, Path],
                                           test_users: ServiceUsers) -> None:
    _, path = role_server
    assert _connect_as(as_user(test_users.outsider), path) == {"error": errno.EACCES}
    assert _connect_as(as_user(test_users.member), path)["role"] == "CLIENT"


def test_roles_come_from_the_connecting_process_credentials(role_server: tuple[RoleServer, Path],
                                                            test_users: ServiceUsers) -> None:
    _, path = role_server
    cli_gid = test_users.gid(test_users.clients_group)
    adm_gid = test_users.gid(test_users.admin_group)
    admin = _connect_as(as_user(test_users.admin), path)
    assert admin["role"] == "ADMIN" and admin["uid"] == test_users.admin.pw_uid
    assert adm_gid in admin["groups"]  # type: ignore[operator]
    # the same member user, started with only the clients group but not the admin group: client
    assert _connect_as(as_user(test_users.admin, groups=[cli_gid]), path)["role"] == "CLIENT"
    # the kernel's view wins over the user database: an outsider given the group by setpriv is a client
    assert _connect_as(as_user(test_users.outsider, groups=[cli_gid]), path)["role"] == "CLIENT"


def test_peer_without_group_but_abstract_socket_is_still_refused_by_role(
        test_users: ServiceUsers) -> None:
    """Abstract sockets ignore file permissions: the role check alone must keep non-members out."""
    name = f"oda-role-test-{os.getpid()}"
    srv_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv_sock.bind(b"\0" + name.encode())
    srv_sock.listen(4)
    policy = _policy(test_users)
    result: dict[str, object] = {}

    def serve() -> None:
        conn, _ = srv_sock.accept()
        with conn:
            result["role"] = policy.role_of(peer_credentials(conn))
            conn.sendall(b"{}")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(b'\\0' + sys.argv[1].encode()); "
              "print(s.recv(10).decode())")
    subprocess.run([*as_user(test_users.outsider), sys.executable, "-I", "-c", client, name],
                   check=True, capture_output=True, timeout=30)
    t.join(10)
    srv_sock.close()
    assert result["role"] is Role.NONE
