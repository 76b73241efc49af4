"""benchmarks/bench_serving.py runs end to end (a tiny configuration) and reports every summary figure:
the benchmark behind issue 12's figures must not rot unnoticed. No figure is asserted (timings belong in
the benchmark, not in tests); what is checked is that each section ran, every request was answered and
the load generators' layouts all reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_bench_serving_runs_and_reports_every_summary_figure(tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serving.py"), "--rounds", "1", "--n", "20",
                        "--seconds", "0.3", "--sections", "ipc,cache,batching", "--client-procs", "2,1",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(out.read_text())
    s = res["summary"]
    for key in ("ipc_1kb_added_p50_us", "ipc_1mb_ratio", "tensor_batching_speedup", "cache_hit_vs_ipc_ratio"):
        assert isinstance(s[key], float) and s[key] > 0, key
    assert s["llm_batching_speedup"] is None   # the llm section needs --llm
    tb = res["tensor_batching"]
    assert set(tb["layouts"]) == {"2x16", "1x32"} and tb["layout"] == "2x16"
    for r in tb["layouts"].values():
        for phase in ("unbatched", "unbatched_framed", "batched"):
            assert r[phase]["errors"] == 0 and r[phase]["rps"] > 0, (phase, r[phase])
        assert r["unbatched"]["lane_share"] > 0.9 and r["unbatched_framed"]["lane_share"] == 0.0
    assert res["targets"]["ipc_1kb_added_p50_us<=100"] in (True, False)
