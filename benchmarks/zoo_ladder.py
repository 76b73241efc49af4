"""Re-measure every variant of a built zoo model N times, interleaved, and print medians and ratios.

    .venv/bin/python benchmarks/zoo_ladder.py model_zoo/silero_vad --zoo /tmp/zoo --repeat 5

One build measures each variant once; timings on a shared 2-core machine vary 2-6x between runs, so
this script runs the same subprocess measurement (agent.zoo.build.tensor_kind.run_worker) in rounds
(fp32, int8, ..., fp32, int8, ...) and reports the median of each figure and its ratio to the reference
measured in the same run. Output: a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.zoo.build.tensor_kind import run_worker
from agent.zoo.cli import default_zoo_dir
from agent.zoo.manifest import load_manifest
from agent.zoo.recipe import load_recipe


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--runs", type=int, default=None, help="inferences per measurement (default: the recipe's)")
    a = ap.parse_args()
    recipe = load_recipe(a.recipe)
    m = load_manifest((a.zoo or default_zoo_dir()) / recipe.name)
    ref = m.path_of(m.variant(m.reference))
    figs: dict[str, dict[str, list[float]]] = {v.id: {} for v in m.variants}
    for r in range(a.repeat):
        for v in m.variants:
            res = run_worker({"recipe": str(recipe.path), "model": str(m.path_of(v)),
                              "reference": None if v.id == m.reference else str(ref),
                              "runs": a.runs or recipe.measure.runs, "warmup": recipe.measure.warmup,
                              "threads": recipe.measure.threads})
            for k in ("p50", "p95", "load_ms", "peak_rss", "cpu_s"):
                figs[v.id].setdefault(k, []).append(float(res[k]))
        print(f"round {r + 1}/{a.repeat} done", file=sys.stderr)
    med = {vid: {k: statistics.median(xs) for k, xs in f.items()} for vid, f in figs.items()}
    base = med[m.reference]
    print(f"{recipe.name}: medians of {a.repeat} interleaved measurements (ratios vs {m.reference}, same run)\n")
    print("| variant | size MB | quality | p50 ms | ×ref | p95 ms | load ms | peak RSS MB | CPU ms/inf |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in m.variants:
        d = med[v.id]
        q = f"{v.quality.metric} {v.quality.value:.4f}" if v.quality else "-"
        print(f"| {v.id} | {(v.size_bytes or 0) / 1e6:.2f} | {q} | {d['p50']:.4f} | {d['p50'] / base['p50']:.2f} "
              f"| {d['p95']:.4f} | {d['load_ms']:.1f} | {d['peak_rss'] / 1e6:.1f} | {d['cpu_s'] * 1000:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
