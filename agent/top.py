"""``agentctl top``: a live terminal view of agentd, and ``agentctl metrics`` (the Prometheus text).

    agentctl top [--interval 1] [--once]

Each refresh asks agentd over its Unix socket for ``status`` (models, active variant and device,
sensors) and ``history`` (the last minute of requests, the last hour of swaps) and draws: per model the
active variant@device, requests/s over the last 10 s, p95 latency, decode tokens/s and J/token (or
J/request) over the last minute, errors; the sensor readings; the recent swaps with their reasons.
Plain ANSI escapes (alternate screen, cursor home, clear to end of line), no curses: it works in any
terminal, over SSH and under tmux. ``q`` or Ctrl-C quits; a daemon that goes away is shown and
retried. ``--once`` (or a stdout that is not a terminal) prints one frame without escapes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

RATE_WINDOW_S = 10.0
SWAPS_SHOWN = 6


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _fmt(v: float | None, spec: str, unit: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def model_figures(rows: list[dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """Per model, from the last minute of request rows: rate, p95, tokens/s, J/token, errors."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = out.setdefault(str(r.get("model")), {"recent": 0, "lat": [], "tps": [], "joules": 0.0, "tokens": 0,
                                                 "ok": 0, "errors": 0, "generate": False})
        n = int(r.get("count") or 1)   # a lane row stands for `count` requests (means per request)
        if r.get("ts", 0) >= now - RATE_WINDOW_S:
            m["recent"] += n
        if not r.get("ok"):
            m["errors"] += 1
            continue
        m["ok"] += n
        lat = r.get("latency_p95_ms") if r.get("latency_p95_ms") is not None else r.get("latency_ms")
        if lat is not None:
            m["lat"].append(float(lat))
        if r.get("kind") == "generate":
            m["generate"] = True
            m["tokens"] += int(r.get("tokens") or 0)
            if r.get("tokens_per_s") is not None:
                m["tps"].append(float(r["tokens_per_s"]))
        if r.get("joules") is not None:
            m["joules"] += float(r["joules"]) * n
    for m in out.values():
        m["rate"] = m.pop("recent") / RATE_WINDOW_S
        m["p95_ms"] = _p95(m.pop("lat"))
        m["tok_s"] = _median(m.pop("tps"))
        per = m["tokens"] if m["generate"] else m["ok"]
        m["j_per"] = m["joules"] / per if per else None
    return out


def frame(status: dict[str, Any], requests: list[dict[str, Any]], swaps: list[dict[str, Any]],
          now: float) -> list[str]:
    """The screen as lines (no escapes)."""
    d = status.get("daemon") or {}
    head = (f"agentd {d.get('version', '?')}  pid {d.get('pid', '?')}  up {d.get('uptime_s', 0):.0f}s   "
            f"{time.strftime('%H:%M:%S', time.localtime(now))}   (q quits)")
    lines = [head, ""]
    figs = model_figures(requests, now)
    lines.append(f"{'MODEL':<16}{'KIND':<11}{'ACTIVE':<18}{'REQ/S':>7}{'P95 MS':>9}{'TOK/S':>8}"
                 f"{'J/TOK|REQ':>11}{'ERR/1M':>8}{'TOTAL':>8}")
    for name, m in sorted((status.get("models") or {}).items()):
        act = m.get("active")
        where = f"{act['variant']}@{act['device']}" if act else "none"
        if m.get("pinned"):
            where += " (pin)"
        f = figs.get(name, {})
        unit = "/t" if f.get("generate") else "/r"
        lines.append(f"{name[:15]:<16}{m.get('kind', '?')[:10]:<11}{where[:17]:<18}{f.get('rate', 0.0):>7.1f}"
                     f"{_fmt(f.get('p95_ms'), '.1f'):>9}{_fmt(f.get('tok_s'), '.0f'):>8}"
                     f"{_fmt(f.get('j_per'), '.3f', unit):>11}{f.get('errors', 0):>8}{m.get('requests', 0):>8}")
    s = status.get("sensors") or {}
    lines.append("")
    if s:
        batt = (f"{s['battery_percent']:.0f}% {s.get('battery_status') or ''}".strip()
                if s.get("battery_percent") is not None else "none")
        ac = {True: "AC", False: "battery", None: "?"}.get(s.get("power_on_ac"), "?")
        mem = s.get("memory_available_bytes")
        lines.append(f"sensors ({s.get('source', '?')}): battery {batt}  power {ac}  "
                     f"draw {_fmt(s.get('energy_power_w'), '.1f', ' W')}  thermal {s.get('thermal_level') or '-'} "
                     f"{_fmt(s.get('thermal_max_c'), '.0f', ' C')}  memory free "
                     f"{_fmt(mem / 2**30 if mem is not None else None, '.1f', ' GiB')}  "
                     f"cpu {_fmt(s.get('cpu_util_percent'), '.0f', '%')}")
    else:
        lines.append("sensors: no sample yet")
    pol = status.get("policy") or {}
    if pol:
        lines.append(f"policy: {pol.get('profile') or pol.get('name') or '-'}")
    lines.append("")
    lines.append("recent swaps")
    if not swaps:
        lines.append("  none in the last hour")
    for w in swaps[:SWAPS_SHOWN]:
        reason = w.get("reason")
        if isinstance(reason, str):
            why = reason
        elif isinstance(reason, dict):
            why = " ".join(f"{k}={v}" for k, v in reason.items() if v not in (None, "", {}))
        else:
            why = ""
        lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(w.get('ts', 0)))}  {w.get('model')}: "
                     f"{w.get('from') or '-'} -> {w.get('to')}@{w.get('device')}  {why}")
    return lines


def gather(client: Any) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    status = client.status()
    reqs = client.history("60s", ["requests"]).get("requests", [])
    swaps = client.history("1h", ["swaps"]).get("swaps", [])
    for w in swaps:   # telemetry stores nested objects as JSON text
        if isinstance(w.get("reason"), str) and w["reason"].startswith("{"):
            with contextlib.suppress(ValueError):
                w["reason"] = json.loads(w["reason"])
    return status, reqs, swaps


@contextlib.contextmanager
def _terminal(out: Any) -> Iterator[bool]:
    """Alternate screen, hidden cursor and cbreak keys while inside; restored on the way out."""
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    old = None
    if fd is not None:
        import termios
        import tty

        old = termios.tcgetattr(fd)
        tty.setcbreak(fd)   # keys arrive one by one; Ctrl-C still raises KeyboardInterrupt
    out.write("\x1b[?1049h\x1b[?25l")
    out.flush()
    try:
        yield fd is not None
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        if fd is not None and old is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _draw(out: Any, lines: list[str]) -> None:
    try:   # the terminal's own size first: $COLUMNS may be stale (it is not updated on resize)
        cols, rows = os.get_terminal_size(out.fileno())
    except (OSError, ValueError, AttributeError):
        cols, rows = shutil.get_terminal_size((100, 30))
    body = "".join(f"{ln[:cols]}\x1b[K\r\n" for ln in lines[: rows - 1])
    out.write("\x1b[H" + body + "\x1b[J")
    out.flush()


def _wait_key(interval: float, keys: bool) -> str | None:
    if not keys:
        time.sleep(interval)
        return None
    r, _, _ = select.select([sys.stdin], [], [], interval)
    if r:
        return os.read(sys.stdin.fileno(), 32).decode(errors="replace")
    return None


def cmd_top(a: argparse.Namespace) -> int:
    from agent.client import Client
    from agent.errors import AgentError, InvalidParams

    if not a.interval > 0:
        raise InvalidParams(f"--interval: expected a number of seconds above 0, got {a.interval}")

    def snapshot(c: Any) -> list[str]:
        st, reqs, swaps = gather(c)
        return frame(st, reqs, swaps, time.time())

    if a.once or not sys.stdout.isatty():   # a pipe or a file gets one plain frame, not escapes
        with Client(a.socket) as c:
            print("\n".join(snapshot(c)))
        return 0
    out = sys.stdout
    client: Any = None
    try:
        with _terminal(out) as keys:
            while True:
                try:
                    if client is None:
                        client = Client(a.socket)
                    lines = snapshot(client)
                except (AgentError, OSError) as e:
                    if client is not None:
                        client.close()
                    client = None
                    lines = [f"agentd not reachable: {e}", "", "retrying (q quits)"]
                _draw(out, lines)
                key = _wait_key(a.interval, keys)
                if key and ("q" in key or "Q" in key or "\x03" in key):
                    break
    except KeyboardInterrupt:
        pass
    finally:
        if client is not None:
            client.close()
    return 0


def cmd_metrics(a: argparse.Namespace) -> int:
    from agent.client import Client

    with Client(a.socket) as c:
        sys.stdout.write(c.call("metrics")[0]["text"])
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``top`` and ``metrics`` on agentctl's sub-parsers."""
    p = subparsers.add_parser("top", help="live view: models, variants, request rate, p95, tokens/s, J/token, "
                                          "sensors, swaps (q quits)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (no terminal needed)")
    p.set_defaults(func=cmd_top)
    m = subparsers.add_parser("metrics", help="Prometheus metrics text (the same as GET /metrics)")
    m.set_defaults(func=cmd_metrics)
