"""The onnx backend's one-thread twin session (agent.runtime.backends.onnx): opened, timed against the
intra-op pool at load, kept only when it measured faster, and then used for requests no larger than the
warm-up inputs; larger ones (batches, 1 MB inputs) stay on the pool session."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from agent.ipc import protocol as P
from agent.runtime.backends import Call, create
from agent.runtime.backends import onnx as onnx_backend
from agent.runtime.manager import Runtime
from agent.zoo.manifest import Manifest, load_zoo


class Frames:
    def send(self, header: dict[str, Any], bufs: list[Any] | None = None) -> None:
        pass


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    from agent.testing import make_tensor_zoo

    root = tmp_path_factory.mktemp("one-thread-zoo")
    make_tensor_zoo(root, "mlp", in_features=16, hidden=32, out_features=4)
    models, errors = load_zoo(root)
    assert not errors
    return models["mlp"]


def _load(m: Manifest, threads: int | None) -> tuple[Any, dict[str, Any]]:
    params = Runtime({m.name: m}, warmup_runs=1, threads=threads)._load_params(m, m.variant("fp32"), "cpu")
    b = create("onnx", m.kind)
    return b, b.load(params, Frames())


def _call(x: np.ndarray) -> Call:
    descs, bufs = P.tensor_descs({"x": x})
    return Call(1, "run", {"inputs": descs}, memoryview(b"".join(bytes(b) for b in bufs)))


def _y(reply: Any) -> np.ndarray:
    result, bufs = reply
    return P.tensors_from(result["outputs"], memoryview(b"".join(bytes(b) for b in bufs)))["y"]


class Counting:
    """An ORT session that counts its runs (which session served a request)."""

    def __init__(self, sess: Any) -> None:
        self.sess, self.runs = sess, 0

    def run(self, *a: Any, **kw: Any) -> Any:
        self.runs += 1
        return self.sess.run(*a, **kw)


def test_the_twin_is_measured_at_load_and_said_in_the_load_info(mlp: Manifest) -> None:
    b, info = _load(mlp, None)
    try:
        one = info["one_thread"]
        assert one["one_thread_ms"] > 0 and one["pool_ms"] > 0
        assert one["used"] is (one["ratio"] <= onnx_backend.ONE_THREAD_GAIN) and one["ratio"] > 0
        assert (b.one is not None) is one["used"]
        assert one["max_input_bytes"] == (16 * 4 if one["used"] else 0)   # one 1x16 float32 row
    finally:
        b.close()


def test_small_requests_go_to_the_twin_larger_ones_to_the_pool_with_the_same_outputs(
        mlp: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_backend, "ONE_THREAD_GAIN", 1e9)   # keep it whatever the timing said
    ref = ort.InferenceSession(str(mlp.path_of(mlp.variant("fp32"))), providers=["CPUExecutionProvider"])
    b, info = _load(mlp, None)
    try:
        assert info["one_thread"]["used"] is True
        b.one, b.sess = Counting(b.one), Counting(b.sess)
        rng = np.random.default_rng(3)
        small, large = (rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 8))
        for x, who in ((small, b.one), (large, b.sess), (small, b.one)):
            before = who.runs
            y = _y(b.run(_call(x)))
            assert who.runs == before + 1
            np.testing.assert_allclose(y, ref.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)
        assert (b.one.runs, b.sess.runs) == (2, 1)
    finally:
        b.close()


def test_a_twin_that_is_not_faster_is_dropped(mlp: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_backend, "ONE_THREAD_GAIN", 0.0)
    b, info = _load(mlp, None)
    try:
        assert info["one_thread"]["used"] is False and b.one is None
        assert _y(b.run(_call(np.ones((1, 16), np.float32)))).shape == (1, 4)
    finally:
        b.close()


@pytest.mark.parametrize("threads, cap, why", [(1, None, "one thread already"), (None, 0, "variant over")])
def test_no_twin_when_the_variant_runs_on_one_thread_or_is_too_large(
        mlp: Manifest, monkeypatch: pytest.MonkeyPatch, threads: int | None, cap: int | None, why: str) -> None:
    if cap is not None:
        monkeypatch.setattr(onnx_backend, "ONE_THREAD_MAX_FILE", cap)
    b, info = _load(mlp, threads)
    try:
        assert info["one_thread"]["used"] is False and why in info["one_thread"]["why"] and b.one is None
    finally:
        b.close()


def test_an_unclear_timing_is_taken_again_and_a_clear_one_decides(mlp: Manifest,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The timing is the only input from the machine here, so it is the part faked: ratios between 0.9
    and 1/0.9 (another worker loading blurs them) are timed again, up to ONE_THREAD_ATTEMPTS times."""
    for ratios, attempts, used in (([0.95, 0.97, 0.5], 3, True), ([1.05, 1.5], 2, False),
                                   ([0.95, 0.95, 0.95], 3, False), ([0.6], 1, True)):
        seq = iter(ratios)
        monkeypatch.setattr(onnx_backend.OnnxBackend, "_time_both",
                            lambda self, sess, one, feed, seq=seq: (0.01, 0.02, next(seq)))
        b, info = _load(mlp, None)
        try:
            assert (info["one_thread"]["attempts"], info["one_thread"]["used"]) == (attempts, used), ratios
            assert (b.one is not None) is used
        finally:
            b.close()
