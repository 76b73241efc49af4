"""Small real ONNX models and recipes made in the tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def make_mlp(path: Path, d_in: int = 256, hidden: int = 512, d_out: int = 10, seed: int = 0) -> Path:
    """An MLP (MatMul/Add/Relu x3) big enough for the quantizers to act on."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    dims = [d_in, hidden, hidden, d_out]
    nodes, inits = [], []
    cur = "x"
    for i in range(3):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        b = (rng.standard_normal(dims[i + 1]) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [cur, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
        out = "y" if i == 2 else f"a{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out if i == 2 else f"z{i}"], name=f"add{i}"))
        if i < 2:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out], name=f"relu{i}"))
        cur = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", d_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_conv_net(path: Path, opset: int = 12, seed: int = 0) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> MatMul at a given default-domain opset (x: [batch, 3,
    16, 16] -> y: [batch, 10]); weights large enough for the quantizers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 3, 3, 3)) * 0.3).astype(np.float32), "cw"),
             numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(np.float32), "cb"),
             numpy_helper.from_array((rng.standard_normal((32, 64)) / 6).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((64, 10)) / 8).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w1"], ["h"], name="matmul1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
             helper.make_node("MatMul", ["hr", "w2"], ["y"], name="matmul2")]
    graph = helper.make_graph(
        nodes, "convnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_custom_op_model(path: Path) -> Path:
    """A valid ONNX file whose only node is an op of a custom domain no provider implements."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FrobnicateXYZ", ["x"], ["y"], domain="com.example.nothing", name="frob")
    graph = helper.make_graph([node], "custom",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example.nothing", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


LADDER = """
[[variants]]
id = "fp32"
method = "copy"

[[variants]]
id = "fp16"
method = "fp16"

[[variants]]
id = "int8"
method = "int8-dynamic"

[[variants]]
id = "int8-qdq"
method = "int8-static"

[[variants]]
id = "int4"
method = "matmul-nbits"
[variants.params]
bits = 4
block_size = 32

[[variants]]
id = "w8"
method = "matmul-nbits"
[variants.params]
bits = 8

[[variants]]
id = "mixed"
method = "mixed"
[variants.params]
sensitive_fraction = 0.34

[[variants]]
id = "pruned50"
method = "magnitude-prune"
[variants.params]
sparsity = 0.5
"""


def write_recipe(folder: Path, model: Path, *, name: str = "mlp", variants: str = LADDER,
                 extra: str = "", sha: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = f"""schema = 1
name = "{name}"
kind = "tensor"
reference = "fp32"
description = "tiny MLP made in the test"

[source]
format = "onnx"
path = "{model}"
sha256 = "{sha or sha256(model)}"
{variants}
[eval]
data = "random"
count = 24
calibration = 8
metric = "top1"

[measure]
runs = 20
warmup = 2
{extra}"""
    p = folder / "recipe.toml"
    p.write_text(text)
    return p
