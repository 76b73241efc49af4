"""Who may talk to the daemon, and how much: access control on top of the socket's file permissions.

A peer is identified by the kernel, not by anything it sends: ``SO_PEERCRED`` gives its pid/uid/gid
and ``SO_PEERGROUPS`` its supplementary groups *as they were when it connected* (``/proc/PID/status``
and then the user database are fallbacks for kernels without it). :class:`AccessPolicy` maps that to
a :class:`Role`:

* ``ADMIN``  – root, the daemon's own user (``owner_is_admin``), or a member of ``admin_group``;
* ``CLIENT`` – a member of ``clients_group``;
* ``NONE``   – anybody else: the server closes the connection.

Clients may call the methods in :data:`CLIENT_METHODS` (inference, generation, holds, status), which
the method table (:mod:`agent.ipc.methods`) grants to clients; every other method, known or not, needs
``ADMIN`` (deny by default). Per-peer limits (a peer is a uid: one user opening many
connections is still one peer) bound concurrent requests and connections; ``max_frame_bytes`` bounds
one frame, checked on the length prefix before the body is read.

Configuration is the ``[access]`` table of the daemon's config (see :meth:`AccessPolicy.from_checker`)::

    [access]
    clients_group = "ondevice-agent-clients"   # "" disables group-based client access
    admin_group = "ondevice-agent-admins"      # "" leaves only root / the daemon's user as admins
    owner_is_admin = true
    max_concurrent = 8                          # in-flight requests per uid
    max_connections = 16                        # open connections per uid
    max_frame_bytes = 67108864
"""

from __future__ import annotations

import grp
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.errors import Busy, ConfigError, FrameTooLarge, PermissionDenied
from agent.ipc.methods import METHODS, ROLES
from agent.ipc.peer import PeerCred, Role, peer_credentials, peer_groups
from agent.tomlfile import Checker, TomlDoc

__all__ = ["ADMIN_METHODS_DOC", "CLIENT_METHODS", "AccessGate", "AccessPolicy", "PeerCred", "PeerLimiter", "Role",
           "install", "peer_credentials", "peer_groups", "policy_for_daemon"]

log = logging.getLogger(__name__)

CLIENT_METHODS: frozenset[str] = frozenset(m.name for m in METHODS if m.role is Role.CLIENT)
"""Methods a member of the clients' group may call: those the method table (:mod:`agent.ipc.methods`)
grants to clients. Everything else (pin, unpin, reload, zoo.*, policy.*, shutdown, …) needs the admin role."""

ADMIN_METHODS_DOC = (*(m.name for m in METHODS if m.role is Role.ADMIN), "zoo.*", "policy.*")  # docs, errors


def _gid_of(name: str | None) -> int | None:
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


@dataclass(frozen=True)
class AccessPolicy:
    clients_group: str | None = "ondevice-agent-clients"
    admin_group: str | None = "ondevice-agent-admins"
    owner_is_admin: bool = True
    max_concurrent: int = 8
    max_connections: int = 16
    max_frame_bytes: int = 64 * 1024 * 1024
    owner_uid: int = field(default_factory=os.geteuid)

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "max_connections", "max_frame_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"expected a positive integer, got {v!r}", key=f"access.{name}")

    def role_of(self, peer: PeerCred) -> Role:
        """The role of a peer. Groups are looked up now, so a group created after start counts."""
        if peer.uid == 0 or (self.owner_is_admin and peer.uid == self.owner_uid):
            return Role.ADMIN
        gids = peer.all_gids()
        admin_gid = _gid_of(self.admin_group)
        if admin_gid is not None and admin_gid in gids:
            return Role.ADMIN
        client_gid = _gid_of(self.clients_group)
        if client_gid is not None and client_gid in gids:
            return Role.CLIENT
        return Role.NONE

    def required_role(self, method: str) -> Role:
        return ROLES.get(method, Role.ADMIN)   # deny by default: a method not in the table is admin-only

    def authorize(self, role: Role, method: str) -> None:
        """Raise :class:`PermissionDenied` unless ``role`` may call ``method``."""
        need = self.required_role(method)
        if role < need:
            raise PermissionDenied(
                f"{method!r} needs the {need.name.lower()} role"
                + (f" (root or group {self.admin_group!r})" if need is Role.ADMIN and self.admin_group
                   else ""),
                data={"method": method, "role": role.name.lower(), "required": need.name.lower()},
            )

    def check_frame(self, length: int) -> None:
        """Raise :class:`FrameTooLarge` for a length prefix over the limit (before reading the body)."""
        if length > self.max_frame_bytes:
            raise FrameTooLarge(
                f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes}",
                data={"length": length, "limit": self.max_frame_bytes},
            )

    # -- configuration ---------------------------------------------------------------------------

    @classmethod
    def from_checker(cls, c: Checker | None) -> AccessPolicy:
        """Build from the ``[access]`` table of a config file (None: defaults). Unknown keys are errors."""
        if c is None:
            return cls()
        c.only({"clients_group", "admin_group", "owner_is_admin", "max_concurrent", "max_connections",
                "max_frame_bytes"})
        kw: dict[str, Any] = {}
        for key in ("clients_group", "admin_group"):
            v = c.str(key, required=False)
            if v is not None:
                if v and not _valid_group_name(v):
                    raise c.error(key, f"expected a group name (letters, digits, _ . -), got {v!r}")
                kw[key] = v or None
        v = c.bool("owner_is_admin", required=False)
        if v is not None:
            kw["owner_is_admin"] = v
        for key, hi in (("max_concurrent", 4096), ("max_connections", 4096),
                        ("max_frame_bytes", 1 << 31)):
            n = c.num(key, required=False, lo=1, hi=hi, integer=True)
            if n is not None:
                kw[key] = n
        return cls(**kw)

    @classmethod
    def load(cls, path: Path) -> AccessPolicy:
        """Read the ``[access]`` table of a TOML file (other tables are ignored here)."""
        doc = TomlDoc.load(path, ConfigError)
        root = Checker(doc, doc.data)
        return cls.from_checker(root.table_of("access"))


def _valid_group_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(ch.isalnum() or ch in "_.-" for ch in name) and name[0] != "-"


class PeerLimiter:
    """Counts connections and in-flight requests per uid and refuses past the policy's limits.

    Thread-safe; cheap enough to call per request. Use :meth:`connection` around a connection's life and
    :meth:`request` around each request; both raise :class:`Busy` when the peer is over its limit.
    """

    def __init__(self, policy: AccessPolicy, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self._lock = threading.Lock()
        self._conns: dict[int, int] = {}
        self._opened: dict[int, list[float]] = {}   # uid -> when each open connection was opened
        self._inflight: dict[int, int] = {}

    def open(self, peer: PeerCred) -> None:
        with self._lock:
            n = self._conns.get(peer.uid, 0)
            if n >= self.policy.max_connections:
                raise self._too_many(peer.uid, n)
            self._conns[peer.uid] = n + 1
            self._opened.setdefault(peer.uid, []).append(self.clock())

    def _too_many(self, uid: int, n: int) -> Busy:
        opened = self._opened.get(uid) or [self.clock()]
        oldest, newest = min(opened), max(opened)
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest))
        return Busy(f"too many connections from uid {uid}: {n} open (limit {self.policy.max_connections}), "
                    f"the oldest since {iso} ({self.clock() - oldest:.0f} s ago), the newest "
                    f"{self.clock() - newest:.0f} s ago",
                    data={"limit": self.policy.max_connections, "open": n, "oldest_since": oldest,
                          "newest_since": newest})

    def close(self, peer: PeerCred) -> None:
        with self._lock:
            n = self._conns.get(peer.uid, 0) - 1
            opened = self._opened.get(peer.uid)
            if opened:
                opened.remove(min(opened))   # which one closed is not known here: age the count fairly
            if n > 0:
                self._conns[peer.uid] = n
            else:
                self._conns.pop(peer.uid, None)
                self._opened.pop(peer.uid, None)

    def begin(self, peer: PeerCred) -> None:
        with self._lock:
            n = self._inflight.get(peer.uid, 0)
            if n >= self.policy.max_concurrent:
                raise Busy(f"too many concurrent requests from uid {peer.uid} "
                           f"(limit {self.policy.max_concurrent})", data={"limit": self.policy.max_concurrent})
            self._inflight[peer.uid] = n + 1

    def end(self, peer: PeerCred) -> None:
        with self._lock:
            n = self._inflight.get(peer.uid, 0) - 1
            if n > 0:
                self._inflight[peer.uid] = n
            else:
                self._inflight.pop(peer.uid, None)

    def inflight(self, uid: int) -> int:
        with self._lock:
            return self._inflight.get(uid, 0)

    def connections(self, uid: int) -> int:
        with self._lock:
            return self._conns.get(uid, 0)

    @contextmanager
    def connection(self, peer: PeerCred) -> Iterator[None]:
        self.open(peer)
        try:
            yield
        finally:
            self.close(peer)

    @contextmanager
    def request(self, peer: PeerCred) -> Iterator[None]:
        self.begin(peer)
        try:
            yield
        finally:
            self.end(peer)


class _PeerLike(Protocol):
    pid: int
    uid: int
    gid: int
    conn_id: int
    groups: frozenset[int]


class AccessGate:
    """Connects an :class:`AccessPolicy` to the IPC server's hooks.

    ``on_connect`` refuses peers with no role (the server answers with the error and closes) and peers
    over their connection limit; ``authorize`` refuses methods above the peer's role and requests over
    its per-uid concurrency limit; ``done`` (called when a request finishes) and ``on_disconnect`` give
    the counts back. Use :func:`install` to attach it to an ``agent.ipc.server.Server``.
    """

    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy
        self.limiter = PeerLimiter(policy)
        self._roles: dict[int, Role] = {}
        self._leases: dict[int, int] = {}   # connection -> uid, for the connections that lease a lane
        # closes one idle connection of a uid to make room (the server's evict_idle); None: never
        self.evict: Callable[[int], bool] | None = None

    @staticmethod
    def cred(peer: _PeerLike) -> PeerCred:
        return PeerCred(peer.pid, peer.uid, peer.gid, frozenset(getattr(peer, "groups", frozenset())))

    def role(self, peer: _PeerLike) -> Role:
        return self._roles.get(peer.conn_id, Role.NONE)

    def on_connect(self, peer: _PeerLike) -> PermissionDenied | Busy | None:
        cred = self.cred(peer)
        role = self.policy.role_of(cred) if peer.uid >= 0 else Role.NONE
        if role is Role.NONE:
            log.warning("refused connection", extra={"fields": {"pid": peer.pid, "uid": peer.uid}})
            return PermissionDenied(
                f"uid {peer.uid} may not use this agent (not root, not in group "
                f"{self.policy.clients_group!r} or {self.policy.admin_group!r})", data={"uid": peer.uid})
        try:
            self.limiter.open(cred)
        except Busy as e:
            if self.evict is None:
                return e
            if not self.evict(peer.uid):
                return Busy(e.message + "; none of them is idle (each has a request in flight, a hold or a "
                            "subscription)", data=e.data)
            try:   # an idle connection of this uid made room
                self.limiter.open(cred)
            except Busy as e2:
                return e2
        self._roles[peer.conn_id] = role
        return None

    def on_disconnect(self, peer: _PeerLike) -> None:
        self._leases.pop(peer.conn_id, None)
        if self._roles.pop(peer.conn_id, None) is not None:
            self.limiter.close(self.cred(peer))

    def lease(self, peer: _PeerLike) -> None:
        """This connection is to lease a lane. A lane is a request the daemon does not see begin or end
        (its client may send one at any time, straight to the worker), so a uid holds at most
        ``max_concurrent`` lanes: more would run more requests at once than the limit allows. Busy beyond
        that; the client then sends its requests through the daemon, where the limit applies to each."""
        n = sum(1 for uid in self._leases.values() if uid == peer.uid)
        limit = self.policy.max_concurrent
        if n >= limit:
            raise Busy(f"uid {peer.uid} holds {n} lanes (limit max_concurrent = {limit}): its further requests "
                       f"go through the daemon", data={"limit": limit, "lanes": n})
        self._leases[peer.conn_id] = peer.uid

    def authorize(self, peer: _PeerLike, method: str) -> None:
        self.policy.authorize(self.role(peer), method)
        self.limiter.begin(self.cred(peer))

    def done(self, peer: _PeerLike) -> None:
        self.limiter.end(self.cred(peer))


def install(server: Any, policy: AccessPolicy) -> AccessGate:
    """Attach access control to an IPC server before it starts (keeps its existing disconnect hook)."""
    gate = AccessGate(policy)
    previous = server.on_disconnect

    def on_disconnect(peer: Any) -> None:
        gate.on_disconnect(peer)
        if previous is not None:
            previous(peer)

    server.on_connect = gate.on_connect
    server.authorize = gate.authorize
    server.on_done = gate.done
    server.on_lease = gate.lease
    server.on_disconnect = on_disconnect
    gate.evict = getattr(server, "evict_idle", None)
    server.max_frame = min(server.max_frame, policy.max_frame_bytes)
    return gate


def policy_for_daemon(explicit: Path | None, env: dict[str, str] | None = None) -> AccessPolicy:
    """The daemon's access policy: ``explicit`` file, else ``$CONFIGURATION_DIRECTORY/access.toml`` when it
    exists (systemd's ConfigurationDirectory=), else the defaults."""
    if explicit is not None:
        return AccessPolicy.load(explicit)
    e = os.environ if env is None else env
    conf = e.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    if conf and (Path(conf) / "access.toml").is_file():
        return AccessPolicy.load(Path(conf) / "access.toml")
    return AccessPolicy()
