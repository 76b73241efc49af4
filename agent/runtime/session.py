"""Creating an ONNX Runtime session for one variant on one device, inside a worker process.

Placement is explicit: the session is built with ``add_provider_for_devices`` for the chosen EP device,
CPU fallback for non-CPU devices is disabled so a node the device cannot run fails the load instead of
silently running elsewhere, and the node assignment per provider is recorded and reported.

:func:`open_variant` is what a worker calls: a plain variant is one session; a *split* variant is several
sessions, one per part, each on its own device, chained by :class:`SplitSession` (the cut tensors pass
from part to part inside the worker's memory, no copy); a *remote* variant is a
:class:`agent.runtime.remote.RemoteSession`. All three answer ``get_inputs``/``get_outputs``/``run``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
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


def select_device(device_spec: str) -> tuple[devmod.Device, Any]:
    """The discovered device for ``device_spec`` and its ``OrtEpDevice``; LoadError naming what exists
    when there is none (a variant is never placed elsewhere silently)."""
    import onnxruntime as ort

    try:
        dev = devmod.select(device_spec, devmod.discover())
    except NotFound as e:
        raise LoadError(str(e)) from None
    return dev, ort.get_ep_devices()[dev.index]


def open_session(path: Path, device_spec: str, *, threads: int | None = None, sha256: str | None = None,
                 provider_options: dict[str, str] | None = None,
                 session_config: Mapping[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """Open ``path`` on the device named by ``device_spec``. Returns (session, info). Every worker backend
    opens its sessions here (tensor variants, split parts, LLM decoders); ``session_config`` adds or
    overrides ORT session config entries (the LLM backend keeps thread spinning on for decode latency)."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    if not path.is_file():
        raise LoadError(f"variant file {path} does not exist")
    if sha256 is not None:
        got = file_sha256(path)
        if got != sha256:
            raise LoadError(f"variant file {path.name} is corrupt: sha256 {got[:12]}… != manifest {sha256[:12]}…")
    dev, ep_dev = select_device(device_spec)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    config = {"session.record_ep_graph_assignment_info": "1", "session.intra_op.allow_spinning": "0"}
    if dev.provider != "CPUExecutionProvider" and dev.kind != "gpu":
        # a plugin/NPU EP must take the whole graph; a GPU EP (CUDA, DirectML) leaves shape ops to the CPU
        # by design, so there the split is allowed and reported (``assignment``) instead of refused
        config["session.disable_cpu_ep_fallback"] = "1"
    for key, value in {**config, **(session_config or {})}.items():
        so.add_session_config_entry(key, value)
    opts = dict(provider_options or {})
    if dev.provider == "OpenVINOExecutionProvider":
        # OpenVINO on CPU silently computes in bf16 unless told otherwise (FACTS.md)
        opts.setdefault("load_config", '{"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}')
    so.add_provider_for_devices([ep_dev], opts)
    try:
        sess = ort.InferenceSession(str(path), sess_options=so)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types: map them to ours
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LoadError(f"cannot load {path.name} on {dev.label}: {msg[:500]}") from None
    providers = list(sess.get_providers())
    if dev.provider not in providers:
        raise LoadError(f"{path.name}: session does not use {dev.provider} (got {providers})")
    assigned = assignment(sess)
    if assigned and not assigned.get(dev.provider):
        raise LoadError(f"{path.name}: {dev.provider} was given no nodes (assignment {assigned})")
    info = {"device": dev.to_dict(), "providers": providers, "assignment": assigned,
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
    except Exception:  # noqa: BLE001 - best-effort report: this introspection API varies across onnxruntime versions
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


class SplitSession:
    """Parts of one model run in sequence; each part's outputs feed the later parts' inputs."""

    def __init__(self, parts: list[Any]) -> None:
        if not parts:
            raise LoadError("a split variant needs at least one part")
        self.parts = parts
        self.part_io: list[tuple[list[str], list[str]]] = []
        produced: set[str] = set()
        consumed: set[str] = set()
        inputs: list[Any] = []
        for s in parts:
            ins = [i.name for i in s.get_inputs()]
            for i in s.get_inputs():
                if i.name not in produced and i.name not in {x.name for x in inputs}:
                    inputs.append(i)
            consumed.update(n for n in ins if n in produced)
            outs = [o.name for o in s.get_outputs()]
            produced.update(outs)
            self.part_io.append((ins, outs))
        self._inputs = inputs
        # the model's outputs: everything a part produces that no later part consumes
        self._outputs = [o for s in parts for o in s.get_outputs() if o.name not in consumed]
        self.cut = sorted(consumed)

    def get_inputs(self) -> list[Any]:
        return list(self._inputs)

    def get_outputs(self) -> list[Any]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return sorted({p for s in self.parts for p in s.get_providers()})

    def run(self, names: list[str] | None, feed: dict[str, Any]) -> list[Any]:
        env = dict(feed)
        for s, (ins, outs) in zip(self.parts, self.part_io, strict=True):
            env.update(zip(outs, s.run(outs, {n: env[n] for n in ins}), strict=True))
        return [env[n] for n in (names or [o.name for o in self._outputs])]


def open_split(parts: list[dict[str, Any]], *, threads: int | None = None) -> tuple[SplitSession, dict[str, Any]]:
    """Open every part on its own device (each checked like a plain variant: no silent fallback)."""
    t0 = time.perf_counter()
    sessions, placed = [], []
    for i, part in enumerate(parts):
        sess, info = open_session(Path(str(part["path"])), str(part.get("device") or "cpu"), threads=threads,
                                  sha256=part.get("sha256"))
        sessions.append(sess)
        placed.append({"part": i, "file": Path(str(part["path"])).name, "device": info["device"],
                       "providers": devmod.providers_ran(info), "assignment": info["assignment"],
                       "load_ms": info["load_ms"]})
    split = SplitSession(sessions)
    assign: dict[str, int] = {}
    for p in placed:
        for ep, n in p["assignment"].items():
            assign[ep] = assign.get(ep, 0) + n
    info = {"device": {"kind": "split", "provider": "+".join(p["device"]["provider"] for p in placed),
                       "vendor": "", "device_id": 0,
                       "label": "split:" + "+".join(p["device"]["label"] for p in placed)},
            "providers": split.get_providers(), "assignment": assign, "parts": placed, "cut": split.cut,
            "load_ms": (time.perf_counter() - t0) * 1e3, **signature(split)}
    return split, info


def open_variant(params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The session for a worker's ``load`` params: plain (path + device), split (parts) or remote."""
    if params.get("remote"):
        from agent.runtime.remote import open_remote

        sess, info = open_remote(dict(params["remote"]))
        return sess, {**info, **signature(sess)}
    if params.get("parts"):
        return open_split(list(params["parts"]), threads=params.get("threads"))
    return open_session(Path(str(params["path"])), str(params.get("device") or "cpu"),
                        threads=params.get("threads"), sha256=params.get("sha256"))
