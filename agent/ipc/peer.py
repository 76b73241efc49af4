"""Who a peer is, from the kernel, and the roles a peer may have (see :mod:`agent.ipc.access`).

``SO_PEERCRED`` gives a Unix-socket peer's pid/uid/gid and ``SO_PEERGROUPS`` its supplementary groups as
they were when it connected (``/proc/PID/status`` and then the user database are fallbacks for kernels
without it). A leaf module: the server, the access policy and the method table all import it.
"""

from __future__ import annotations

import enum
import os
import pwd
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; not exported by Python 3.11

class Role(enum.IntEnum):
    NONE = 0
    CLIENT = 1
    ADMIN = 2


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)  # supplementary groups (may include gid)

    def all_gids(self) -> frozenset[int]:
        return self.groups | {self.gid}


class _SockLike(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int = ..., /) -> Any: ...


def _groups_from_proc(pid: int, proc: Path = Path("/proc")) -> frozenset[int] | None:
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Groups:"):
            try:
                return frozenset(int(x) for x in line.split()[1:])
            except ValueError:
                return None
    return None


def _groups_from_userdb(uid: int, gid: int) -> frozenset[int]:
    try:
        name = pwd.getpwuid(uid).pw_name
        return frozenset(os.getgrouplist(name, gid))
    except (KeyError, OSError):
        return frozenset()


def peer_groups(sock: _SockLike, pid: int, uid: int, gid: int) -> frozenset[int]:
    size = 64
    while size <= 65536 * 4:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size * 4)
        except OSError as e:
            if e.errno == 34:  # ERANGE: buffer too small
                size *= 4
                continue
            break  # ENOPROTOOPT: old kernel
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    procs = _groups_from_proc(pid) if pid > 0 else None
    return procs if procs is not None else _groups_from_userdb(uid, gid)


def peer_credentials(sock: _SockLike) -> PeerCred:
    """The connected Unix-socket peer's pid/uid/gid and supplementary groups, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid, peer_groups(sock, pid, uid, gid))
