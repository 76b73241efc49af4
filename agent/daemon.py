"""agentd: the daemon's lifecycle — arguments, signals, start, reload, graceful stop.

Signal handlers only set flags; the main coroutine acts on them (as uvicorn does):
SIGTERM/SIGINT -> graceful stop (stop accepting, drain in-flight requests, stop workers, flush
telemetry, exit 0); a second one forces exit (code 1). SIGHUP -> reload (validate first, swap second).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from agent import logs
from agent.app import App, Config
from agent.errors import AgentError, ConfigError, exit_code
from agent.ipc import access
from agent.ipc.protocol import DEFAULT_MAX_FRAME
from agent.paths import default_socket, default_state_dir, default_zoo
from agent.service import systemd

log = logging.getLogger("agent.daemon")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="agentd", description="ondevice-agent daemon (runs in the foreground)",
                                 allow_abbrev=False)
    state = default_state_dir()
    ap.add_argument("--zoo", type=Path, help=f"zoo directory (default: $AGENT_ZOO or {default_zoo(state)})")
    ap.add_argument("--socket", type=Path, help=f"Unix socket path (default: $AGENT_SOCKET or {default_socket()})")
    ap.add_argument("--state-dir", type=Path,
                    help=f"state directory for telemetry (default: $AGENT_STATE_DIR or {state})")
    ap.add_argument("--policy", type=Path, action="append", default=[],
                    help="policy file, repeatable (default: $AGENT_POLICY, else "
                         "$CONFIGURATION_DIRECTORY/policies/*.toml, else the built-in profiles with no rules)")
    ap.add_argument("--sensors", default="live",
                    help="'live' or 'trace:FILE[,speed=N][,loop=1]' (default: %(default)s)")
    ap.add_argument("--sysfs-root", default="/sys",
                    help="root of sysfs for the live sensors (tests: a fake tree) (default: %(default)s)")
    ap.add_argument("--procfs-root", default="/proc", help="root of procfs for the live sensors (default: %(default)s)")
    ap.add_argument("--sample-interval", type=float, default=1.0,
                    help="seconds between sensor samples (default: %(default)s)")
    ap.add_argument("--threads", type=int, help="intra-op threads per worker (default: ONNX Runtime's choice)")
    ap.add_argument("--max-frame", type=int, default=DEFAULT_MAX_FRAME,
                    help="largest IPC frame in bytes (default: %(default)s)")
    ap.add_argument("--drain-timeout", type=float, default=30.0,
                    help="seconds to finish in-flight requests on stop (default: %(default)s)")
    ap.add_argument("--spare-workers", type=int, default=1,
                    help="pre-started idle workers (faster swaps) (default: %(default)s)")
    ap.add_argument("--headroom-mb", type=int, default=256,
                    help="memory kept free when loading a variant (default: %(default)s)")
    ap.add_argument("--request-timeout", type=float, default=10.0,
                    help="seconds: floor of each model's default request deadline, else 20x its measured p95 "
                         "(default: %(default)s)")
    ap.add_argument("--hang-after", type=float, default=3.0,
                    help="seconds without a worker heartbeat before it is declared hung and replaced "
                         "(default: %(default)s)")
    ap.add_argument("--frame-timeout", type=float, default=5.0,
                    help="seconds a client has to complete a frame once it started it (default: %(default)s)")
    ap.add_argument("--stall-timeout", type=float, default=5.0,
                    help="seconds a client may leave its replies unread before it is disconnected "
                         "(default: %(default)s)")
    ap.add_argument("--device", action="append", default=[], metavar="MODEL=DEVICE",
                    help="initial device of a model, repeatable (default: the policy's choice)")
    ap.add_argument("--http", metavar="HOST:PORT|unix:PATH",
                    help="also serve the OpenAI-compatible HTTP API there (loopback only; default: off)")
    ap.add_argument("--require-models", action="store_true",
                    help="exit with an error when the zoo has no loadable model (default: warn and serve nothing)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                    help="level of agentd's own log lines (JSON on stderr) (default: %(default)s)")
    ap.add_argument("--library-log-level", default=None, choices=["debug", "info", "warning", "error"],
                    help="level of third-party libraries' log lines (apscheduler, uvicorn, ...) "
                         "(default: warning; debug with --log-level debug)")
    ap.add_argument("--access-config", type=Path,
                    help="TOML file with an [access] table (default: $CONFIGURATION_DIRECTORY/access.toml)")
    a = ap.parse_args(argv)
    for name, lo in (("threads", 1), ("max_frame", 1024), ("spare_workers", 0), ("headroom_mb", 0)):
        v = getattr(a, name)
        if v is not None and v < lo:
            ap.error(f"--{name.replace('_', '-')}: expected >= {lo}, got {v}")
    if not a.sample_interval > 0:
        ap.error(f"--sample-interval: expected > 0, got {a.sample_interval}")
    for name in ("request_timeout", "hang_after", "frame_timeout", "stall_timeout"):
        if not getattr(a, name) > 0:
            ap.error(f"--{name.replace('_', '-')}: expected > 0, got {getattr(a, name)}")
    if a.drain_timeout < 0:
        ap.error("--drain-timeout: expected >= 0")
    for d in a.device:
        if "=" not in d or not all(d.split("=", 1)):
            ap.error(f"--device: expected MODEL=DEVICE, got {d!r}")
    if a.http is not None:
        from agent.http.server import parse_address

        try:
            parse_address(a.http)
        except AgentError as e:
            ap.error(str(e))
    return a


def default_policies() -> list[Path]:
    """Policy files when --policy is not given: $AGENT_POLICY, else the service's configuration
    directory (``$CONFIGURATION_DIRECTORY/policies/*.toml``, set by systemd; one policy split over
    files), else none (the built-in profiles, no rules)."""
    if os.environ.get("AGENT_POLICY"):
        return [Path(p) for p in os.environ["AGENT_POLICY"].split(os.pathsep) if p]
    conf = os.environ.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    if conf and (Path(conf) / "policies").is_dir():
        return sorted((Path(conf) / "policies").glob("*.toml"))
    return []


def config_from(a: argparse.Namespace) -> Config:
    state = a.state_dir or default_state_dir()
    return Config(zoo=a.zoo or default_zoo(state), socket=a.socket or default_socket(), state_dir=state,
                  policy=list(a.policy) or default_policies(), sensors=a.sensors, sysfs_root=a.sysfs_root,
                  procfs_root=a.procfs_root,
                  sample_interval_s=a.sample_interval, threads=a.threads, max_frame=a.max_frame,
                  drain_timeout=a.drain_timeout, spare_workers=a.spare_workers,
                  headroom_bytes=a.headroom_mb << 20, devices=dict(d.split("=", 1) for d in a.device),
                  http=a.http, require_models=a.require_models, request_timeout_s=a.request_timeout,
                  hang_after_s=a.hang_after, frame_timeout_s=a.frame_timeout, stall_timeout_s=a.stall_timeout)


def listen_socket() -> Any:
    """The socket systemd passed us (socket activation), or None to bind the path ourselves."""
    return systemd.unix_listener()


def service_status(app: App) -> str:
    """One line for systemd's STATUS=: active variant of each model, the policy's profile, held profiles."""
    rt = app.runtime
    models = ", ".join(f"{n}={s.active.variant}@{s.active.device}" if s.active else f"{n}=down"
                       for n, s in sorted(rt.slots.items())) if rt else ""
    decision = app.controller.last_decision if app.controller is not None else None
    profile = decision.profile if decision is not None else "-"
    holds = sorted({h.profile for h in app.ops.holds()})
    return f"serving {models or 'no models'}; profile {profile}; holds: {', '.join(holds) or 'none'}"


def workers_ok(app: App) -> bool:
    """False only when the daemon itself failed its workers: a model whose worker is gone with no
    restart under way. A dead or hung worker being replaced (even one whose variant keeps failing to
    load, retried with backoff) is the runtime doing its job, so systemd is not asked to restart agentd
    for one worker; models that never loaded do not count either."""
    rt = app.runtime
    return True if rt is None else rt.supervising()


async def run(cfg: Config, access_policy: access.AccessPolicy | None = None) -> int:
    access_policy = access_policy or access.AccessPolicy()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload_req = asyncio.Event()
    signals_seen = {"term": 0}

    def on_term() -> None:
        signals_seen["term"] += 1
        if signals_seen["term"] > 1:
            log.warning("second stop signal: forcing exit")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_term)
    loop.add_signal_handler(signal.SIGHUP, reload_req.set)

    app = App(cfg, listen_sock=listen_socket())
    access.install(app.server, access_policy)
    def workers_supervised() -> bool:
        return workers_ok(app)

    def sampler_ticking() -> bool:
        return app.controller is None or app.controller.healthy()

    supervisor = systemd.Supervisor(workers_supervised, sampler_ticking, status_text=lambda: service_status(app))
    supervisor.start()
    try:
        await app.start()
    except AgentError as e:
        log.error("start failed", extra={"fields": {"error": str(e)}})
        await supervisor.stop()
        await app.stop(timeout=0)
        return 1   # failed to start (the service manager's "failure"), whatever the error; bad options: exit_code
    supervisor.ready()  # app.start() returned: the default variants are loaded and warmed
    while not stop.is_set():
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload_req.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        if reload_req.is_set() and not stop.is_set():
            reload_req.clear()
            supervisor.reloading()
            try:
                await app.reload()
            except AgentError as e:
                log.error("reload failed", extra={"fields": {"error": str(e)}})
            supervisor.ready()
    supervisor.stopping(f"stopping: finishing {app.server.inflight} in-flight requests")
    log.info("stopping", extra={"fields": {"inflight": app.server.inflight}})
    await app.stop()
    await supervisor.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    logs.setup(a.log_level, third_party=a.library_log_level)
    try:
        policy = access.policy_for_daemon(a.access_config)
    except ConfigError as e:
        print(f"agentd: {e}", file=sys.stderr)
        return exit_code(e)
    try:
        return asyncio.run(run(config_from(a), policy))
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())
