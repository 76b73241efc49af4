"""Split and remote placements against the same model run locally, measured in the same run.

    flock /work/bench.lock python benchmarks/bench_hetero.py [--hidden 512 16384] [--rounds 7] [--runs 30]

For each MLP size: builds a zoo, adds a split variant (cut at ``h1``, parts on ``--devices``) and a remote
variant served by a KServe ModelServer on loopback (needs ``.venv-kserve`` or ``$AGENT_KSERVE_PYTHON``),
each measured by the zoo builders in interleaved rounds against the unsplit local fp32 (A B A B …).
Prints medians, p95, the same-round ratio to local, CPU ms per inference here, bytes on the wire.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from agent.testing import make_tensor_zoo
    from agent.zoo.build.offload import add_remote
    from agent.zoo.build.split import build_split
    from tests.hetero.kserve_helpers import start_kserve

    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="+", default=[512, 16384])
    ap.add_argument("--devices", default="cpu,cpu")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip())
    rows = []
    for hidden in a.hidden:
        with tempfile.TemporaryDirectory() as tmp:
            zoo = Path(tmp) / "zoo"
            make_tensor_zoo(zoo, "mlp", in_features=256, hidden=hidden, out_features=64)
            m = build_split(zoo, "mlp", at=[["h1"]], devices=a.devices.split(","), rounds=a.rounds, runs=a.runs)
            ks = start_kserve({"mlp": zoo / "mlp" / "fp32.onnx"}, Path(tmp) / "kserve.log")
            try:
                m = add_remote(zoo, "mlp", endpoint=ks.url, remote_model="mlp", rounds=a.rounds, runs=a.runs)
            finally:
                ks.kill()
            for vid, dev in (("fp32-split", "split"), ("remote", "remote")):
                v = m.variant(vid)
                meas = v.measurement(dev)
                assert meas is not None
                rows.append((hidden, vid, v.build["baseline_p50_ms"], meas.latency_ms_p50, meas.latency_ms_p95,
                             v.build["ratio_p50_vs_baseline"], v.build["cpu_ms_per_inference"],
                             v.build.get("bytes_per_inference", 0), v.build["max_abs_diff"]))
    print("| hidden | variant | local fp32 p50 ms | p50 ms | p95 ms | ratio p50 vs local (same rounds) | "
          "CPU ms/inf here | bytes/inf | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.3f} | {r[6]:.4f} | {r[7]:.0f} | "
              f"{r[8]:.2g} |")
    print(subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
