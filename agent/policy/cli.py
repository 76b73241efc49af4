"""``agentctl policy check FILE...`` and ``agentctl simulate ...``: argparse sub-commands for the lead's CLI.

Exit codes: 0 fine; 1 a checked policy file is bad; 2 bad input (trace, zoo, workload, plot).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from agent.errors import AgentError, InvalidParams, exit_code
from agent.policy.loader import check_files, load_policy
from agent.policy.table import VariantRow, table_from_manifests
from agent.zoo.manifest import MANIFEST, Manifest, load_manifest


def add_parsers(subparsers: Any) -> None:
    pol = subparsers.add_parser("policy", help="policy files")
    psub = pol.add_subparsers(dest="policy_cmd", required=True)
    chk = psub.add_parser("check", help="validate policy files; print located errors; exit 1 if any is bad")
    chk.add_argument("files", nargs="+", metavar="FILE")
    chk.set_defaults(func=cmd_check)
    sim = subparsers.add_parser("simulate", help="replay a trace through the policy, with baselines and an oracle")
    sim.add_argument("--trace", required=True, metavar="FILE", help="JSONL trace (header line, then samples)")
    sim.add_argument("--policy", required=True, action="append", metavar="FILE",
                     help="policy file (repeat to merge several)")
    sim.add_argument("--zoo", required=True, metavar="DIR", help="zoo directory with measured manifests")
    sim.add_argument("--workload", default="rate=1/s", metavar="SPEC", help="rate=N/s|/min|/h or file=PATH")
    sim.add_argument("--json", action="store_true", help="print the report as JSON")
    sim.add_argument("--plot", metavar="OUT.png", help="write a plot (needs matplotlib)")
    sim.add_argument("--no-baselines", action="store_true", help="only the policy, no baselines or oracle")
    sim.add_argument("--swap-power-w", type=float, default=None,
                     help="power drawn while loading a variant (default: the policy's [switching] swap_power_w)")
    sim.set_defaults(func=cmd_simulate)


def cmd_check(args: argparse.Namespace) -> int:
    errors = check_files(args.files)
    for e in errors:
        print(e, file=sys.stderr)
    if not errors:
        print(f"{len(args.files)} policy file(s) OK")
    return 1 if errors else 0


def zoo_table(zoo: Path) -> tuple[list[VariantRow], dict[str, str]]:
    """The variant table from a zoo's manifests (model files need not be present: only figures are read)."""
    manifests: dict[str, Manifest] = {}
    errors: dict[str, str] = {}
    if not zoo.is_dir():
        return [], {str(zoo): "expected a zoo directory, got none"}
    for sub in sorted(zoo.iterdir()):
        if sub.is_dir() and (sub / MANIFEST).exists():
            try:
                manifests[sub.name] = load_manifest(sub, check_files=False)
            except AgentError as e:
                errors[sub.name] = str(e)
    return table_from_manifests(manifests), errors


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.policy.simulate import SimConfig, format_report, simulate
    from agent.policy.trace import load_trace
    from agent.policy.workload import parse_workload

    try:
        policy = load_policy(args.policy)
        trace = load_trace(args.trace)
        workload = parse_workload(args.workload)
        if args.swap_power_w is not None and not args.swap_power_w >= 0:
            raise InvalidParams(f"--swap-power-w: expected a number >= 0, got {args.swap_power_w}")
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    table, zerrs = zoo_table(Path(args.zoo))
    for name, msg in zerrs.items():
        print(f"warning: zoo model {name} skipped: {msg}", file=sys.stderr)
    if not table:
        print(f"error: {args.zoo}: expected measured variants ([[variants.measurements]]), got none", file=sys.stderr)
        return 2
    rep = simulate(trace, policy, table, workload, baselines=not args.no_baselines,
                   config=SimConfig(swap_power_w=args.swap_power_w))
    print(json.dumps(rep.to_dict(), indent=2) if args.json else format_report(rep))
    if args.plot:
        from agent.policy.plot import PlotUnavailable, plot_report

        try:
            plot_report(rep, Path(args.plot))
        except PlotUnavailable as e:
            print(f"error: {e} (or install the extra that provides it)", file=sys.stderr)
            return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentctl")
    add_parsers(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
