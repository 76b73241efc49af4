"""Precision is read from the graph: quantized ops, weight dtypes, subgraphs; a build that changes nothing fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.errors import LoadError
from agent.zoo.precision import detect, verify

D = 64


def _model(nodes, inits, graph_inputs=None, opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", graph_inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, D])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def fp32_matmul() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((D, D)).astype(np.float32), "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [w])


def int8_cast_mul() -> onnx.ModelProto:
    """int8 weights dequantized by Cast + Mul (what some exporters write instead of DequantizeLinear)."""
    q = numpy_helper.from_array(np.random.default_rng(0).integers(-127, 127, (D, D)).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "scale")
    return _model([helper.make_node("Cast", ["wq"], ["wf"], to=TensorProto.FLOAT),
                   helper.make_node("Mul", ["wf", "scale"], ["w"]),
                   helper.make_node("MatMul", ["x", "w"], ["y"])], [q, scale])


def weights_inside_if(dtype=np.float32) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((D, D), dtype), "w_in_branch")
    branch = helper.make_graph([helper.make_node("MatMul", ["x", "w_in_branch"], ["yb"])], "then", [],
                               [helper.make_tensor_value_info("yb", TensorProto.FLOAT, [1, D])], [w])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["yo"])], "else", [],
                              [helper.make_tensor_value_info("yo", TensorProto.FLOAT, [1, D])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    return _model([helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)], [cond])


def test_fp32_and_fp16_weights():
    assert detect(fp32_matmul()).label == "fp32"
    m = fp32_matmul()
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((D, D), np.float16), "w"))
    assert detect(m).label == "fp16"


def test_int8_weights_dequantized_by_cast_and_mul_are_int8_not_fp32():
    p = detect(int8_cast_mul())
    assert p.label == "int8" and "int8" in p.evidence


def test_weights_inside_an_if_subgraph_are_seen():
    m = weights_inside_if()
    assert detect(m).weight_bytes == {"float": D * D * 4}
    assert detect(weights_inside_if(np.int8)).label == "int8"


def test_dynamic_quantization_is_int8_even_inside_subgraphs(tmp_path: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(fp32_matmul(), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    p = detect(tmp_path / "q.onnx")
    assert p.label == "int8" and p.quant_ops


def test_a_quantizing_build_that_changed_nothing_fails_with_the_evidence(tmp_path: Path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx.save(weights_inside_if(), tmp_path / "if.onnx")
    quantize_dynamic(str(tmp_path / "if.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8)
    if detect(tmp_path / "q.onnx").label == "int8":
        pytest.skip("this onnxruntime quantizes inside If bodies; the check is covered below")
    with pytest.raises(LoadError, match="changed nothing: declared int8"):
        verify("int8", tmp_path / "q.onnx")


def test_verify_keeps_honest_labels_and_corrects_a_float_label(tmp_path: Path):
    onnx.save(fp32_matmul(), tmp_path / "f.onnx")
    onnx.save(int8_cast_mul(), tmp_path / "q.onnx")
    with pytest.raises(LoadError, match="changed nothing"):
        verify("int8", tmp_path / "f.onnx")
    with pytest.raises(LoadError, match="changed nothing: declared fp16"):
        verify("fp16", tmp_path / "f.onnx")
    assert verify("fp32", tmp_path / "q.onnx")[0] == "int8"      # a copy of an int8 file is int8
    assert verify("mixed", tmp_path / "q.onnx")[0] == "mixed"    # quantized either way: the builder's word


def test_a_half_precision_file_declared_fp32_is_labelled_by_its_weights(tmp_path: Path):
    half = fp32_matmul()
    half.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((D, D), np.float16), "w"))
    onnx.save(half, tmp_path / "h.onnx")
    label, evidence = verify("fp32", tmp_path / "h.onnx")    # e.g. method "copy" of a file that is really fp16
    assert label == "fp16" and "float16" in evidence
    assert verify("fp16", tmp_path / "h.onnx")[0] == "fp16"


def test_matmulnbits_bits_decide_int4_or_int8(tmp_path: Path):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    m = fp32_matmul()
    q = MatMulNBitsQuantizer(m, block_size=32, is_symmetric=True, bits=4)
    q.process()
    assert detect(q.model.model).label == "int4"


def test_not_an_onnx_file_is_a_clear_error(tmp_path: Path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(LoadError, match="not an ONNX model"):
        detect(tmp_path / "junk.onnx")
