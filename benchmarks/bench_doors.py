"""What each front door costs on one tensor request: in process vs Unix socket vs KServe v2 over HTTP.

    flock /work/bench.lock .venv/bin/python benchmarks/bench_doors.py [--rounds 5] [--calls 200]

One agentd (the test MLP 256 -> 512 -> 64, fp32, batch 1, one thread) with ``--http``. Each round runs,
in this order, ``--calls`` requests of each contender and keeps the median latency per call:

- ``in-process``: an ONNX Runtime session on the same fp32 file (one thread);
- ``ipc``: ``agent.client.Client.infer`` over the Unix socket;
- ``kserve-binary``: ``tritonclient.http`` with binary tensors both ways (what it does by default);
- ``kserve-json``: ``tritonclient.http`` with JSON tensors both ways.

Reports the median of the round medians and, per contender, the median of the same-round ratios to
``ipc``. Timings on a shared machine are noisy: trust the ratios. Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_call(fn: Callable[[], Any], calls: int) -> float:
    fn()   # warm
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "doors.json")
    a = ap.parse_args()

    import onnxruntime as ort
    import tritonclient.http as th

    from agent.testing import make_tensor_zoo
    from tests.conftest import start_daemon

    tmp = Path(tempfile.mkdtemp(prefix="bench-doors"))
    make_tensor_zoo(tmp / "zoo", "mlp", in_features=256, hidden=512, out_features=64)
    d = start_daemon(tmp / "zoo", tmp, "--threads", "1", "--http", "127.0.0.1:0")
    try:
        with d.client() as c:
            c.pin("mlp", "fp32")
            url = c.status()["daemon"]["http"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(tmp / "zoo" / "mlp" / "fp32.onnx"), so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
        ref = sess.run(["y"], {"x": x})[0]
        ipc = d.client()
        tc = th.InferenceServerClient(url.removeprefix("http://"))

        def kserve(binary: bool) -> Callable[[], Any]:
            inp = th.InferInput("x", [1, 256], "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [th.InferRequestedOutput("y", binary_data=binary)]
            return lambda: tc.infer("mlp", [inp], outputs=outs).as_numpy("y")

        contenders: dict[str, Callable[[], Any]] = {
            "in-process": lambda: sess.run(["y"], {"x": x}),
            "ipc": lambda: ipc.infer("mlp", {"x": x}),
            "kserve-binary": kserve(True),
            "kserve-json": kserve(False),
        }
        np.testing.assert_array_equal(kserve(True)(), ref)   # the same numbers through the door
        rounds: list[dict[str, float]] = []
        for r in range(a.rounds):
            res = {name: median_call(fn, a.calls) for name, fn in contenders.items()}
            rounds.append(res)
            print(f"round {r + 1}: " + "  ".join(f"{k} {v:.3f} ms" for k, v in res.items()), flush=True)
        ipc.close()
        tc.close()
    finally:
        d.stop()
    summary = {name: {"median_ms": statistics.median(rd[name] for rd in rounds),
                      "ratio_to_ipc": statistics.median(rd[name] / rd["ipc"] for rd in rounds)}
               for name in rounds[0]}
    for name, s in summary.items():
        print(f"{name:>14}: {s['median_ms']:.3f} ms per call, x{s['ratio_to_ipc']:.2f} of ipc")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"rounds": rounds, "summary": summary, "calls": a.calls,
                                 "model": "mlp 256-512-64 fp32 batch 1, 1 thread"}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
