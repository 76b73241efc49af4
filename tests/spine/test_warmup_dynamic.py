"""Warm-up that fits the model: dynamic graphs with shape-sensitive ops load, warm up and serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.runtime.session import warm_up
from agent.zoo.importer import import_variant
from agent.zoo.manifest import load_manifest, manifest_to_toml, save_manifest
from tests.conftest import start_daemon

pytestmark = pytest.mark.integration


def reflect_pad_model(path: Path, pad: int) -> Path:
    """y = reflect-pad(x) over a symbolic time axis: onnxruntime refuses any T <= ``pad``."""
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, pad, 0, pad])
    g = helper.make_graph([helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], "pad",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T2"])], [pads])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def session(path: Path):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_guesses_grow_until_a_shape_sensitive_graph_runs(tmp_path: Path) -> None:
    sess = session(reflect_pad_model(tmp_path / "p.onnx", pad=4))
    with pytest.raises(Exception, match=r"(?i)pad"):
        sess.run(None, {"x": np.zeros((1, 1), np.float32)})     # the old guess: every symbolic dim = 1
    assert warm_up(sess, 2) == "guessed inputs (symbolic dims = 16)"


def test_samples_win_and_no_guess_that_fits_only_skips_warm_up(tmp_path: Path) -> None:
    sess = session(reflect_pad_model(tmp_path / "p.onnx", pad=600))
    assert warm_up(sess, 1).startswith("skipped: ")
    np.savez(tmp_path / "w.npz", x=np.zeros((1, 1000), np.float32))
    assert warm_up(sess, 1, tmp_path / "w.npz") == "samples w.npz"
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert warm_up(sess, 1, tmp_path / "bad.npz").startswith("skipped: samples ")


def test_agentd_loads_and_serves_dynamic_graphs_that_guessed_inputs_break(tmp_path: Path) -> None:
    zoo = tmp_path / "zoo"
    import_variant(zoo, "pad16", "fp32", reflect_pad_model(tmp_path / "a.onnx", pad=4))
    import_variant(zoo, "pad600", "fp32", reflect_pad_model(tmp_path / "b.onnx", pad=600))
    import_variant(zoo, "padsamples", "fp32", reflect_pad_model(tmp_path / "c.onnx", pad=600))
    np.savez(zoo / "padsamples" / "warmup.npz", x=np.ones((1, 1200), np.float32))
    m = load_manifest(zoo / "padsamples")
    from dataclasses import replace

    save_manifest(replace(m, warmup="warmup.npz"))
    assert manifest_to_toml(load_manifest(zoo / "padsamples"))["warmup"] == "warmup.npz"
    d = start_daemon(zoo, tmp_path)
    try:
        with d.client() as c:
            st = c.status()
            for name in ("pad16", "pad600", "padsamples"):
                assert st["models"][name]["active"] is not None, (name, st["models"][name])
            x = np.arange(2000, dtype=np.float32).reshape(1, 2000)
            for name, pad in (("pad16", 4), ("pad600", 600), ("padsamples", 600)):
                y = c.infer(name, {"x": x}).outputs["y"]
                assert y.shape == (1, 2000 + 2 * pad) and y[0, 0] == x[0, pad]
    finally:
        d.stop()
    log = d.log_text()
    assert "guessed inputs (symbolic dims = 16)" in log and "skipped: " in log and "samples warmup.npz" in log
