"""Daemon path vs in-process ``InferenceSession.run``, measured in one run on the same model.

    .venv/bin/python benchmarks/bench_spine.py [--n 2000] [--json OUT]

Reports p50/p99 latency for a ~1 KB input (1x256 float32) and a ~1 MB input (1024x256 float32) of a
real MLP (fp32, 256->512->64), in process and through agentd (blocking client, Unix socket, worker
process, shared memory for large tensors); the added latency; and the time from ``pin`` to the first
response from the new variant. Interleaves the two paths in rounds so drift hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="requests per size per path")
    ap.add_argument("--pins", type=int, default=20)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import onnxruntime as ort

    from agent.client import Client, wait_for_socket
    from agent.testing import make_tensor_zoo

    tmp = Path(tempfile.mkdtemp(prefix="bench-spine-"))
    make_tensor_zoo(tmp / "zoo")
    sock = tmp / "a.sock"
    proc = subprocess.Popen([sys.executable, "-m", "agent.daemon", "--zoo", str(tmp / "zoo"), "--socket", str(sock),
                             "--state-dir", str(tmp / "state"), "--log-level", "warning"])
    try:
        wait_for_socket(sock, 60)
        sess = ort.InferenceSession(str(tmp / "zoo/mlp/fp32.onnx"), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        sizes = {"1KB": rng.standard_normal((1, 256)).astype(np.float32),
                 "1MB": rng.standard_normal((1024, 256)).astype(np.float32)}
        res: dict[str, dict[str, float]] = {}
        with Client(sock) as c:
            for label, x in sizes.items():
                inproc: list[float] = []
                daemon: list[float] = []
                for _ in range(50):  # warm both
                    sess.run(None, {"x": x})
                    c.infer("mlp", {"x": x})
                rounds = 10
                per = max(1, a.n // rounds)
                for _ in range(rounds):
                    for _ in range(per):
                        t0 = time.perf_counter()
                        sess.run(None, {"x": x})
                        inproc.append((time.perf_counter() - t0) * 1e6)
                    for _ in range(per):
                        t0 = time.perf_counter()
                        c.infer("mlp", {"x": x})
                        daemon.append((time.perf_counter() - t0) * 1e6)
                r = {"input_bytes": x.nbytes,
                     "inproc_p50_us": pct(inproc, 50), "inproc_p99_us": pct(inproc, 99),
                     "daemon_p50_us": pct(daemon, 50), "daemon_p99_us": pct(daemon, 99)}
                r["added_p50_us"] = r["daemon_p50_us"] - r["inproc_p50_us"]
                r["added_p99_us"] = r["daemon_p99_us"] - r["inproc_p99_us"]
                r["ratio_p50"] = r["daemon_p50_us"] / r["inproc_p50_us"]
                res[label] = r
            x = sizes["1KB"]
            pin_ms: list[float] = []
            for i in range(a.pins):
                target = "int8" if i % 2 == 0 else "fp32"
                t0 = time.perf_counter()
                c.pin("mlp", target)
                while c.infer("mlp", {"x": x}).variant != target:
                    pass
                pin_ms.append((time.perf_counter() - t0) * 1e3)
            res["pin_to_first_response"] = {"p50_ms": pct(pin_ms, 50), "p99_ms": pct(pin_ms, 99),
                                            "max_ms": max(pin_ms), "n": len(pin_ms)}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(f"{'size':<6}{'in-proc p50':>13}{'daemon p50':>12}{'added p50':>11}{'ratio':>7}"
          f"{'in-proc p99':>13}{'daemon p99':>12}{'added p99':>11}   (µs)")
    for label in sizes:
        r = res[label]
        print(f"{label:<6}{r['inproc_p50_us']:>13.1f}{r['daemon_p50_us']:>12.1f}{r['added_p50_us']:>11.1f}"
              f"{r['ratio_p50']:>7.2f}{r['inproc_p99_us']:>13.1f}{r['daemon_p99_us']:>12.1f}{r['added_p99_us']:>11.1f}")
    p = res["pin_to_first_response"]
    print(f"pin -> first response from the new variant: p50 {p['p50_ms']:.1f} ms, p99 {p['p99_ms']:.1f} ms "
          f"(n={p['n']})")
    res["meta"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "ort": ort.__version__}
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
