"""What precision an ONNX graph really stores its weights in, read from the graph, never guessed from a name.

Evidence, in order: weight-only quantized ops (MatMulNBits / GatherBlockQuantized and their ``bits``),
QDQ and integer ops (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, ConvInteger,
QLinear*), then the element types of the weights themselves (initializers and Constant nodes). Every
subgraph (If / Loop / Scan bodies) counts as much as the main graph, so weights that sit inside an ``If``
are seen. A graph whose weights are int8 tensors dequantized by Cast + Mul is int8, not fp32.

Needs the ``onnx`` package (the ``build`` extra).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import LoadError

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
           "QLinearMatMul", "QLinearConv", "QLinearAdd", "QLinearMul", "QAttention", "DynamicQuantizeMatMul",
           "MatMulIntegerToFloat"}
NBITS_OPS = {"MatMulNBits", "GatherBlockQuantized"}
# tensors smaller than this (elements) are biases, scales, norms: they do not decide the label, unless the
# model has nothing larger
MIN_WEIGHT_ELEMS = 1024


@dataclass(frozen=True)
class Precision:
    label: str                                  # fp32 | fp16 | bf16 | int8 | int4 | mixed
    evidence: str                               # one line: what in the graph says so
    weight_bytes: dict[str, int] = field(default_factory=dict)   # element type -> bytes of large weights
    quant_ops: dict[str, int] = field(default_factory=dict)      # quantized op -> count (subgraphs included)


def _graphs(graph: Any) -> Iterator[Any]:
    """The graph and every subgraph below it (If/Loop/Scan bodies, recursively)."""
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _elems(dims: Any) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def detect(model_or_path: Any) -> Precision:
    """The precision of a model (an ``onnx.ModelProto`` or a path; external data is not read)."""
    import onnx

    if isinstance(model_or_path, str | Path):
        try:
            model = onnx.load(str(model_or_path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and others for a bad file
            raise LoadError(f"{model_or_path}: not an ONNX model: {' '.join(str(e).split())[:200]}") from None
    else:
        model = model_or_path
    quant_ops: dict[str, int] = {}
    bits: set[int] = set()
    weights: dict[str, int] = {}
    int4_types = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4") if hasattr(onnx.TensorProto, n)}

    small: dict[str, int] = {}

    def add_weight(t: Any) -> None:
        n = _elems(t.dims)
        name = onnx.TensorProto.DataType.Name(t.data_type).lower()
        if name in ("undefined", "string"):
            return
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type not in int4_types else 0.5
        into = weights if n >= MIN_WEIGHT_ELEMS else small
        into[name] = into.get(name, 0) + int(n * size)

    for g in _graphs(model.graph):
        for t in g.initializer:
            add_weight(t)
        for node in g.node:
            if node.op_type in NBITS_OPS or node.op_type in QDQ_OPS:
                quant_ops[node.op_type] = quant_ops.get(node.op_type, 0) + 1
            if node.op_type in NBITS_OPS:
                bits.update(a.i for a in node.attribute if a.name == "bits")
                if not any(a.name == "bits" for a in node.attribute):
                    bits.add(4)   # both ops default to 4 bits
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        add_weight(a.t)
    if not weights:   # a tiny model: its small tensors are all the weights it has
        weights = small
    ops = ", ".join(f"{k}×{v}" for k, v in sorted(quant_ops.items()))
    total = sum(weights.values())
    share = {k: v / total for k, v in weights.items()} if total else {}

    def result(label: str, why: str) -> Precision:
        return Precision(label, why, weights, quant_ops)

    if bits:
        label = "int4" if bits == {4} else "int8" if bits == {8} else "mixed"
        return result(label, f"weight-only quantized ops ({ops}), bits {sorted(bits)}")
    low = {k: v for k, v in share.items() if k in ("int8", "uint8", "int4", "uint4")}
    if quant_ops or sum(low.values()) > 0.5:
        if any(k in ("int4", "uint4") for k in low) and not any(k in ("int8", "uint8") for k in low):
            return result("int4", f"4-bit weights ({_pct(low)})" + (f", ops {ops}" if ops else ""))
        return result("int8", (f"quantized ops ({ops})" if ops else "no quantized op") +
                      (f"; 8-bit weights {_pct(low)}" if low else ""))
    if not share:
        return result("fp32", "no large weights (nothing to quantize)")
    top = max(share, key=lambda k: share[k])
    label = {"float16": "fp16", "bfloat16": "bf16", "float": "fp32", "double": "fp32"}.get(top, "fp32")
    return result(label, f"weights {_pct(share)}")


def _pct(share: dict[str, float]) -> str:
    """Shares of the large weights' bytes, largest first: ``int8 97 %, float 3 %``."""
    return ", ".join(f"{k} {v * 100:.0f} %" for k, v in sorted(share.items(), key=lambda kv: -kv[1]))


FLOAT = ("fp32", "fp16", "bf16")


def verify(declared: str, path: Path) -> tuple[str, str]:
    """(the label to record, evidence) for a built file whose builder declared ``declared``.

    A quantizing build whose graph still stores float weights, or an fp16/bf16 build whose weights are
    still fp32, changed nothing: LoadError with the evidence. A declared float label on a quantized graph
    is corrected to what the graph holds, and so is a declared fp32 on a graph of fp16/bf16 weights (a copy
    of a half-precision file is half precision); two quantized labels keep the declared (more specific) one.
    """
    got = detect(path)
    if declared not in FLOAT and got.label in FLOAT:
        raise LoadError(f"the build changed nothing: declared {declared}, but the graph holds {got.evidence} "
                        "(weights inside If/Loop bodies or an op the quantizer skips?)")
    if declared in ("fp16", "bf16") and got.label == "fp32":
        raise LoadError(f"the build changed nothing: declared {declared}, but the graph holds {got.evidence}")
    if declared in FLOAT and got.label not in FLOAT:
        return got.label, got.evidence
    if declared == "fp32" and got.label in ("fp16", "bf16"):
        return got.label, got.evidence
    return declared, got.evidence
