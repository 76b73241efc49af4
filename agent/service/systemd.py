"""The daemon's side of the systemd service protocols, in the standard library only.

* :func:`notify` sends a state string to ``$NOTIFY_SOCKET`` (a path, or an abstract socket written
  ``@name``), like ``sd_notify(3)``; :func:`ready`, :func:`reloading`, :func:`stopping`, :func:`status`
  and :func:`watchdog_ping` are the messages the daemon uses. Without ``$NOTIFY_SOCKET`` (started by
  hand) every call is a no-op that returns ``False``.
* :func:`listen_fds` takes the sockets systemd passed (``LISTEN_PID`` / ``LISTEN_FDS`` /
  ``LISTEN_FDNAMES``, fds from 3), like ``sd_listen_fds_with_names(3)``;
  :func:`unix_listener` returns the passed Unix stream socket, or ``None`` so the caller binds its own.
* :func:`watchdog_interval` reads ``WATCHDOG_USEC`` / ``WATCHDOG_PID``; :class:`Watchdog` pings at half
  that interval from a thread, but only while a health callback says the daemon is healthy, so a
  stalled loop or dead workers stop the pings and systemd restarts the service. :class:`Heartbeat`
  is the usual health source: the loop that must keep running calls ``beat()``.
* :class:`Supervisor` puts these together for an asyncio daemon: a task on the event loop beats a
  heartbeat (so a blocked loop stops the pings), extra health checks (workers alive, sampling loop
  fresh) gate the pings, and a status callback refreshes ``STATUS=`` when its text changes.

Nothing here raises on a missing or broken notify socket: the service protocol is advisory, and a
daemon must not die because its supervisor went away. Malformed environment values are ignored
(logged), as libsystemd does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _notify_address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()  # abstract namespace
    if raw.startswith("/"):
        return raw
    return None  # vsock:… and relative paths are not supported (libsystemd rejects relative too)


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` lines) to the service manager.

    Returns True when a datagram was sent, False when there is no notify socket or it failed.
    """
    raw = _environ(env).get("NOTIFY_SOCKET")
    if not raw:
        return False
    addr = _notify_address(raw)
    if addr is None:
        log.warning("ignoring NOTIFY_SOCKET=%r: not a path or @abstract name", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError as e:
        log.warning("sd_notify %r failed: %s", state.split("\n", 1)[0], e)
        return False
    return True


def _clean(text: str) -> str:
    return " ".join(text.split())  # a newline would start a new KEY=VALUE line


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ready(status_text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    msg = "READY=1"
    if status_text:
        msg += f"\nSTATUS={_clean(status_text)}"
    return notify(msg, env=env)


def reloading(status_text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    """RELOADING=1 with MONOTONIC_USEC (what ``Type=notify-reload`` wants; harmless under notify)."""
    msg = f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}"
    if status_text:
        msg += f"\nSTATUS={_clean(status_text)}"
    return notify(msg, env=env)


def stopping(status_text: str | None = None, *, env: Mapping[str, str] | None = None) -> bool:
    msg = "STOPPING=1"
    if status_text:
        msg += f"\nSTATUS={_clean(status_text)}"
    return notify(msg, env=env)


def status(text: str, *, env: Mapping[str, str] | None = None) -> bool:
    return notify(f"STATUS={_clean(text)}", env=env)


def watchdog_ping(*, env: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", env=env)


# -- socket activation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenFd:
    fd: int
    name: str


def listen_fds(*, unset_environment: bool = True, env: dict[str, str] | None = None) -> list[ListenFd]:
    """The fds systemd passed to this process (empty when none, or when they were meant for another pid).

    Marks them close-on-exec (worker processes must not inherit the listening socket) and, by default,
    removes the variables so child processes do not think the fds are theirs.
    """
    e = os.environ if env is None else env
    pid_s, n_s = e.get("LISTEN_PID"), e.get("LISTEN_FDS")
    names_s = e.get("LISTEN_FDNAMES")
    try:
        if not n_s or not pid_s:
            return []
        if int(pid_s) != os.getpid():
            return []
        n = int(n_s)
        if n <= 0:
            return []
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID=%r LISTEN_FDS=%r", pid_s, n_s)
        return []
    finally:
        if unset_environment:
            for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                e.pop(k, None)
    names = names_s.split(":") if names_s else []
    if len(names) != n:
        names = ["unknown"] * n
    out: list[ListenFd] = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
        except OSError as err:
            log.warning("LISTEN_FDS names fd %d but it is not open: %s", fd, err)
            continue
        out.append(ListenFd(fd, names[i]))
    return out


def unix_listener(fds: list[ListenFd] | None = None, name: str | None = None) -> socket.socket | None:
    """The passed listening AF_UNIX stream socket (with FileDescriptorName ``name`` if given), or None.

    Call once at startup; fds that are not a listening Unix stream socket are skipped (and logged).
    """
    for item in listen_fds() if fds is None else fds:
        if name is not None and item.name != name:
            continue
        try:
            if not stat.S_ISSOCK(os.fstat(item.fd).st_mode):
                log.warning("passed fd %d (%s) is not a socket; ignored", item.fd, item.name)
                continue
            sock = socket.socket(fileno=item.fd)
        except OSError as err:
            log.warning("passed fd %d (%s) unusable: %s", item.fd, item.name, err)
            continue
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM and listening:
            return sock
        log.warning("passed fd %d (%s) is not a listening Unix stream socket; ignored", item.fd, item.name)
        sock.detach()
    return None


# -- watchdog ------------------------------------------------------------------------------------


def watchdog_interval(*, env: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects WATCHDOG=1, or None when the watchdog is off for us."""
    e = _environ(env)
    usec_s, pid_s = e.get("WATCHDOG_USEC"), e.get("WATCHDOG_PID")
    try:
        if not usec_s:
            return None
        usec = int(usec_s)
        if pid_s and int(pid_s) != os.getpid():
            return None
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec_s, pid_s)
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000


class Heartbeat:
    """A timestamp a loop refreshes; ``fresh(max_age)`` is a health check for :class:`Watchdog`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        self._last = self._clock()

    def age(self) -> float:
        return self._clock() - self._last

    def fresh(self, max_age: float) -> bool:
        return self.age() <= max_age


class Watchdog:
    """Pings systemd every ``interval / 2`` seconds while ``healthy()`` returns True.

    When ``healthy()`` returns False (or raises), that ping is skipped and logged; if the daemon stays
    unhealthy for a whole interval systemd kills and restarts it (``Restart=on-failure``). ``interval``
    defaults to :func:`watchdog_interval`; with no watchdog configured, :meth:`start` does nothing.
    """

    def __init__(
        self,
        healthy: Callable[[], bool],
        interval: float | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._healthy = healthy
        self._env = dict(_environ(env))  # snapshot: listen_fds() and others may edit os.environ later
        self.interval = watchdog_interval(env=self._env) if interval is None else interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.skipped = 0

    @property
    def enabled(self) -> bool:
        return self.interval is not None and self.interval > 0

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def check_and_ping(self) -> bool:
        """One round: ping if healthy. Returns whether a ping was sent."""
        try:
            ok = bool(self._healthy())
        except Exception:  # a crashing health check means unhealthy, not a dead watchdog thread
            log.exception("watchdog health check raised")
            ok = False
        if not ok:
            self.skipped += 1
            log.warning("daemon unhealthy: skipping watchdog ping (%d skipped)", self.skipped)
            return False
        if watchdog_ping(env=self._env):
            self.pings += 1
            return True
        return False

    def _run(self) -> None:
        assert self.interval is not None
        period = self.interval / 2
        self.check_and_ping()
        while not self._stop.wait(period):
            self.check_and_ping()


class Supervisor:
    """Watchdog and status for an asyncio daemon; call :meth:`start` from the running loop.

    Healthy means: the event loop ran the heartbeat task within ``interval / 2`` seconds, and every
    ``check`` returns True. ``status_text`` (optional) is polled on the same task and sent as ``STATUS=``
    when it changes. Without ``$NOTIFY_SOCKET`` and watchdog nothing is started.
    """

    def __init__(self, *checks: Callable[[], bool], status_text: Callable[[], str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self._env = dict(_environ(env))
        self.checks = list(checks)
        self.status_text = status_text
        self.heartbeat = Heartbeat()
        self.watchdog = Watchdog(self.healthy, env=self._env)
        self._task: asyncio.Task[None] | None = None
        self._last_status: str | None = None
        self._stopping = False

    @property
    def max_age(self) -> float:
        return (self.watchdog.interval or 0) / 2

    def healthy(self) -> bool:
        if self.watchdog.enabled and not self.heartbeat.fresh(self.max_age):
            log.warning("event loop stalled for %.1f s", self.heartbeat.age())
            return False
        if self._stopping:  # workers are being stopped on purpose; only a stalled loop matters now
            return True
        for check in self.checks:
            if not check():
                log.warning("health check %s failed", getattr(check, "__name__", check))
                return False
        return True

    def start(self) -> None:
        if not self._env.get("NOTIFY_SOCKET") or self._task is not None:
            return
        period = min(self.max_age / 2, 1.0) if self.watchdog.enabled else 1.0
        self._task = asyncio.get_running_loop().create_task(self._beat(period), name="sd-heartbeat")
        self.watchdog.start()

    def ready(self) -> bool:
        """READY=1 with the current status text."""
        text = self._status_now()
        self._last_status = text
        return ready(text, env=self._env)

    def reloading(self) -> bool:
        self._last_status = "reloading"
        return reloading("reloading", env=self._env)

    def stopping(self, text: str = "stopping") -> bool:
        self._stopping = True
        self._last_status = _clean(text)
        return stopping(text, env=self._env)

    def _status_now(self) -> str | None:
        if self.status_text is None:
            return None
        try:
            return _clean(self.status_text())
        except Exception:
            log.exception("status text failed")
            return None

    def refresh_status(self) -> None:
        if self._stopping:
            return
        text = self._status_now()
        if text is not None and text != self._last_status:
            self._last_status = text
            status(text, env=self._env)

    async def _beat(self, period: float) -> None:
        while True:
            self.heartbeat.beat()
            self.refresh_status()
            await asyncio.sleep(period)

    async def stop(self) -> None:
        self.watchdog.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
