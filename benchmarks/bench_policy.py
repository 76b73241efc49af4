"""Policy engine timings and the simulator's tables (docs/SIMULATION.md is regenerated from them).

    .venv/bin/python benchmarks/bench_policy.py [--repeat 7] [--zoo ZOO] [--write-docs]

1. CEL libraries: compile + evaluate one rule with ``common-expression-language`` (Rust, ``import cel``) and
   ``cel-python`` (pure Python, ``import celpy``), medians over repeats, and the ratio. cel-python is optional.
2. decide() per sample with the shipped balanced policy on the fixture table.
3. With ``--zoo``: the measured zoo (cost curves from ``costs.toml`` where the quota sweep ran) on every
   shipped trace with the default policy and the QoS workload :data:`MEASURED_WORKLOAD`: the policy, the
   oracle and one static baseline per (variant, device), each model separately, with the Pareto verdicts.
4. The fixture tables (FACTS.md figures) on the shipped traces and the synthetic scenarios.

``--skip-timing`` leaves out parts 1-2 (the tables are deterministic: no lock or quiet machine needed).
``--write-docs`` replaces the generated part of docs/SIMULATION.md (between the ``bench_policy`` markers).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.policy.conditions import Activation, activation_dict
from agent.policy.decide import decide
from agent.policy.loader import load_policy
from agent.policy.simulate import format_report, simulate
from agent.policy.state import PolicyState
from agent.policy.synthetic import SCENARIOS, scenario, smollm2_rows
from agent.policy.workload import parse_workload
from agent.sensors.snapshot import BatteryState, MemoryState, PowerState, Snapshot, ThermalState

REPO = Path(__file__).resolve().parents[1]

EXPR = 'power.on_ac == false && battery.percent < 20.0 && memory.psi_some_avg10 > 1.0'


def per_call_us(fn, n: int, repeat: int) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(runs)


def bench_cel(repeat: int) -> None:
    snap = Snapshot(1, 1, battery=BatteryState(True, 15.0), power=PowerState(False),
                    thermal=ThermalState("moderate"), memory=MemoryState(8 << 30, 4 << 30, psi_some_avg10=3.0))
    import cel
    prog = cel.compile(EXPR)
    data = activation_dict(snap)
    ctx = cel.Context(data)
    rust_eval = per_call_us(lambda: prog.execute(ctx), 20000, repeat)
    rust_ctx = per_call_us(lambda: Activation(snap), 2000, repeat)
    rust_compile = per_call_us(lambda: cel.compile(EXPR), 2000, repeat)
    print(f"common-expression-language: evaluate {rust_eval:.2f} us, build activation {rust_ctx:.1f} us, "
          f"compile {rust_compile:.1f} us")
    try:
        import celpy
    except ImportError:
        print("cel-python not installed: skipped (pip install cel-python to compare)")
        return
    env = celpy.Environment()
    prg = env.program(env.compile(EXPR))
    act = celpy.json_to_cel(data)
    py_eval = per_call_us(lambda: prg.evaluate(act), 1000, repeat)
    py_ctx = per_call_us(lambda: celpy.json_to_cel(activation_dict(snap)), 500, repeat)
    py_compile = per_call_us(lambda: env.program(env.compile(EXPR)), 100, repeat)
    print(f"cel-python:                 evaluate {py_eval:.2f} us, build activation {py_ctx:.1f} us, "
          f"compile {py_compile:.1f} us")
    print(f"ratio cel-python / common-expression-language: evaluate {py_eval / rust_eval:.0f}x, "
          f"compile {py_compile / rust_compile:.0f}x")


def bench_decide(repeat: int) -> None:
    pol = load_policy([REPO / "policies" / "balanced.toml"])
    rows = smollm2_rows() + smollm2_rows("vad", npu=True)
    snap = scenario("discharge", 60).samples[0].snapshot
    st = PolicyState()
    us = per_call_us(lambda: decide(snap, st, pol, rows, 0.0), 500, repeat)
    print(f"decide(): {us:.0f} us per sample (3 rules, 2 models, {len(rows)} rows)")


SHIPPED = ("laptop_workday", "thermal_sustained_load", "memory_pressure_bursts", "chat_rising_heat",
           "phone_day_bursts")
# a chat answer of 32 tokens within 2 s; a VAD window within 5 ms; one request every 5 s per model
MEASURED_WORKLOAD = "rate=0.2/s,smollm2.tokens=32,smollm2.deadline_ms=2000,silero_vad.deadline_ms=5"
BEGIN, END = "<!-- bench_policy:begin -->", "<!-- bench_policy:end -->"


def measured_tables(zoo: Path, verbose: bool, curves: bool = True) -> None:
    from agent.policy.cli import zoo_table
    from agent.policy.costs import ComputeState
    from agent.policy.table import by_model
    from agent.policy.trace import load_trace
    from agent.sensors.trace import shipped

    table, errs = zoo_table(zoo)
    for k, v in errs.items():
        print(f"warning: {k}: {v}", file=sys.stderr)
    if not curves:
        import dataclasses

        table = [dataclasses.replace(r, curve=None) for r in table]
    pol = load_policy([REPO / "policies" / "balanced.toml"])
    wl = parse_workload(MEASURED_WORKLOAD)
    models = by_model(table)
    how = "with the measured cost curves" if curves else "nominal figures only (curves ignored: latency x 1/compute)"
    print(f"\n### Measured zoo, {how}; default policy `balanced.toml`, workload `{MEASURED_WORKLOAD}`\n")
    print("Rows: the manifest's nominal figures, then what the simulator and decide() use, the row at compute "
          "1.0 / 0.5 / 0.25 (the measured cost curve when `basis` is measured, else latency scaled by 1/compute): "
          "p95 per unit and the p95 of one workload request (`ttft + tokens x p95/token` for causal-lm), "
          "against the workload's deadline.\n")
    print("| model | row | quality | nominal p95 ms/unit | nominal J/unit | unit | basis | curve mechanism "
          "| p95 ms/unit at 1.0 / 0.5 / 0.25 | request p95 ms at 1.0 / 0.5 / 0.25 | J/request at 1.0 | deadline ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for m, rs in models.items():
        dem = wl.demand(m)
        for r in rs:
            at = [r.at(ComputeState(c, 0.0, c, 1.0)) for c in (1.0, 0.5, 0.25)]
            lat = " / ".join(f"{x.latency_ms_p95:.4g}" for x in at)
            req = " / ".join(f"{x.request_ms(dem.tokens):.4g}" for x in at)
            print(f"| {m} | {r.label} | {r.quality_rel} | {r.latency_ms_p95:.4g} | {r.energy_j:.4g} | {r.unit} | "
                  f"{r.basis} | {r.curve.mechanism if r.curve else '-'} | {lat} | {req} "
                  f"| {at[0].request_j(dem.tokens):.4g} | {dem.deadline_ms if dem.deadline_ms is not None else '-'} |")
    summary = []
    for name in SHIPPED:
        tr = load_trace(shipped(name))
        for m, rs in models.items():
            rep = simulate(tr, pol, rs, wl)
            acc, par = rep.acceptance(), rep.pareto()
            time_in = ", ".join(f"{k.split(':', 1)[1]} {v:.0f}s" for k, v in sorted(rep.policy.time_in.items()))
            print(f"\n**{name} · {m}** ({rep.duration_s:.0f} s; policy swaps {rep.policy.swaps}; time in: {time_in})\n")
            print("| method | J/request | mean quality | delivered quality | deadline/SLO met | swaps | policy vs it |")
            print("|---|---|---|---|---|---|---|")
            for k in ["policy", "oracle", *sorted(x for x in rep.methods if x.startswith("static:"))]:
                r = rep.methods[k]
                v = par.get(k)
                verdict = "" if v is None else v["verdict"] + (
                    f" (better: {', '.join(v['better'])}; worse: {', '.join(v['worse'])})" if v["worse"] else "")
                print(f"| {k} | {r.energy_per_request_j:.5g} | {r.mean_quality:.4f} | {r.delivered_quality:.4f} | "
                      f"{r.slo_attainment:.1%} | {r.swaps} | {verdict} |")
            n_dom = sum(1 for v in par.values() if v["verdict"] == "dominates")
            rest = "; ".join(f"{k.split(':', 1)[1]} {v['verdict']}" + (f" (worse: {', '.join(v['worse'])})"
                                                                       if v["worse"] else "")
                             for k, v in sorted(par.items()) if v["verdict"] != "dominates") or "-"
            summary.append((name, m, n_dom, len(par), acc.get("energy_gap_to_oracle", float("nan")),
                            acc.get("quality_delta_vs_oracle", 0.0), acc.get("attainment_delta_vs_oracle", 0.0),
                            acc.get("pareto_pass"), acc.get("oracle_pass"),
                            f"{rep.policy.swaps}/{rep.methods['oracle'].swaps}", rest))
            if verbose:
                print(format_report(rep))
    print("\n**Acceptance summary** (Pareto: the policy at least as good on energy/request, mean quality and "
          "deadline attainment and strictly better on one; oracle: energy within 2 % at equal quality and "
          "attainment)\n")
    print("| trace | model | static rows dominated | gap to oracle (energy) | quality vs oracle | attainment vs oracle "
          "| swaps (policy/oracle) | Pareto | oracle | rows not dominated |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m, n_dom, n, gap, dq, da, pp, op, sw, rest in summary:
        print(f"| {name} | {m} | {n_dom} of {n} | {gap:+.2%} | {dq:+.4f} | {da:+.2%} | {sw} "
              f"| {'PASS' if pp else 'MISS'} | {'PASS' if op else 'MISS'} | {rest} |")


def sim_tables(verbose: bool) -> None:
    """One markdown line per scenario: the acceptance figures (copied into docs/SIMULATION.md)."""
    cases = (("A: cpu-only (FACTS.md SmolLM2 figures)", smollm2_rows(), ("balanced",)),
             ("B: cpu + hypothetical cheap GPU row", smollm2_rows(gpu=True), ("balanced", "thermal-guard")),
             ("C: cpu + hypothetical NPU rows", smollm2_rows(npu=True), ("balanced",)))
    from agent.policy.trace import load_trace
    from agent.sensors.trace import shipped

    traces = [(n, load_trace(shipped(n))) for n in SHIPPED]
    traces += [(sc, scenario(sc)) for sc in SCENARIOS]
    for table_name, rows, policies in cases:
        for pol_name in policies:
            pol = load_policy([REPO / "policies" / f"{pol_name}.toml"])
            print(f"\n**Table {table_name}; policy `{pol_name}.toml`; workload rate=0.5/s**\n")
            print("| trace | policy J/req | best-quality J/req | saving | quality loss | oracle J/req | gap to oracle "
                  "| swaps (policy/oracle) | off-constraint requests (policy / best-q / oracle) | target |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for sc, tr in traces:
                rep = simulate(tr, pol, rows, parse_workload("rate=0.5/s"))
                a, m = rep.acceptance(), rep.methods
                off = " / ".join(f"{m[k].violating_requests / m[k].requests:.1%}"
                                 for k in ("policy", "static-best-quality", "oracle"))
                print(f"| {sc} | {m['policy'].energy_per_request_j:.3f} "
                      f"| {m['static-best-quality'].energy_per_request_j:.3f} "
                      f"| {a['energy_saving_vs_best_quality']:.1%} | {a['quality_loss_vs_best_quality']:.2%} "
                      f"| {m['oracle'].energy_per_request_j:.3f} | {a['energy_gap_to_oracle']:+.2%} "
                      f"| {m['policy'].swaps}/{m['oracle'].swaps} | {off} | {'PASS' if a['pass'] else 'MISS'} |")
                if verbose:
                    print(format_report(rep))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--skip-timing", action="store_true", help="no CEL/decide() timings (the tables only)")
    ap.add_argument("--zoo", type=Path, help="a measured zoo (SmolLM2 + Silero VAD) for the measured tables")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the generated part of docs/SIMULATION.md")
    ap.add_argument("--verbose", action="store_true", help="also print every full report")
    args = ap.parse_args()
    if not args.skip_timing:
        bench_cel(args.repeat)
        bench_decide(args.repeat)
    if args.skip_sim:
        return
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if args.zoo:
            measured_tables(args.zoo, args.verbose)
            measured_tables(args.zoo, args.verbose, curves=False)
        print("\n### Fixture tables (FACTS.md SmolLM2 figures; issue 3's targets)")
        sim_tables(args.verbose)
    text = buf.getvalue()
    print(text)
    if args.write_docs:
        doc = REPO / "docs" / "SIMULATION.md"
        old = doc.read_text(encoding="utf-8")
        if BEGIN not in old or END not in old:
            raise SystemExit(f"{doc}: expected the markers {BEGIN} and {END}")
        head, rest = old.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        cmd = "benchmarks/bench_policy.py" + (f" --zoo {args.zoo}" if args.zoo else "") + " --write-docs"
        doc.write_text(f"{head}{BEGIN}\n<!-- generated by {cmd}; do not edit by hand -->\n{text}\n{END}{tail}",
                       encoding="utf-8")
        print(f"wrote {doc}")


if __name__ == "__main__":
    main()
