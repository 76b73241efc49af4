"""Creating an ONNX Runtime session for one variant on one device, inside a worker process.

Placement is explicit: the session is built with ``add_provider_for_devices`` for the chosen EP device,
CPU fallback for non-CPU devices is disabled so a node the device cannot run fails the load instead of
silently running elsewhere, and the node assignment per provider is recorded and reported.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import LoadError, NotFound
from agent.runtime import devices as devmod
from agent.zoo.manifest import ORT_TYPES
from agent.zoo.manifest import sha256_file as file_sha256


def signature(sess: Any) -> dict[str, list[dict[str, Any]]]:
    def one(x: Any) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else (str(d) if d else "?") for d in (x.shape or [])]
        return {"name": x.name, "dtype": ORT_TYPES.get(x.type, x.type), "shape": shape}
    return {"inputs": [one(i) for i in sess.get_inputs()], "outputs": [one(o) for o in sess.get_outputs()]}


def open_session(path: Path, device_spec: str, *, threads: int | None = None,
                 sha256: str | None = None, provider_options: dict[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """Open ``path`` on the device named by ``device_spec``. Returns (session, info)."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    if not path.is_file():
        raise LoadError(f"variant file {path} does not exist")
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256:
            raise LoadError(f"variant file {path.name} is corrupt: sha256 {got[:12]}… != manifest {sha256[:12]}…")
    try:
        dev = devmod.select(device_spec, devmod.discover())
    except NotFound as e:
        raise LoadError(str(e)) from None
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if dev.provider != "CPUExecutionProvider":
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    ep_dev = ort.get_ep_devices()[dev.index]
    opts = dict(provider_options or {})
    if dev.provider == "OpenVINOExecutionProvider":
        # OpenVINO on CPU silently computes in bf16 unless told otherwise (FACTS.md)
        opts.setdefault("load_config", '{"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}')
    so.add_provider_for_devices([ep_dev], opts)
    try:
        sess = ort.InferenceSession(str(path), sess_options=so)
    except Exception as e:  # onnxruntime raises its own types: map them to ours
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoadError(f"cannot load {path.name} on {dev.label}: {msg[:500]}") from None
    providers = list(sess.get_providers())
    if dev.provider not in providers:
        raise LoadError(f"{path.name}: session does not use {dev.provider} (got {providers})")
    info = {"device": dev.to_dict(), "providers": providers, "assignment": assignment(sess),
            "load_ms": (time.perf_counter() - t0) * 1e3, **signature(sess)}
    return sess, info


def assignment(sess: Any) -> dict[str, int]:
    """Number of nodes per provider, from the recorded graph assignment."""
    counts: dict[str, int] = {}
    try:
        for sub in sess.get_provider_graph_assignment_info():
            ep = getattr(sub, "ep_name", None) or str(sub)
            n = len(getattr(sub, "get_nodes", list)()) if hasattr(sub, "get_nodes") else len(getattr(sub, "nodes", []))
            counts[ep] = counts.get(ep, 0) + n
    except Exception:
        pass
    return counts


def sample_inputs(sess: Any, dim: int = 1) -> dict[str, np.ndarray]:
    """Deterministic warm-up inputs from the session's signature (symbolic dims = ``dim``)."""
    rng = np.random.default_rng(0)
    out = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else dim for d in (i.shape or [])]
        dt = np.dtype(ORT_TYPES.get(i.type, "float32"))
        if dt.kind == "f":
            out[i.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            out[i.name] = np.ones(shape, dtype=dt)
        else:
            out[i.name] = np.zeros(shape, dtype=dt)
    return out


# symbolic dims tried in turn: 1 suits most graphs; shape-sensitive ops (a reflect Pad over time, a
# window) need more, so a graph that fails at 1 gets 16 and then 512 before warm-up gives up
GUESSED_DIMS = (1, 16, 512)


def warmup_feeds(sess: Any, samples: str | Path | None = None) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Candidate warm-up feeds, best first: the model's own samples (an .npz with one array per input,
    the manifest's ``warmup``), then guessed inputs with growing symbolic dims."""
    out: list[tuple[str, dict[str, np.ndarray]]] = []
    if samples:
        with np.load(str(samples), allow_pickle=False) as z:
            out.append((f"samples {Path(samples).name}", {k: z[k] for k in z.files}))
    symbolic = any(not (isinstance(d, int) and d > 0) for i in sess.get_inputs() for d in (i.shape or []))
    for d in GUESSED_DIMS if symbolic else GUESSED_DIMS[:1]:
        out.append((f"guessed inputs (symbolic dims = {d})", sample_inputs(sess, d)))
    return out


def warm_up(sess: Any, runs: int, samples: str | Path | None = None) -> str:
    """Run ``runs`` warm-up inferences on the first candidate feed that works; returns what was used, or
    ``skipped: ...`` when none did. A load never fails only because warm-up inputs were guessed wrong."""
    if runs <= 0:
        return "none"
    errors = []
    try:
        feeds = warmup_feeds(sess, samples)
    except (OSError, ValueError) as e:   # a bad samples file: say so, fall back to guesses
        errors.append(f"samples {samples}: {e}")
        feeds = warmup_feeds(sess, None)
    for desc, feed in feeds:
        try:
            for _ in range(runs):
                sess.run(None, feed)
            return desc
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types; the next candidate may fit
            errors.append(f"{desc}: {' '.join(str(e).split())[:160]}")
    return "skipped: " + "; ".join(errors)
