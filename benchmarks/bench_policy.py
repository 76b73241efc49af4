"""Policy engine timings and the simulator's acceptance table.

    .venv/bin/python benchmarks/bench_policy.py [--repeat 7]

1. CEL libraries: compile + evaluate one rule with ``common-expression-language`` (Rust, ``import cel``) and
   ``cel-python`` (pure Python, ``import celpy``), medians over repeats, and the ratio. cel-python is optional.
2. decide() per sample with the shipped balanced policy on the fixture table.
3. The simulator on the synthetic scenarios for every shipped policy (the table in docs/SIMULATION.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.policy.conditions import Activation, activation_dict
from agent.policy.decide import decide
from agent.policy.loader import load_policy
from agent.policy.simulate import format_report, simulate
from agent.policy.state import PolicyState
from agent.policy.synthetic import SCENARIOS, scenario, smollm2_rows
from agent.policy.workload import parse_workload
from agent.sensors.snapshot import BatteryState, MemoryState, PowerState, Snapshot, ThermalState

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


def sim_tables(verbose: bool) -> None:
    """One markdown line per scenario: the acceptance figures (copied into docs/SIMULATION.md)."""
    cases = (("A: cpu-only (FACTS.md SmolLM2 figures)", smollm2_rows(), ("balanced",)),
             ("B: cpu + hypothetical cheap GPU row", smollm2_rows(gpu=True), ("balanced", "thermal-guard")),
             ("C: cpu + hypothetical NPU rows", smollm2_rows(npu=True), ("balanced",)))
    from agent.policy.trace import load_trace
    from agent.sensors.trace import shipped

    traces = [(n, load_trace(shipped(n))) for n in ("laptop_workday", "thermal_sustained_load",
                                                    "memory_pressure_bursts")]
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
                print(f"| {sc} | {m['policy'].energy_per_request_j:.3f} | {m['static-best-quality'].energy_per_request_j:.3f} "
                      f"| {a['energy_saving_vs_best_quality']:.1%} | {a['quality_loss_vs_best_quality']:.2%} "
                      f"| {m['oracle'].energy_per_request_j:.3f} | {a['energy_gap_to_oracle']:+.2%} "
                      f"| {m['policy'].swaps}/{m['oracle'].swaps} | {off} | {'PASS' if a['pass'] else 'MISS'} |")
                if verbose:
                    print(format_report(rep))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="also print every full report")
    args = ap.parse_args()
    bench_cel(args.repeat)
    bench_decide(args.repeat)
    if not args.skip_sim:
        sim_tables(args.verbose)


if __name__ == "__main__":
    main()
