"""Kind plugin ``tensor``: any ONNX model measured on the recipe's ``[eval]`` data (see evaldata)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.errors import BuildError
from agent.zoo.build import evaldata
from agent.zoo.build.registry import KindPlugin, MeasureContext, MeasureResult, register_kind
from agent.zoo.manifest import Measurement, Quality, TensorSpec

METRIC_NAMES = {"threshold": "agreement", "top1": "top1", "cosine": "cosine"}
MAX_CALIBRATION_FEEDS = 256


def _specs(rows: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(r["name"], r["dtype"], tuple(r["shape"])) for r in rows)


def run_worker(req: dict[str, Any], timeout: float = 600,
               module: str = "agent.zoo.build.measure_worker") -> dict[str, Any]:
    """Run a measurement module (``python -m MODULE``, request as JSON on stdin) in a fresh interpreter;
    its last JSON line is the answer (raises BuildError on error)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        r = subprocess.run([sys.executable, "-m", module], input=json.dumps(req),
                           check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"measurement took longer than {timeout:.0f}s") from e
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        err = (r.stderr or "").strip()
        last = err.splitlines()[-1] if err else "no output"
        raise BuildError(f"measurement process died (exit {r.returncode}): {last}",
                         data={"detail": err[-20000:]} if err else None)
    res: dict[str, Any] = json.loads(lines[-1])
    if "error" in res:
        raise BuildError(str(res["error"]), data={"detail": res["detail"]} if res.get("detail") else None)
    return res


def measure(ctx: MeasureContext) -> MeasureResult:
    ev: evaldata.TensorEval = ctx.recipe.eval
    ms = ctx.recipe.measure
    ctx.log(f"measuring {ctx.variant_id} ({ms.runs}+ runs in a subprocess)")
    res = run_worker({"recipe": str(ctx.recipe.path), "model": str(ctx.model_path),
                      "reference": str(ctx.reference_path) if ctx.reference_path else None,
                      "runs": ms.runs, "warmup": ms.warmup, "threads": ms.threads})
    metric = METRIC_NAMES[ev.metric]
    info: dict[str, Any] = {"runs": res["runs"], "steps": res["steps"], "baseline_rss": res["baseline_rss"],
                            "cpu_ms_per_inference": round(res["cpu_s"] * 1000, 5)}
    if ctx.reference_path is None:
        quality = Quality(metric, 1.0, 1.0)
    else:
        quality = Quality(metric, round(res["quality"], 6), round(res["quality"], 6))
        info.update(res["quality_info"])
    m = Measurement(device="cpu", provider="CPUExecutionProvider", latency_ms_p50=round(res["p50"], 5),
                    latency_ms_p95=round(res["p95"], 5), load_ms=round(res["load_ms"], 3),
                    peak_rss_bytes=res["peak_rss"], energy_j=res["cpu_s"] * ms.cpu_watts, meter="model")
    return MeasureResult(measurement=m, quality=quality, inputs=_specs(res["inputs"]),
                         outputs=_specs(res["outputs"]), info=info)


def calibration(recipe: Any, model: Path) -> list[dict[str, Any]]:
    """Full feeds (state included, from running ``model``) for the calibration part of ``[eval]``."""
    import onnxruntime as ort

    from agent.zoo.manifest import ORT_TYPES

    ev: evaldata.TensorEval = recipe.eval
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise BuildError("onnxruntime cannot load the model for calibration: " + " ".join(str(e).split())) from e
    inputs = [(a.name, ORT_TYPES.get(a.type, "float32"), list(a.shape or [])) for a in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    calib, _ = evaldata.streams(ev, inputs)
    feeds: list[dict[str, Any]] = []
    for s in calib:
        f, _ = evaldata.run_stream(sess, ev, s, inputs, out_names)
        feeds.extend(f)
    if len(feeds) > MAX_CALIBRATION_FEEDS:
        step = len(feeds) / MAX_CALIBRATION_FEEDS
        feeds = [feeds[int(i * step)] for i in range(MAX_CALIBRATION_FEEDS)]
    return feeds


register_kind(KindPlugin(kind="tensor", parse_eval=evaldata.parse_eval, measure=measure,
                         eval_fingerprint=evaldata.fingerprint, calibration=calibration))
