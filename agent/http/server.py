"""Run the OpenAI-compatible endpoint inside agentd's event loop with uvicorn (off by default).

    agentd --http 127.0.0.1:8077          # TCP on loopback (port 0: any free port)
    agentd --http unix:/run/agent/http.sock

uvicorn runs as a task of the daemon's loop and calls the App directly (no second process, no proxy).
agentd owns the signals: uvicorn's own signal capture is turned off, and :meth:`HttpServer.stop` is
called from the daemon's graceful stop. Only loopback addresses are accepted: the endpoint has no
authentication, like the Unix socket it mirrors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError, ConfigError

log = logging.getLogger("agent.http")


@dataclass(frozen=True)
class HttpAddress:
    host: str | None = None
    port: int | None = None
    uds: Path | None = None

    def __str__(self) -> str:
        if self.uds is not None:
            return f"unix:{self.uds}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str) -> HttpAddress:
    """``HOST:PORT`` (loopback only: 127.x, ::1, localhost) or ``unix:PATH``; ConfigError otherwise."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"expected HOST:PORT on loopback or unix:PATH, got {text!r} ({why})", key="--http")

    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise bad("empty socket path")
        if len(path.encode()) > 100:
            raise bad("a Unix socket path must be shorter than 100 bytes")
        return HttpAddress(uds=Path(path))
    host, sep, port_s = text.rpartition(":")
    if not sep or not host:
        raise bad("missing host or port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise bad("port must be 0..65535")
    if host != "localhost":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise bad("host must be an IP address or localhost") from None
        if not ip.is_loopback:
            raise bad("only loopback addresses are served: the endpoint has no authentication")
    return HttpAddress(host=host, port=int(port_s))


class HttpServer:
    """The endpoint's lifecycle: :meth:`start` (binds, returns once listening), :meth:`stop`."""

    def __init__(self, agent_app: Any, address: HttpAddress, graceful_timeout: float = 5.0) -> None:
        self.agent_app = agent_app
        self.address = address
        self.graceful_timeout = graceful_timeout
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self.url: str | None = None

    async def start(self) -> str:
        try:
            import uvicorn

            from agent.http.asgi import build_app
        except ImportError as e:
            raise AgentError(f"--http needs starlette and uvicorn ({e}); install the 'llm' extra") from None

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:   # agentd owns the signals
                yield

        a = self.address
        sock = self._bind()   # we bind, so a bad address is our clear error, not uvicorn's sys.exit
        cfg = uvicorn.Config(build_app(self.agent_app), log_config=None, access_log=False, lifespan="off",
                             timeout_graceful_shutdown=int(max(1, self.graceful_timeout)), server_header=False)
        self._server = _Server(cfg)

        async def serve() -> None:
            try:
                await self._server.serve(sockets=[sock])
            except SystemExit as e:   # uvicorn exits the process on a startup failure: not ours to do
                raise AgentError(f"the HTTP endpoint on {a} failed to start (uvicorn exit {e.code})") from None
            finally:
                sock.close()

        self._task = asyncio.ensure_future(serve())
        while not self._server.started:
            if self._task.done():
                exc = self._task.exception() if not self._task.cancelled() else None
                raise AgentError(f"cannot serve HTTP on {a}: {exc or 'stopped during start-up'}")
            await asyncio.sleep(0.01)
        if a.uds is not None:
            self.url = f"unix:{a.uds}"
        else:
            host, port = sock.getsockname()[:2]
            self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        log.info("http listening", extra={"fields": {"url": self.url}})
        return self.url

    def _bind(self) -> socket.socket:
        a = self.address
        try:
            if a.uds is not None:
                a.uds.parent.mkdir(parents=True, exist_ok=True)
                if a.uds.is_socket():
                    a.uds.unlink()
                elif a.uds.exists():
                    raise AgentError(f"{a.uds} exists and is not a socket; refusing to replace it")
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                old = os.umask(0o117)   # 0660, no window where others could connect
                try:
                    sock.bind(str(a.uds))
                finally:
                    os.umask(old)
            else:
                family = socket.AF_INET6 if a.host and ":" in a.host else socket.AF_INET
                # proto IPPROTO_TCP (not 0): accepted sockets inherit it, and asyncio turns Nagle off
                # (TCP_NODELAY) only for sockets that say TCP; with Nagle on, a response sent as headers
                # then body waited for the client's delayed ACK: ~45 ms per request
                sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((a.host or "127.0.0.1", a.port or 0))
            sock.listen(128)
            sock.setblocking(False)
            return sock
        except OSError as e:
            raise AgentError(f"cannot serve HTTP on {a}: {e.strerror or e}") from None

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.graceful_timeout + 2)
        except (TimeoutError, Exception):   # noqa: BLE001 - never block the daemon's stop
            self._server.force_exit = True
            self._task.cancel()
        if self.address.uds is not None:
            with contextlib.suppress(OSError):
                self.address.uds.unlink()
