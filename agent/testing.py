"""Helpers for tests and benchmarks: small real ONNX models and zoos built from them.

Needs the ``build`` extra (onnx). Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


async def until(pred: Callable[[], bool], within_s: float = 5.0, step_s: float = 0.002) -> None:
    """Poll ``pred`` on the event loop until it holds; AssertionError after ``within_s`` (a bound on a
    wait, not a timing assertion)."""
    end = time.monotonic() + within_s
    while not pred():
        if time.monotonic() >= end:
            raise AssertionError(f"condition not met within {within_s:g} s")
        await asyncio.sleep(step_s)


def make_mlp(path: Path, in_features: int = 256, hidden: int = 512, out_features: int = 64, seed: int = 0) -> Path:
    """A 2-layer MLP ``y = relu(x W1 + b1) W2 + b2`` with input ``x: [batch, in_features]`` float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((in_features, hidden)) / np.sqrt(in_features)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, out_features)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (rng.standard_normal(out_features) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y0"]),
        helper.make_node("Add", ["y0", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_features])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def quantize_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


def make_tensor_zoo(zoo: Path, name: str = "mlp", in_features: int = 256, hidden: int = 512,
                    out_features: int = 64) -> Any:
    """A zoo folder with one tensor model and fp32 + int8 variants (int8 built by ORT's quantizer)."""
    from agent.zoo.manifest import Manifest, TensorSpec, Variant, save_manifest, sha256_file

    folder = zoo / name
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = make_mlp(folder / "fp32.onnx", in_features, hidden, out_features)
    int8 = quantize_int8(fp32, folder / "int8.onnx")
    inputs = (TensorSpec("x", "float32", ("batch", in_features)),)
    outputs = (TensorSpec("y", "float32", ("batch", out_features)),)
    variants = tuple(
        Variant(id=vid, file=p.name, precision=vid, derived_from=src, method=meth, sha256=sha256_file(p),
                size_bytes=p.stat().st_size)
        for vid, p, src, meth in (("fp32", fp32, "source", "onnx.helper"), ("int8", int8, "fp32", "quantize_dynamic"))
    )
    m = Manifest(name=name, kind="tensor", reference="fp32", inputs=inputs, outputs=outputs,
                 variants=variants, folder=folder)
    save_manifest(m)
    return m


def copy_zoo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def set_serving(model_folder: Path, **serving: Any) -> Any:
    """Rewrite a model's manifest with a ``[serving]`` table (batching, response cache)."""
    from dataclasses import replace

    from agent.zoo.manifest import ServingConfig, load_manifest, save_manifest

    m = replace(load_manifest(model_folder), serving=ServingConfig(**serving))
    save_manifest(m)
    return load_manifest(model_folder)


def make_causal_lm_zoo(zoo: Path, name: str, folders: dict[str, Path], llm: dict[str, Any],
                       max_batch: int = 1) -> Path:
    """``zoo/name``: a causal-lm model whose variants are builder output folders (``model.onnx``,
    ``tokenizer.json``; files hard-linked when possible), the first one the reference; ``max_batch`` > 1
    turns continuous batching on (``[serving]``)."""
    import os

    from agent.zoo.manifest import Manifest, ServingConfig, TensorSpec, Variant, save_manifest, sha256_file

    folder = zoo / name
    vs: list[Variant] = []
    for vid, src in folders.items():
        (folder / vid).mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file():
                try:
                    os.link(f, folder / vid / f.name)
                except OSError:
                    shutil.copy2(f, folder / vid / f.name)
        m = folder / vid / "model.onnx"
        vs.append(Variant(id=vid, file=f"{vid}/model.onnx", precision=vid.split("-")[0],
                          derived_from="source" if not vs else vs[0].id, method="onnxruntime_genai.models.builder",
                          sha256=sha256_file(m), size_bytes=m.stat().st_size))
    save_manifest(Manifest(name=name, kind="causal-lm", reference=vs[0].id,
                           inputs=(TensorSpec("input_ids", "int64", ("batch", "seq")),),
                           outputs=(TensorSpec("logits", "float32", ("batch", "seq", int(llm["vocab_size"]))),),
                           variants=tuple(vs), folder=folder, description=f"{name} (builder graphs)", llm=dict(llm),
                           serving=ServingConfig(max_batch=max_batch)))
    return folder
