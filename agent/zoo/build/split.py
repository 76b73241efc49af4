"""Split variants: one model's graph cut at named tensors into parts, each part placed on its own device.

``agentctl zoo split MODEL --at TENSOR --devices cpu,OpenVINOExecutionProvider`` cuts the source variant
(``--from``, default the reference) with ``onnx.utils.extract_model``: part 0 maps the model's inputs to
the cut tensors, part 1 maps the cut tensors (and any model inputs it still needs) to the outputs, and so
on for more cut points. Every part's device is checked against the devices ONNX Runtime discovers here
(refused with the list otherwise). The split is then measured in its own process against the unsplit
source in interleaved rounds (latency, CPU energy, peak RSS, output difference) and added to the
manifest as a variant whose measurement has ``device = "split"``: the policy ranks it like any row.
A split whose outputs differ from the unsplit model's beyond ``--tolerance`` is refused.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from agent.errors import BuildError, InvalidParams
from agent.zoo.manifest import (
    _ID,
    Manifest,
    Measurement,
    Part,
    Quality,
    Variant,
    load_manifest,
    save_manifest,
    sha256_file,
    with_variant,
)


def cut_candidates(model_path: Path) -> list[str]:
    """Tensors at which the graph can be cut into two parts joined by that one tensor alone
    (every later node reads only it, initializers, model inputs, or later nodes' outputs)."""
    import onnx

    g = onnx.load(str(model_path), load_external_data=False).graph
    inits = {i.name for i in g.initializer} | {i.name for i in g.input}
    out = []
    nodes = list(g.node)          # ONNX graphs are stored in topological order
    for k in range(len(nodes) - 1):
        before = {o for n in nodes[: k + 1] for o in n.output}
        after_reads = {i for n in nodes[k + 1:] for i in n.input if i} | {o.name for o in g.output}
        crossing = (after_reads & before) - inits
        if len(crossing) == 1:
            t = next(iter(crossing))
            if t not in {o.name for o in g.output}:
                out.append(t)
    return out


def _needed_inputs(model: Any, outputs: list[str], stop: set[str]) -> list[str]:
    """The model inputs that ``outputs`` depend on, not looking past ``stop`` tensors."""
    producer = {o: n for n in model.graph.node for o in n.output}
    model_inputs = [i.name for i in model.graph.input]
    seen: set[str] = set()
    todo = list(outputs)
    need: set[str] = set()
    while todo:
        t = todo.pop()
        if t in seen or t in stop:
            continue
        seen.add(t)
        if t in model_inputs:
            need.add(t)
        n = producer.get(t)
        if n is not None:
            todo.extend(i for i in n.input if i)
    return [i for i in model_inputs if i in need]


def split_model(src: Path, cuts: list[list[str]], out_dir: Path) -> list[Path]:
    """Write ``len(cuts) + 1`` part files into ``out_dir``; ``cuts[i]`` are the tensors between part i and i+1."""
    import onnx
    import onnx.utils

    model = onnx.load(str(src))
    produced = {o for n in model.graph.node for o in n.output}
    model_in = [i.name for i in model.graph.input]
    model_out = [o.name for o in model.graph.output]
    for cut in cuts:
        bad = [t for t in cut if t not in produced or t in model_out]
        if bad:
            have = cut_candidates(src)
            raise InvalidParams(f"cannot cut at {bad[0]!r}: not an inner tensor of {src.name}; "
                                f"single-tensor cut points: {', '.join(have[:20]) or 'none'}")
    bounds = [model_in, *cuts, model_out]
    paths = []
    for i in range(len(bounds) - 1):
        outs = bounds[i + 1]
        stop = set(bounds[i])
        ins = list(bounds[i]) + [t for t in _needed_inputs(model, outs, stop) if t not in bounds[i]]
        p = out_dir / f"part{i}.onnx"
        try:
            onnx.utils.extract_model(str(src), str(p), ins, outs, check_model=True)
        except Exception as e:  # noqa: BLE001 - onnx raises ValidationError/KeyError for a cut that leaves a hole
            raise InvalidParams(f"cannot extract part {i} ({ins} -> {outs}): "
                                f"{' '.join(str(e).split())[:300]}") from None
        paths.append(p)
    return paths


def build_split(zoo: Path, model: str, *, at: list[list[str]], devices: list[str], source: str | None = None,
                variant_id: str | None = None, tolerance: float = 1e-4, cpu_watts: float = 10.0,
                rounds: int = 7, runs: int = 20, threads: int | None = None, command: str = "") -> Manifest:
    """Cut, place, measure and add a split variant of ``model``; returns the new manifest."""
    from agent.runtime import devices as devmod
    from agent.zoo.build.compare import run_measurement

    m = load_manifest(zoo / model)
    if m.kind != "tensor":
        raise InvalidParams(f"{model} is a {m.kind} model; splits are for tensor models")
    src = m.variant(source or m.reference)
    if src.parts or src.remote is not None:
        raise InvalidParams(f"{model}/{src.id} is itself split or remote; split a plain variant")
    if len(devices) != len(at) + 1:
        raise InvalidParams(f"{len(at)} cut point(s) make {len(at) + 1} parts; --devices names {len(devices)}")
    have = devmod.available()
    for d in devices:
        devmod.select(d, have)          # NotFound names what exists
    vid = variant_id or f"{src.id}-split"
    if not _ID.match(vid):
        raise InvalidParams(f"variant id: expected letters, digits, '_', '-', '.', got {vid!r}")
    if vid in m.variant_ids() and m.variant(vid).parts == ():
        raise InvalidParams(f"{model} already has a non-split variant {vid!r}")
    src_path = m.path_of(src)
    tmp = Path(tempfile.mkdtemp(dir=m.folder, prefix=f".tmp-split-{vid}-"))
    final: Path | None = None
    try:
        paths = split_model(src_path, at, tmp)
        shas = [sha256_file(p) for p in paths]
        final = m.folder / f"{vid}-{shas[0][:8]}"
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        parts = tuple(Part(f"{final.name}/{p.name}", d, sha) for p, d, sha in zip(paths, devices, shas, strict=True))
        req = {"candidate": {"parts": [{"path": str(final / p.name), "device": d, "sha256": sha}
                                       for p, d, sha in zip(paths, devices, shas, strict=True)], "threads": threads},
               "baseline": str(src_path), "rounds": rounds, "runs": runs, "threads": threads}
        res = run_measurement(req)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        raise
    if res["info"]["max_abs_diff"] > tolerance:
        shutil.rmtree(final, ignore_errors=True)
        raise BuildError(f"the split's outputs differ from {src.id}'s by {res['info']['max_abs_diff']:.3g} "
                         f"> tolerance {tolerance:g}; not added")
    base_rel = src.quality.relative if src.quality is not None else (1.0 if src.id == m.reference else None)
    quality = None
    if base_rel is not None:
        quality = Quality("max_abs_diff_vs_" + src.id, float(res["info"]["max_abs_diff"]),
                          round(base_rel * (1.0 - min(1.0, res["rel_err"])), 6))
    meas = Measurement(device="split", provider="+".join(p["device"]["provider"] for p in res["parts"]),
                       latency_ms_p50=round(res["p50"], 5), latency_ms_p95=round(res["p95"], 5),
                       load_ms=round(res["load_ms"], 3), peak_rss_bytes=int(res["peak_rss"]),
                       energy_j=res["cpu_s"] * cpu_watts, meter="model")
    v = Variant(id=vid, file=parts[0].file, precision=src.precision, derived_from=src.id,
                method="split " + " | ".join(",".join(c) for c in at), sha256=parts[0].sha256,
                size_bytes=sum((final / Path(p.file).name).stat().st_size for p in parts),
                inputs=src.inputs, outputs=src.outputs, quality=quality, measurements=(meas,), parts=parts,
                build={"source_sha256": src.sha256 or "", "cut": [list(c) for c in at], "devices": list(devices),
                       "placement": [{"part": p["part"], "device": p["device"]["label"],
                                      "providers": p["providers"]} for p in res["parts"]],
                       **res["info"],
                       "command": command or f"agentctl zoo split {model} --at {' '.join(','.join(c) for c in at)} "
                                             f"--devices {','.join(devices)}",
                       "built_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
    old = m.variant(vid) if vid in m.variant_ids() else None
    m = with_variant(m, v)
    save_manifest(m)
    if old is not None and old.parts and Path(old.file).parts[0] != final.name:
        shutil.rmtree(m.folder / Path(old.file).parts[0], ignore_errors=True)
    return m
