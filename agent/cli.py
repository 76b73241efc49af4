"""agentctl: the command line for agentd and the zoo.

Exit codes: 0 success, 1 the agent answered with an error, 2 bad usage / bad input file.
Sub-command groups owned by other modules register themselves through ``add_parsers(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import AgentError, ConfigError, InvalidParams
from agent.paths import default_socket

# modules that add sub-commands (missing ones are skipped, so a partial install still works)
PLUGIN_MODULES = ("agent.zoo.cli", "agent.sensors.cli", "agent.policy.cli", "agent.service_cli", "agent.llm.cli",
                  "agent.demo")


def _client(a: argparse.Namespace) -> Any:
    from agent.client import Client

    return Client(a.socket)


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        print(obj)


def cmd_status(a: argparse.Namespace) -> int:
    with _client(a) as c:
        st = c.status()
    if a.json:
        _print(st, True)
        return 0
    d = st["daemon"]
    print(f"agentd {d['version']}  pid {d['pid']}  up {d['uptime_s']}s  socket {d['socket']}")
    if d.get("http"):
        print(f"OpenAI-compatible HTTP endpoint: {d['http']}/v1")
    if d.get("reload_error"):
        print(f"last reload failed: {d['reload_error']}")
    for k in ("policy", "sensors"):
        if st.get(k):
            print(f"{k}: {json.dumps(st[k], default=str)[:300]}")
    for name, m in st["models"].items():
        act = m["active"]
        pin = f"  pinned {m['pinned']['variant']}@{m['pinned']['device']}" if m.get("pinned") else ""
        where = f"{act['variant']} on {act['device']} (pid {act['pid']})" if act else "none"
        print(f"\n{name} [{m['kind']}]  active: {where}{pin}  requests {m['requests']}  errors {m['errors']}")
        if m.get("llm"):
            from agent.llm.cli import llm_status_line

            print(llm_status_line(m["llm"]))
        print(f"  {'variant':<16}{'precision':<10}{'state':<10}{'load ms':>9}  reason")
        for vid, v in m["variants"].items():
            lm = f"{v['load_ms']:.1f}" if v.get("load_ms") else "-"
            print(f"  {vid:<16}{v['precision']:<10}{v['status']:<10}{lm:>9}  {v.get('reason') or ''}")
    for name, err in st.get("zoo_errors", {}).items():
        print(f"\nzoo error in {name}: {err}")
    for h in st.get("holds", []):
        print(f"hold {h['cookie']}: {h['profile']} by pid {h['pid']} ({h['reason']})")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    with _client(a) as c:
        ms = c.models()
    if a.json:
        _print(ms, True)
        return 0
    for m in ms:
        ins = ", ".join(f"{t['name']}:{t['dtype']}{t['shape']}" for t in m["inputs"])
        print(f"{m['name']} [{m['kind']}] inputs {ins}")
        for v in m["variants"]:
            q = v.get("quality") or {}
            print(f"  {v['id']:<16}{v['precision']:<8}{(v.get('size_bytes') or 0) / 1e6:8.2f} MB"
                  f"  quality {q.get('relative', '-')}")
    return 0


def _parse_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for s in specs:
        if "=" not in s:
            raise InvalidParams(f"--input: expected NAME=FILE.npy, got {s!r}")
        name, path = s.split("=", 1)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InvalidParams(f"--input {name}: cannot read {path!r} as .npy: {e}") from None
        if not isinstance(arr, np.ndarray):
            raise InvalidParams(f"--input {name}: {path!r} is not a single array (.npy)")
        out[name] = arr
    return out


def cmd_infer(a: argparse.Namespace) -> int:
    inputs = _parse_inputs(a.input)
    with _client(a) as c:
        r = c.infer(a.model, inputs)
    if a.output:
        np.savez(a.output, **r.outputs)
    info = {"model": r.model, "variant": r.variant, "device": r.device, "latency_ms": round(r.latency_ms, 3),
            "server_ms": round(r.server_ms, 3), "run_ms": round(r.run_ms, 3), "retried": r.retried,
            "outputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in r.outputs.items()}}
    if a.json:
        if not a.output:
            info["values"] = {k: v.tolist() for k, v in r.outputs.items()}
        _print(info, True)
    else:
        print(f"{r.model}/{r.variant} on {r.device}: {r.latency_ms:.2f} ms")
        for k, v in r.outputs.items():
            print(f"  {k}: {v.dtype} {list(v.shape)}" + ("" if a.output else f" {np.array2string(v, threshold=20)}"))
    return 0


def cmd_pin(a: argparse.Namespace) -> int:
    with _client(a) as c:
        _print(c.pin(a.model, a.variant, a.device), a.json)
    return 0


def cmd_unpin(a: argparse.Namespace) -> int:
    with _client(a) as c:
        _print(c.unpin(a.model), a.json)
    return 0


def cmd_hold(a: argparse.Namespace) -> int:
    """Hold a profile while this command runs (Ctrl-C releases it)."""
    with _client(a) as c:
        cookie = c.hold(a.profile, a.reason)
        print(f"holding {a.profile} (cookie {cookie}); Ctrl-C to release", flush=True)
        try:
            end = time.monotonic() + a.duration if a.duration else None
            while end is None or time.monotonic() < end:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        c.release(cookie)
    return 0


def cmd_reload(a: argparse.Namespace) -> int:
    with _client(a) as c:
        _print(c.reload(), a.json)
    return 0


def cmd_events(a: argparse.Namespace) -> int:
    with _client(a) as c:
        n = 0
        try:
            for ev in c.events():
                print(json.dumps(ev, default=str), flush=True)
                n += 1
                if a.count and n >= a.count:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def cmd_history(a: argparse.Namespace) -> int:
    with _client(a) as c:
        h = c.history(a.since, a.table or None)
    if a.json:
        _print(h, True)
        return 0
    for table, rows in h.items():
        print(f"== {table} ({len(rows)})")
        for r in rows[: a.limit]:
            ts = time.strftime("%H:%M:%S", time.localtime(r.pop("ts", 0)))
            print(f"  {ts}  " + "  ".join(f"{k}={v}" for k, v in r.items() if v is not None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="agentctl", description="control ondevice-agent")
    ap.add_argument("--socket", type=Path, default=None,
                    help=f"agentd socket (default: $AGENT_SOCKET or {default_socket()})")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def p(name: str, func: Any, help_: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    p("status", cmd_status, "models, active variants and devices, each variant's state")
    p("models", cmd_models, "models and their variants")
    sp = p("infer", cmd_infer, "run one inference")
    sp.add_argument("model")
    sp.add_argument("--input", action="append", default=[], required=True, metavar="NAME=FILE.npy")
    sp.add_argument("--output", type=Path, metavar="OUT.npz")
    sp = p("pin", cmd_pin, "force a variant/device for a model (admin)")
    sp.add_argument("model")
    sp.add_argument("variant")
    sp.add_argument("--device", default="", help="cpu, gpu, npu or an execution provider name "
                    "(default: cpu; remote/split variants run where their manifest says)")
    sp = p("unpin", cmd_unpin, "let the policy choose again (admin)")
    sp.add_argument("model")
    sp = p("hold", cmd_hold, "hold a power profile while this command runs", json_flag=False)
    sp.add_argument("profile")
    sp.add_argument("--reason", default="agentctl")
    sp.add_argument("--duration", type=float, default=0.0, help="seconds (default: until Ctrl-C)")
    p("reload", cmd_reload, "reload the zoo and policy (admin)")
    sp = p("events", cmd_events, "stream swap/decision events", json_flag=False)
    sp.add_argument("--count", type=int, default=0, help="stop after N events")
    sp = p("history", cmd_history, "telemetry: requests, swaps, decisions")
    sp.add_argument("--since", default="1h")
    sp.add_argument("--table", action="append", default=[])
    sp.add_argument("--limit", type=int, default=20)
    for mod_name in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        adder = getattr(mod, "add_parsers", None)
        if adder is not None:
            adder(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return int(a.func(a) or 0)
    except ConfigError as e:
        print(f"agentctl: {e}", file=sys.stderr)
        return 2
    except InvalidParams as e:
        print(f"agentctl: {e}", file=sys.stderr)
        return 2
    except AgentError as e:
        print(f"agentctl: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
