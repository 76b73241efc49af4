"""Precision builders with ONNX Runtime's own tools: copy, fp16, int8 dynamic/static, MatMulNBits, mixed.

Heavy imports (onnx, onnxruntime.quantization, onnxruntime.transformers) happen inside the builders.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agent.errors import BuildError
from agent.zoo.build.registry import BuildContext, BuildResult, Param, register_builder

MAIN = "model.onnx"
_QTYPES = ("int8", "uint8")


def _load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError / ValueError / OSError on a bad file
        raise BuildError(f"{path.name} is not a readable ONNX model: {' '.join(str(e).split())[:200]}") from e


def constants_to_initializers(model: Any) -> int:
    """Move top-level ``Constant`` tensors into initializers (the quantizers only see initializers)."""
    keep, moved = [], 0
    for node in model.graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if attr is not None and attr.name == "value" and node.domain in ("", "ai.onnx"):
            t = model.graph.initializer.add()
            t.CopyFrom(attr.t)
            t.name = node.output[0]
            moved += 1
        else:
            keep.append(node)
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return moved


# per-axis QuantizeLinear / DequantizeLinear (the ``axis`` attribute) exist from opset 13 on
PER_AXIS_OPSET = 13


def default_opset(model: Any) -> int | None:
    """The model's default-domain (``ai.onnx``) opset version; None when it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def upgrade_opset(model: Any, target: int) -> Any:
    """``model`` converted to default-domain opset ``target`` (onnx.version_converter, checked);
    BuildError saying why when it cannot be converted."""
    import onnx
    from onnx import version_converter

    have = default_opset(model)
    try:
        out = version_converter.convert_version(model, target)
        if out.ByteSize() < 1_800_000_000:   # the checker refuses protos past 2 GiB
            onnx.checker.check_model(out)
    except Exception as e:  # the converter raises RuntimeError/ValidationError/... from C++
        why = " ".join(str(e).split()) or type(e).__name__
        raise BuildError(f"per-channel quantization needs opset >= {target} (DequantizeLinear's axis); "
                         f"converting this opset-{have} model failed: {why[-300:]}; "
                         "set per_channel = false or export the model at opset >= 13") from e
    return out


def _prepared(ctx: BuildContext, min_opset: int | None = None) -> tuple[Path, dict[str, Any]]:
    """The input with constants as initializers and, with ``min_opset``, the default-domain opset raised
    to at least that, as a file in out_dir (the ORT quantizers take paths); and what was changed."""
    m = _load(ctx.input_path)
    notes: dict[str, Any] = {}
    have = default_opset(m)
    if min_opset is not None and have is not None and have < min_opset:
        m = upgrade_opset(m, min_opset)
        notes["opset_upgraded"] = f"{have} -> {min_opset}"
        ctx.log(f"opset {have} -> {min_opset}: per-channel Q/DQ needs DequantizeLinear's axis (opset 13)")
    if not constants_to_initializers(m) and not notes:
        return ctx.input_path, notes
    p = ctx.out_dir / ".prepared.onnx"
    _save(m, p)
    return p, notes


def _save(model: Any, out: Path) -> None:
    import onnx

    big = model.ByteSize() > 1_800_000_000
    onnx.save_model(model, str(out), save_as_external_data=big, location=out.name + ".data" if big else None)


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


@register_builder("copy", precision="fp32", accepts=("onnx",), tools=("onnx",))
def copy(ctx: BuildContext) -> BuildResult:
    """The input ONNX file as is (the usual reference variant)."""
    m = _load(ctx.input_path)
    if m.graph is None or not m.graph.node:
        raise BuildError(f"{ctx.input_path.name} holds no graph nodes")
    shutil.copyfile(ctx.input_path, ctx.out_dir / MAIN)
    return BuildResult(MAIN, info={"nodes": len(m.graph.node)})


@register_builder("fp16", precision="fp16", params={
    "keep_io_types": Param(bool, True, "keep float32 inputs/outputs (the model's signature)"),
    "op_block_list": Param(list, [], "extra op types kept in float32"),
})
def fp16(ctx: BuildContext) -> BuildResult:
    """Weights and compute in float16 (onnxruntime.transformers.float16)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    m = _load(ctx.input_path)
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(ctx.params["op_block_list"]))
    m16 = convert_float_to_float16(m, keep_io_types=ctx.params["keep_io_types"], op_block_list=block)
    _save(m16, ctx.out_dir / MAIN)
    return BuildResult(MAIN, info={"op_block_list": list(ctx.params["op_block_list"])})


_EXCLUDE_PARAMS = {
    "exclude": Param(list, [], "keep nodes whose name contains any of these strings in float"),
    "auto_exclude": Param(int, 0, "also keep in float the N nodes whose lone quantization changes the "
                                  "outputs most on the calibration data (measured)", lo=0, hi=1000),
}


def _run_all(path: Path, feeds: list[dict[str, Any]]) -> list[Any]:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return [np.concatenate([np.asarray(o, np.float64).ravel() for o in sess.run(None, {k: v for k, v in f.items()
                                                                                       if k in names})])
            for f in feeds]


def _excluded(ctx: BuildContext, src: Path, op_types: list[str], quantize: Any) -> tuple[list[str], dict[str, float]]:
    """Node names to keep in float: the ``exclude`` matches plus the ``auto_exclude`` most sensitive nodes.

    Sensitivity of a node = mean |output change| on the calibration feeds when that node alone is
    quantized with ``quantize(src, out, nodes_to_quantize=[name])``.
    """
    import numpy as np

    p = ctx.params
    m = _load(src)
    names = [n.name for n in m.graph.node if n.name]
    out = [n for n in names if any(e in n for e in p["exclude"])]
    scores: dict[str, float] = {}
    if p["auto_exclude"]:
        ops = set(op_types or ["Conv", "MatMul", "Gemm", "LSTM", "GRU", "Attention", "Gather",
                               "EmbedLayerNormalization"])
        cands = [n.name for n in m.graph.node if n.name and n.op_type in ops and n.name not in out]
        feeds = ctx.calibration()[:64]
        base = _run_all(src, feeds)
        probe = ctx.out_dir / ".probe.onnx"
        ctx.log(f"measuring the sensitivity of {len(cands)} nodes on {len(feeds)} calibration feeds")
        for name in cands:
            quantize(src, probe, [name])
            got = _run_all(probe, feeds)
            scores[name] = float(np.mean([np.abs(a - b).mean() for a, b in zip(base, got, strict=True)]))
        probe.unlink(missing_ok=True)
        worst = sorted(scores, key=lambda k: -scores[k])[: p["auto_exclude"]]
        out += [w for w in worst if w not in out]
    return out, scores


def _exclusion_info(excl: list[str], scores: dict[str, float]) -> dict[str, Any]:
    info: dict[str, Any] = {"kept_float": excl}
    if scores:
        info["sensitivity"] = {k: round(v, 6) for k, v in sorted(scores.items(), key=lambda kv: -kv[1])}
    return info


@register_builder("int8-dynamic", precision="int8", uses_eval=True, params={
    "weight_type": Param(str, "int8", choices=_QTYPES),
    "per_channel": Param(bool, False),
    "reduce_range": Param(bool, False),
    "op_types": Param(list, [], "op types to quantize (default: all that ORT supports)"),
    **_EXCLUDE_PARAMS,
})
def int8_dynamic(ctx: BuildContext) -> BuildResult:
    """int8 weights, activations quantized at run time (quantize_dynamic)."""
    from onnxruntime.quantization import quantize_dynamic

    p = ctx.params

    def q(src: Path, out: Path, only: list[str] | None = None, exclude: list[str] | None = None) -> None:
        quantize_dynamic(str(src), str(out), weight_type=_qtype(p["weight_type"]), per_channel=p["per_channel"],
                         reduce_range=p["reduce_range"], op_types_to_quantize=p["op_types"] or None,
                         nodes_to_quantize=only, nodes_to_exclude=exclude)

    src, notes = _prepared(ctx)
    excl, scores = _excluded(ctx, src, p["op_types"], q)
    q(src, ctx.out_dir / MAIN, exclude=excl)
    if src != ctx.input_path:
        src.unlink()
    return BuildResult(MAIN, info={**notes, **_exclusion_info(excl, scores)})


class _Reader:
    def __init__(self, feeds: list[dict[str, Any]], names: set[str]):
        self._it = iter([{k: v for k, v in f.items() if k in names} for f in feeds])

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax
        pass


@register_builder("int8-static", precision="int8", uses_eval=True, params={
    "activation_type": Param(str, "uint8", choices=_QTYPES),
    "weight_type": Param(str, "int8", choices=_QTYPES),
    "per_channel": Param(bool, False),
    "calibrate_method": Param(str, "minmax", choices=("minmax", "entropy", "percentile")),
    "op_types": Param(list, [], "op types to quantize (default: all that ORT supports)"),
    **_EXCLUDE_PARAMS,
})
def int8_static(ctx: BuildContext) -> BuildResult:
    """int8 QDQ with activation ranges calibrated on the recipe's calibration data (quantize_static)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    p = ctx.params
    feeds = ctx.calibration()
    if not feeds:
        raise BuildError("no calibration data")
    names = {i.name for i in _load(ctx.input_path).graph.input}
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[p["calibrate_method"]]
    src, notes = _prepared(ctx, PER_AXIS_OPSET if p["per_channel"] else None)
    ctx.log(f"calibrating on {len(feeds)} feeds ({p['calibrate_method']})")
    work = ctx.out_dir / ".calib"
    work.mkdir()

    def q(src: Path, out: Path, only: list[str] | None = None, exclude: list[str] | None = None) -> None:
        quantize_static(str(src), str(out), _Reader(feeds, names), quant_format=QuantFormat.QDQ,
                        activation_type=_qtype(p["activation_type"]), weight_type=_qtype(p["weight_type"]),
                        per_channel=p["per_channel"], calibrate_method=method,
                        op_types_to_quantize=p["op_types"] or None, nodes_to_quantize=only,
                        nodes_to_exclude=exclude)

    try:
        excl, scores = _excluded(ctx, src, p["op_types"], q)
        q(src, ctx.out_dir / MAIN, exclude=excl)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if src != ctx.input_path:
            src.unlink()
    return BuildResult(MAIN, info={"calibration_feeds": len(feeds), **notes, **_exclusion_info(excl, scores)})


def _nbits(model: Any, bits: int, block: int, sym: bool, level: int, exclude: list[str]) -> Any:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=sym, accuracy_level=level,
                             nodes_to_exclude=exclude)
    q.process()
    return q.model.model


def _count(model: Any, op: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op)


_NBITS_PARAMS = {
    "block_size": Param(int, 32, "weights per quantization block (power of two >= 16)", lo=16, hi=4096),
    "symmetric": Param(bool, True),
    "accuracy_level": Param(int, 4, "MatMulNBits compute type: 4 = int8 activations (fast on CPU)", lo=0, hi=4),
}


@register_builder("matmul-nbits", precision="int4", params={
    "bits": Param(int, 4, "4 or 8", lo=4, hi=8), **_NBITS_PARAMS,
    "exclude": Param(list, [], "MatMul node names kept in float"),
})
def matmul_nbits(ctx: BuildContext) -> BuildResult:
    """Weight-only 4/8-bit MatMul (MatMulNBits, com.microsoft) with accuracy_level set."""
    p = ctx.params
    if p["bits"] not in (4, 8):
        raise BuildError(f"bits: expected 4 or 8, got {p['bits']}")
    m = _load(ctx.input_path)
    constants_to_initializers(m)
    m = _nbits(m, p["bits"], p["block_size"], p["symmetric"], p["accuracy_level"],
               list(p["exclude"]))
    n = _count(m, "MatMulNBits")
    if n == 0:
        raise BuildError("no MatMul with a constant weight to quantize (MatMulNBits found nothing to do)")
    _save(m, ctx.out_dir / MAIN)
    return BuildResult(MAIN, precision="int4" if p["bits"] == 4 else "int8", info={"matmulnbits_nodes": n})


def _int4_error(w: Any, block: int) -> float:
    """Relative L2 error of symmetric blockwise int4 round-trip of a [K, N] weight (blocks along K)."""
    import numpy as np

    k, n = w.shape
    pad = (-k) % block
    wp = np.pad(w, ((0, pad), (0, 0))).reshape(-1, block, n)
    scale = np.abs(wp).max(axis=1, keepdims=True) / 7.0
    scale[scale == 0] = 1.0
    deq = np.clip(np.round(wp / scale), -8, 7) * scale
    err = np.linalg.norm((deq - wp).ravel())
    return float(err / (np.linalg.norm(wp.ravel()) or 1.0))


@register_builder("mixed", precision="mixed", params={
    **_NBITS_PARAMS,
    "sensitive_fraction": Param(float, 0.25, "share of MatMuls kept at 8 bits (highest int4 error)",
                                lo=0.0, hi=1.0),
    "sensitive": Param(list, [], "MatMul node names forced to 8 bits"),
})
def mixed(ctx: BuildContext) -> BuildResult:
    """int4 MatMulNBits, with the MatMuls most hurt by int4 (measured weight error) kept at int8."""
    from onnx import numpy_helper

    p = ctx.params
    m = _load(ctx.input_path)
    constants_to_initializers(m)
    for i, node in enumerate(m.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    inits = {t.name: t for t in m.graph.initializer}
    errors: dict[str, float] = {}
    for node in m.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            if w.ndim == 2 and w.dtype.kind == "f":
                errors[node.name] = _int4_error(w.astype("float32"), p["block_size"])
    if not errors:
        raise BuildError("no MatMul with a constant 2-D float weight to quantize")
    ranked = sorted(errors, key=lambda k: -errors[k])
    n8 = round(len(ranked) * p["sensitive_fraction"])
    eight = sorted(set(ranked[:n8]) | (set(p["sensitive"]) & set(errors)))
    four = [k for k in errors if k not in eight]
    args = (p["block_size"], p["symmetric"], p["accuracy_level"])
    if eight:
        m = _nbits(m, 8, *args, exclude=four)
    if four:
        m = _nbits(m, 4, *args, exclude=eight)
    _save(m, ctx.out_dir / MAIN)
    return BuildResult(MAIN, info={"int8_nodes": eight, "int4_nodes": len(four),
                                   "int4_error_max": round(max(errors.values()), 5)})
