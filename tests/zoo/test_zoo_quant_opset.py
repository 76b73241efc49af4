"""Per-channel int8 on an old-opset model: the builder raises the opset (per-axis Q/DQ needs 13) or says why
it cannot; the result loads in onnxruntime and is labelled int8 from its graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from zoo_helpers import make_conv_net, write_recipe

from agent.errors import BuildError
from agent.zoo.build.quant import default_opset, upgrade_opset
from agent.zoo.build.registry import BuildContext, BuildResult, register_builder
from agent.zoo.build.runner import build_recipe
from agent.zoo.manifest import load_manifest
from agent.zoo.precision import detect
from agent.zoo.recipe import load_recipe

LADDER = """
[[variants]]
id = "fp32"
method = "copy"

[[variants]]
id = "qdq-pc"
method = "int8-static"
[variants.params]
per_channel = true

[[variants]]
id = "dyn-pc"
method = "int8-dynamic"
[variants.params]
per_channel = true
"""


class _Feeds:
    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self._it = iter([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


@register_builder("test-raw-qdq-per-channel", precision="int8")
def _raw_qdq(ctx: BuildContext) -> BuildResult:
    """quantize_static per channel without the opset check: the graph the issue saw."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    quantize_static(str(ctx.input_path), str(ctx.out_dir / "model.onnx"), _Feeds(), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    return BuildResult("model.onnx")


def test_ort_alone_writes_an_invalid_per_channel_graph_at_opset_12(tmp_path: Path) -> None:
    """What the builder guards against (if this onnxruntime fixed it, the guard is merely unneeded)."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    src = make_conv_net(tmp_path / "m12.onnx", opset=12)
    quantize_static(str(src), str(tmp_path / "q.onnx"), _Feeds(), quant_format=QuantFormat.QDQ, per_channel=True)
    try:
        ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT's InvalidGraph
        assert "axis" in str(e) and "DequantizeLinear" in str(e)
    else:
        pytest.skip("this onnxruntime raises the opset itself")


def test_per_channel_builds_of_an_opset_12_model_load_and_are_int8(tmp_path: Path) -> None:
    src = make_conv_net(tmp_path / "m12.onnx", opset=12)
    p = write_recipe(tmp_path / "r", src, name="conv", variants=LADDER)
    m, reports = build_recipe(load_recipe(p), tmp_path / "zoo")
    assert [r.action for r in reports] == ["built"] * 3
    m = load_manifest(tmp_path / "zoo" / "conv")
    static = m.variant("qdq-pc")
    assert static.precision == "int8" and static.build["info"]["opset_upgraded"] == "12 -> 13"
    model = onnx.load(str(m.path_of(static)))
    assert default_opset(model) >= 13
    assert any(n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
               for n in model.graph.node)                             # really per channel
    ort.InferenceSession(str(m.path_of(static)), providers=["CPUExecutionProvider"])
    assert static.measurements and static.quality and static.quality.relative > 0.5
    # dynamic per-channel needs no per-axis DequantizeLinear: the model keeps its opset and loads
    dyn = m.variant("dyn-pc")
    assert dyn.precision == "int8" and "opset_upgraded" not in (dyn.build.get("info") or {})
    assert default_opset(onnx.load(str(m.path_of(dyn)))) == 12 and dyn.measurements
    assert detect(m.path_of(dyn)).label == "int8"
    assert src.read_bytes() == make_conv_net(tmp_path / "again.onnx", opset=12).read_bytes()   # source untouched


def test_an_opset_13_model_is_not_converted(tmp_path: Path) -> None:
    src = make_conv_net(tmp_path / "m13.onnx", opset=13)
    v = LADDER.split("[[variants]]\nid = \"dyn-pc\"")[0]
    m, _ = build_recipe(load_recipe(write_recipe(tmp_path / "r", src, name="conv", variants=v)), tmp_path / "zoo")
    assert "opset_upgraded" not in m.variant("qdq-pc").build["info"] and m.variant("qdq-pc").precision == "int8"


def test_an_opset_the_converter_cannot_raise_is_a_clear_build_error() -> None:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("NoSuchOp", ["h"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 12)])
    with pytest.raises(BuildError, match=r"per-channel quantization needs opset >= 13 .* opset-12 model failed: "
                                         r".*NoSuchOp.*set per_channel = false"):
        upgrade_opset(model, 13)


def test_a_variant_onnxruntime_refuses_fails_with_the_last_ort_line_and_a_log(tmp_path: Path) -> None:
    src = make_conv_net(tmp_path / "m12.onnx", opset=12)
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "raw"\nmethod = "test-raw-qdq-per-channel"\n'
    p = write_recipe(tmp_path / "r", src, name="conv", variants=v)
    with pytest.raises(BuildError) as e:
        build_recipe(load_recipe(p), tmp_path / "zoo")
    msg, log = str(e.value), tmp_path / "zoo" / "conv" / ".build-logs" / "raw.log"
    if "measuring failed" not in msg:
        pytest.skip("this onnxruntime writes a valid per-channel graph at opset 12")
    # ORT's message is long (the temp path, the node's inputs); its cause is at the end and must survive
    assert msg.startswith(f"{p}: raw: measuring failed: onnxruntime cannot load the variant: ")
    assert "Unrecognized attribute: axis for operator DequantizeLinear" in msg and "\n" not in msg
    assert len(msg) < 900
    if " … " in msg:   # shortened: the whole message is in the log
        assert msg.endswith(f"(full cause: {log})") and "Unrecognized attribute: axis" in log.read_text()
