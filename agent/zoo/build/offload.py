"""Remote variants: a model served by a KServe v2 inference server (Triton, KServe) as a zoo variant.

``agentctl zoo remote MODEL --endpoint http://HOST:PORT --remote-model NAME`` checks that the server
serves a model with this model's signature, measures it from here against the local source variant in
interleaved rounds, and adds a variant with ``file = ""``, a ``[variants.remote]`` table and one
measurement with ``device = "remote"``:

* latency is what this machine waits, network included;
* energy is this machine's cost only: the CPU time spent per request (encoding, the socket) at the
  recipe's watts per busy core, plus ``--radio-j-per-mb`` × the bytes on the wire (0 on loopback; a
  Wi-Fi or cellular radio costs roughly 0.1–1 J/MB, a figure you should measure for your device);
* quality compares the server's outputs with the local source variant's on the same inputs.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from agent.errors import InvalidParams, LoadError
from agent.zoo.manifest import (
    _ID,
    Manifest,
    Measurement,
    Quality,
    Remote,
    TensorSpec,
    Variant,
    _signature_mismatch,
    load_manifest,
    save_manifest,
    with_variant,
)


def add_remote(zoo: Path, model: str, *, endpoint: str, remote_model: str, version: str | None = None,
               variant_id: str = "remote", source: str | None = None, timeout_s: float = 5.0,
               cpu_watts: float = 10.0, radio_j_per_mb: float = 0.0, rounds: int = 7, runs: int = 20,
               command: str = "") -> Manifest:
    from agent.runtime.remote import open_remote
    from agent.zoo.build.compare import run_measurement

    m = load_manifest(zoo / model)
    if m.kind != "tensor":
        raise InvalidParams(f"{model} is a {m.kind} model; remote variants are for tensor models")
    if not _ID.match(variant_id):
        raise InvalidParams(f"variant id: expected letters, digits, '_', '-', '.', got {variant_id!r}")
    if variant_id in m.variant_ids() and m.variant(variant_id).remote is None:
        raise InvalidParams(f"{model} already has a local variant {variant_id!r}")
    if radio_j_per_mb < 0 or cpu_watts <= 0:
        raise InvalidParams("--radio-j-per-mb must be >= 0 and --cpu-watts > 0")
    src = m.variant(source or m.reference)
    if src.remote is not None or src.parts:
        raise InvalidParams(f"the baseline {src.id} must be a plain local variant")
    remote = Remote(endpoint, remote_model, version, timeout_s)
    spec = {"endpoint": endpoint, "model": remote_model, "version": version, "timeout_s": timeout_s}
    sess, _ = open_remote(spec)          # LoadError when unreachable or not served
    sess.close()
    for what, mine, got in (("inputs", m.inputs, sess.get_inputs()), ("outputs", m.outputs, sess.get_outputs())):
        theirs = tuple(TensorSpec(a.name, _np_name(a.type), tuple(d if d is not None else f"dim{i}"
                                                                  for i, d in enumerate(a.shape)))
                       for a in got)
        why = _signature_mismatch(mine, theirs)
        if why:
            raise LoadError(f"{endpoint} model {remote_model!r}: {what} do not match {model!r}: {why}")
    res = run_measurement({"candidate": {"remote": spec}, "baseline": str(m.path_of(src)),
                           "rounds": rounds, "runs": runs})
    per_inf_bytes = float(res.get("bytes_per_inference", 0.0))
    energy = res["cpu_s"] * cpu_watts + radio_j_per_mb * per_inf_bytes / 1e6
    base_rel = src.quality.relative if src.quality is not None else (1.0 if src.id == m.reference else None)
    quality = None
    if base_rel is not None:
        quality = Quality("max_abs_diff_vs_" + src.id, float(res["info"]["max_abs_diff"]),
                          round(base_rel * (1.0 - min(1.0, res["rel_err"])), 6))
    meas = Measurement(device="remote", provider=f"kserve-v2:{endpoint}/{remote_model}",
                       latency_ms_p50=round(res["p50"], 5), latency_ms_p95=round(res["p95"], 5),
                       load_ms=round(res["load_ms"], 3), peak_rss_bytes=int(res["peak_rss"]),
                       energy_j=energy, meter="model")
    v = Variant(id=variant_id, file="", precision=src.precision, derived_from=src.id, method="remote kserve-v2",
                inputs=m.inputs, outputs=m.outputs, quality=quality, measurements=(meas,), remote=remote,
                build={**res["info"], "bytes_per_inference": round(per_inf_bytes, 1),
                       "radio_j_per_mb": radio_j_per_mb, "cpu_watts": cpu_watts,
                       "command": command or f"agentctl zoo remote {model} --endpoint {endpoint} "
                                             f"--remote-model {remote_model}",
                       "measured_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    m = with_variant(m, v)
    save_manifest(m)
    return m


def _np_name(ort_type: str) -> str:
    from agent.zoo.manifest import ORT_TYPES

    return ORT_TYPES.get(ort_type, ort_type)
