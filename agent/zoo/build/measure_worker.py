"""Measure one tensor-model variant in its own process: ``python -m agent.zoo.build.measure_worker``.

Reads a JSON request on stdin ({"recipe", "model", "reference", "runs", "warmup", "threads"}) and
prints one JSON line: load time, latency p50/p95, peak RSS, CPU seconds per inference, the measured
signature and, with a reference, the quality of the outputs on the recipe's held-out data. Peak RSS is
this process's (VmHWM), taken before the reference is loaded, so it is the variant's honest cost
including the interpreter (~baseline reported too).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _hwm() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process in bytes. /proc's VmHWM starts afresh at exec, unlike
    ru_maxrss, which Linux carries over from the parent across execve."""
    cur = peak = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    if not peak:
        _, peak = _hwm()
    return cur or peak, peak


def _session(path: str, threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _sig(args: Any) -> list[dict[str, Any]]:
    from agent.zoo.manifest import ORT_TYPES

    out = []
    for a in args:
        if a.type not in ORT_TYPES:
            raise ValueError(f"{a.name}: unsupported type {a.type}")
        shape = [d if isinstance(d, int) else (d or f"dim{i}") for i, d in enumerate(a.shape or [])]
        out.append({"name": a.name, "dtype": ORT_TYPES[a.type], "shape": shape})
    return out


def measure(req: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from agent.zoo.build import evaldata
    from agent.zoo.recipe import load_eval

    ev = load_eval(req["recipe"], "tensor")
    rss0, _ = _hwm()
    t = time.perf_counter()
    try:
        sess = _session(req["model"], req.get("threads"))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        return {"error": "onnxruntime cannot load the variant: " + " ".join(str(e).split())}
    load_ms = (time.perf_counter() - t) * 1000
    ins, outs = _sig(sess.get_inputs()), _sig(sess.get_outputs())
    inputs = [(s["name"], s["dtype"], s["shape"]) for s in ins]
    out_names = [s["name"] for s in outs]
    want = ev.output or out_names[0]
    if want not in out_names:
        return {"error": f"eval.output {want!r} is not an output of the model ({out_names})"}
    for o, i in ev.state.items():
        if o not in out_names or i not in [x[0] for x in inputs]:
            return {"error": f"eval.state {o!r} -> {i!r} does not name an output -> input of the model"}
    _, held = evaldata.streams(ev, inputs)
    lat: list[float] = []

    def timed(feed: dict[str, Any]) -> list[Any]:
        t0 = time.perf_counter()
        r = sess.run(out_names, feed)
        lat.append(time.perf_counter() - t0)
        return r

    evaldata.run_stream(sess, ev, held[0][: max(1, req["warmup"])], inputs, out_names)
    cpu0 = time.process_time()
    got: list[Any] = []
    all_feeds: list[dict[str, Any]] = []
    for s in held:
        feeds, res = evaldata.run_stream(sess, ev, s, inputs, out_names, timer=timed)
        got.extend(r[out_names.index(want)] for r in res)
        all_feeds.extend(feeds)
    i = 0
    while len(lat) < req["runs"]:
        timed(all_feeds[i % len(all_feeds)])
        i += 1
    cpu_s = (time.process_time() - cpu0) / len(lat)
    _, peak = _hwm()
    ms = np.array(lat) * 1000
    result: dict[str, Any] = {
        "load_ms": load_ms, "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
        "runs": len(lat), "peak_rss": int(peak), "baseline_rss": int(rss0), "cpu_s": cpu_s,
        "inputs": ins, "outputs": outs, "steps": len(got),
    }
    if req.get("reference"):
        ref = _session(req["reference"], req.get("threads"))
        ref_outs = [o.name for o in ref.get_outputs()]
        if want not in ref_outs:
            return {"error": f"the reference has no output {want!r}"}
        exp: list[Any] = []
        for s in held:
            _, res = evaldata.run_stream(ref, ev, s, inputs, ref_outs)
            exp.extend(r[ref_outs.index(want)] for r in res)
        val, info = evaldata.quality(ev, exp, got)
        result["quality"], result["quality_info"] = val, info
    return result


def main() -> int:
    return serve_json(measure)


def serve_json(fn: Any) -> int:
    """One JSON request on stdin -> ``fn(request)`` -> one JSON line on stdout (errors as {"error"})."""
    from agent.errors import AgentError

    req = json.loads(sys.stdin.read())
    try:
        res = fn(req)
    except AgentError as e:
        res = {"error": e.message}
    except Exception as e:  # noqa: BLE001 - any failure becomes one JSON error line
        import traceback

        res = {"error": f"{type(e).__name__}: " + " ".join(str(e).split()), "detail": traceback.format_exc()}
    sys.stdout.write(json.dumps(res) + "\n")
    return 0 if "error" not in res else 2


if __name__ == "__main__":
    raise SystemExit(main())
