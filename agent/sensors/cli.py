"""``agentctl sensors`` and ``agentctl trace record``.

The lead wires these into agentctl with ``add_parsers(subparsers)``; ``main(argv)`` runs them alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from agent.errors import ConfigError, exit_code
from agent.sensors.snapshot import Snapshot

FIELDS = ("battery.percent", "battery.status", "battery.power_w", "power.on_ac", "thermal.level",
          "thermal.headroom", "thermal.max_c", "memory.available_bytes", "memory.psi_some_avg10",
          "cpu.load_1m", "energy.meter")

def parse_duration(text: str) -> float:
    """``"10m"`` -> 600.0; ``"30s"``, ``"1.5h"``, ``"500ms"``, bare seconds; must be > 0 (argparse type)."""
    from agent.errors import InvalidParams
    from agent.telemetry import parse_duration as parse

    try:
        return parse(text, positive=True)
    except InvalidParams as e:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: {e}") from None


def summary(snap: Snapshot) -> dict[str, Any]:
    d = snap.to_dict()
    out: dict[str, Any] = {}
    for key in FIELDS:
        sec, name = key.split(".")
        out[key] = d[sec][name]
    out["source"] = snap.source
    out["reasons"] = d["reasons"]
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)


def _source(args: argparse.Namespace) -> Any:
    from agent.sensors.source import make_source

    return make_source(args.sensors, args.sysfs_root, args.procfs_root)


def cmd_sensors(args: argparse.Namespace) -> int:
    try:
        src = _source(args)
    except ConfigError as e:
        print(f"agentctl sensors: {e}", file=sys.stderr)
        return exit_code(e)
    try:
        snap = src.read()
    finally:
        src.close()
    out = summary(snap)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    width = max(len(k) for k in FIELDS)
    for key in FIELDS:
        print(f"{key:<{width}}  {_fmt(out[key])}")
    if out["reasons"]:
        print("\nunknown because:")
        for k, why in out["reasons"].items():
            print(f"  {k}: {why}")
    return 0


def cmd_trace_record(args: argparse.Namespace) -> int:
    from agent.sensors.trace import record

    try:
        src = _source(args)
    except ConfigError as e:
        print(f"agentctl trace record: {e}", file=sys.stderr)
        return exit_code(e)
    try:
        n = record(src, args.duration, args.out, args.interval)
    except KeyboardInterrupt:
        print(f"agentctl trace record: interrupted; samples so far are in {args.out}.partial", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"agentctl trace record: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        src.close()
    print(f"recorded {n} samples to {args.out}")
    return 0


def _roots(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sysfs-root", default="/sys", metavar="DIR", help="sysfs to read (default /sys)")
    p.add_argument("--procfs-root", default="/proc", metavar="DIR", help="procfs to read (default /proc)")
    p.add_argument("--sensors", default="live", metavar="SPEC",
                   help="live (default) or trace:FILE[,speed=N][,loop=1]")


def add_parsers(subparsers: Any) -> None:
    """Register ``sensors`` and ``trace record`` on an argparse sub-parsers object."""
    p = subparsers.add_parser("sensors", help="print one snapshot of the device's state")
    _roots(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_sensors)

    t = subparsers.add_parser("trace", help="record sensor traces")
    tsub = t.add_subparsers(dest="trace_cmd", required=True)
    r = tsub.add_parser("record", help="record snapshots to a JSONL trace")
    r.add_argument("out", metavar="OUT", help="trace file to write")
    r.add_argument("--duration", type=parse_duration, required=True, help="how long, e.g. 10m, 30s, 1h")
    r.add_argument("--interval", type=parse_duration, default=1.0, help="sampling interval (default 1s)")
    _roots(r)
    r.set_defaults(func=cmd_trace_record)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentctl")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
