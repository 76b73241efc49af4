"""Where one decode step's time goes: ONNX Runtime's profiler on the engine's own loop.

    .venv/bin/python benchmarks/profile_decode_step.py MODEL.onnx TOKENIZER.json ZOO/manifest.toml \\
        [--threads 2] [--context 40] [--steps 32]

Runs the engine's decoder (the same runner the worker uses: shared KV buffers, I/O binding) with
``enable_profiling``, prefills ``--context`` tokens, decodes ``--steps`` tokens, and sums kernel time per
operator type over the decode steps only (sequence length 1). Prints one JSON object: per-op-type
milliseconds per step and share, the model-run wall time per step, and the share of a step spent
outside kernels (session overhead, binding, the Python loop).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("tokenizer", type=Path)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=40)
    ap.add_argument("--steps", type=int, default=32)
    a = ap.parse_args()

    import tomllib

    import numpy as np
    import onnxruntime as ort

    from agent.llm.decoder import open_decoder

    table = tomllib.loads(a.manifest.read_text())["llm"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = "/tmp/decode_profile"
    sess = ort.InferenceSession(str(a.model), so, providers=["CPUExecutionProvider"])
    dec = open_decoder(sess, a.model.name, table)
    ids = list(range(100, 100 + a.context))
    st = dec.new_state(a.context + a.steps + 1)
    logits = dec.run(st, ids)[-1]
    walls = []
    for _ in range(a.steps):
        t = time.perf_counter()
        logits = dec.run(st, [int(np.argmax(logits))])[-1]
        walls.append(time.perf_counter() - t)
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    decode_runs = runs[1:]  # the first is the prefill
    t_first = decode_runs[0]["ts"] if decode_runs else 0
    per_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= t_first:
            per_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3
    n = max(1, len(decode_runs))
    run_ms = sum(e["dur"] for e in decode_runs) / 1e3 / n
    kernel_ms = sum(per_op.values()) / n
    out = {"model": str(a.model), "family": dec.family, "threads": a.threads, "context": a.context,
           "steps": n, "python_step_ms_median": float(np.median(walls) * 1e3), "model_run_ms": run_ms,
           "kernel_ms": kernel_ms, "outside_kernels_share": 1 - kernel_ms / run_ms if run_ms else None,
           "per_op_ms": {k: round(v / n, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
           "per_op_share": {k: round(v / n / kernel_ms, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}}
    prof.unlink()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
