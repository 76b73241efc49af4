"""The composition root: builds every collaborator of agentd and wires them; no handler lives here.

    zoo manifests ─► Runtime (workers, hot swap) ◄─ Controller (sensors → policy decisions)
                        ▲
    IPC Server ─► ipc/methods (the table) ─► ops.Ops (the operations) ◄─ http/ doors
                        │
                    Telemetry (SQLite) ◄─ requests, swaps, decisions, events
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from agent.config import Config
from agent.control import Controller
from agent.ipc import methods
from agent.ipc.server import Peer, Server, claim_socket_path
from agent.ops.service import Ops
from agent.policy.engine import PolicyEngine
from agent.runtime.deadlines import DeadlinePolicy
from agent.runtime.manager import Runtime
from agent.sensors.source import make_source
from agent.sensors.trace import TraceReplay
from agent.telemetry import Telemetry

__all__ = ["App", "Config"]

log = logging.getLogger("agent.app")


class App:
    def __init__(self, cfg: Config, *, listen_sock: Any = None) -> None:
        self.cfg = cfg
        self.listen_sock = listen_sock
        self.telemetry = Telemetry(cfg.state_dir / "telemetry.db", retention_s=cfg.retention_s)
        self.server = Server({}, max_frame=cfg.max_frame, max_inflight=cfg.max_inflight,
                             on_disconnect=self.on_disconnect, frame_timeout_s=cfg.frame_timeout_s,
                             stall_timeout_s=cfg.stall_timeout_s)
        self.ops = Ops(cfg, self.telemetry, self.server.broadcast)
        self.server.handlers.update(methods.handlers(self.ops))
        self.server.fast.update(methods.fast_handlers(self.ops))
        # a connection that holds a profile is never closed as idle (its hold ends with it)
        self.server.is_held = lambda peer: self.ops.is_held(peer.conn_id) or self.ops.holds_lane(peer.pid)
        self.http: Any = None

    @property
    def runtime(self) -> Runtime | None:
        return self.ops.runtime

    @property
    def controller(self) -> Controller | None:
        return self.ops.controller

    @property
    def engine(self) -> PolicyEngine | None:
        return self.ops.engine

    def on_disconnect(self, peer: Peer) -> None:
        self.ops.on_disconnect(peer.conn_id)

    async def reload(self) -> dict[str, Any]:
        return (await self.ops.reload()).wire()

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg, ops = self.cfg, self.ops
        if self.listen_sock is None:   # before any model loads: a second agentd on a taken socket fails now
            claim_socket_path(cfg.socket)
        ops.read_zoo()
        # validate the policy and the sensor spec before anything is loaded
        ops.engine = PolicyEngine.from_files(cfg.policy) if cfg.policy else PolicyEngine()
        source = make_source(cfg.sensors, cfg.sysfs_root, cfg.procfs_root)
        ops.runtime = Runtime(ops.manifests, memory_probe=_memory_probe, headroom_bytes=cfg.headroom_bytes,
                              threads=cfg.threads, spare_workers=cfg.spare_workers, drain_timeout=cfg.drain_timeout,
                              emit=ops.on_event, deadlines=DeadlinePolicy(floor_s=cfg.request_timeout_s),
                              hang_after_s=cfg.hang_after_s)
        ops.controller = Controller(ops.runtime, ops.engine, source, self.telemetry,
                                    interval_s=cfg.sample_interval_s, emit=ops.on_event)
        initial = ops.controller.initial_choices()
        for name, dev in cfg.devices.items():
            if name in initial:
                initial[name] = (initial[name][0], dev)
        await ops.load_initial(initial)
        if cfg.http:   # before the socket: once agentd answers there, the endpoint is up too
            from agent.http.server import HttpServer, parse_address

            http = HttpServer(ops, parse_address(cfg.http))
            await http.start()
            self.http, ops.http_url = http, http.url
        await self.server.start(cfg.socket, sock=self.listen_sock)
        if isinstance(source, TraceReplay):   # a replay starts when deciding starts, not when loading did
            source.rewind()
        ops.controller.start()
        ops.ready.set()
        log.info("ready", extra={"fields": {"socket": str(cfg.socket), "models": sorted(ops.manifests),
                                            "pid": os.getpid()}})

    async def stop(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 - a drain grace period, not a cancel
        """Graceful stop: stop accepting, finish in-flight requests, stop workers, flush telemetry."""
        timeout = self.cfg.drain_timeout if timeout is None else timeout
        self.server.stop_accepting()
        if self.http is not None:
            await self.http.stop()
        drained = await self.server.drain(timeout)
        if self.controller is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.controller.stop)
        if self.runtime is not None:
            await self.runtime.close(timeout=5)
        await self.server.close()
        self.telemetry.close()
        log.info("stopped", extra={"fields": {"drained": drained}})
        return drained


def _memory_probe() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
