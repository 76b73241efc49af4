"""Dynamic batching of tensor requests: per-request outputs equal unbatched ones, swaps lose nothing."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from agent.ipc import protocol as P
from agent.runtime.manager import Runtime
from agent.zoo.manifest import load_zoo


def _session(zoo, vid):
    return ort.InferenceSession(str(zoo / "mlp" / f"{vid}.onnx"), providers=["CPUExecutionProvider"])


def _req(x):
    descs, bufs = P.tensor_descs({"x": x})
    return descs, memoryview(bytes(bufs[0]))


def _serve_all(models, xs, variant="fp32", model="mlp"):
    """Submit every request at once to an in-process runtime: (results, the model's status after)."""
    async def go():
        rt = Runtime(models, spare_workers=0)
        try:
            await rt.swap(model, variant)
            return await asyncio.gather(*(rt.infer(model, *_req(x)) for x in xs)), rt.status()[model]
        finally:
            await rt.close()
    return asyncio.run(go())


def test_batched_outputs_equal_unbatched_outputs_per_request(batch_zoo):
    models, _ = load_zoo(batch_zoo)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1 + i % 3, 256)).astype(np.float32) for i in range(12)]
    ref = _session(batch_zoo, "fp32")
    expect = [ref.run(None, {"x": x})[0] for x in xs]

    results, status = _serve_all(models, xs)
    assert max(r.batch for r in results) > 1, [r.batch for r in results]
    for x, r, want in zip(xs, results, expect, strict=True):
        (got,) = P.tensors_from(r.outputs, memoryview(r.data)).values()
        assert got.shape == (x.shape[0], 64)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert r.variant == "fp32"
    b = status["batching"]
    assert b["batches"] >= 1 and b["max_batch_seen"] > 1 and b["queued"] == 0
    assert b["batched_requests"] >= 2


def test_a_batch_never_holds_more_rows_than_max_batch(batch_zoo):
    models, _ = load_zoo(batch_zoo)
    xs = [np.full((3, 256), i, np.float32) for i in range(10)]

    results, _ = _serve_all(models, xs)
    assert all(r.batch * 3 <= 8 for r in results)   # 3 rows each: at most 2 per batch of 8 rows
    assert any(r.batch == 2 for r in results)


def test_requests_with_different_trailing_shapes_are_batched_apart(tensor_zoo_src, tmp_path):
    """A model with a second free dim: requests stack only with requests of the same trailing shape."""
    import onnx
    from onnx import TensorProto, helper

    from agent.testing import set_serving
    from agent.zoo.manifest import Manifest, TensorSpec, Variant, save_manifest, sha256_file

    folder = tmp_path / "zoo" / "scale"
    folder.mkdir(parents=True)
    g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "scale",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
                          [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(folder / "fp32.onnx"))
    save_manifest(Manifest("scale", "tensor", "fp32", (TensorSpec("x", "float32", ("batch", "n")),),
                           (TensorSpec("y", "float32", ("batch", "n")),),
                           (Variant("fp32", "fp32.onnx", "fp32", sha256=sha256_file(folder / "fp32.onnx")),), folder))
    set_serving(folder, max_batch=16, max_queue_delay_ms=5.0)
    models, errs = load_zoo(tmp_path / "zoo")
    assert not errs
    xs = [np.arange(n * 2, dtype=np.float32).reshape(2, n) + i for i in range(6) for n in (3, 5)]

    results, _ = _serve_all(models, xs, model="scale")
    for x, r in zip(xs, results, strict=True):
        (got,) = P.tensors_from(r.outputs, memoryview(r.data)).values()
        np.testing.assert_array_equal(got, x * 2)
    # (no assert on batch sizes here: which requests meet in a queue depends on timing)


def test_large_and_small_requests_share_one_worker_correctly(tensor_zoo):
    """The shared-memory token: 1 MB inputs wait for it, small ones go inline meanwhile."""
    models, _ = load_zoo(tensor_zoo)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(((1024 if i % 3 == 0 else 1 + i % 4), 256)).astype(np.float32) for i in range(15)]
    ref = _session(tensor_zoo, "fp32")

    results, _ = _serve_all(models, xs)
    for x, r in zip(xs, results, strict=True):
        (got,) = P.tensors_from(r.outputs, memoryview(r.data)).values()
        np.testing.assert_allclose(got, ref.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_swaps_in_the_middle_of_batched_load_lose_nothing(batch_zoo, tmp_path):
    from tests.conftest import start_daemon

    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1 + i % 2, 256)).astype(np.float32) for i in range(8)]
    ref = {vid: [_session(batch_zoo, vid).run(None, {"x": x})[0] for x in xs] for vid in ("fp32", "int8")}
    d = start_daemon(batch_zoo, tmp_path)
    stop = threading.Event()
    failures: list[str] = []
    mismatches: list[str] = []
    batches: list[int] = []
    seen = {"fp32": 0, "int8": 0}

    def load(seed: int) -> None:
        with d.client() as c:
            i = seed
            while not stop.is_set():
                k = i % len(xs)
                try:
                    r = c.infer("mlp", {"x": xs[k]})
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))
                    continue
                seen[r.variant] += 1
                batches.append(int(r.extra.get("batch", 1)))
                if not np.allclose(r.outputs["y"], ref[r.variant][k], rtol=1e-5, atol=1e-5):
                    mismatches.append(f"request {i} on {r.variant} (batch {r.extra.get('batch')})")
                i += 1

    threads = [threading.Thread(target=load, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    try:
        with d.client() as admin:
            for n in range(12):
                assert admin.pin("mlp", "int8" if n % 2 == 0 else "fp32")["changed"] is True
                time.sleep(0.05)
            status = admin.status()["models"]["mlp"]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        d.stop()
    assert failures == []
    assert mismatches == []
    assert seen["fp32"] > 0 and seen["int8"] > 0
    assert max(batches) > 1, "six clients never shared a run"
    assert status["batching"]["batches"] > 0


def test_a_variant_whose_rows_depend_on_their_batch_is_served_unbatched(batch_zoo):
    """Dynamic int8 quantization scales activations per batch: stacking would change each request's outputs."""
    models, _ = load_zoo(batch_zoo)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((1, 256)).astype(np.float32) * (1 + 10 * (i % 2)) for i in range(8)]
    ref = _session(batch_zoo, "int8")

    results, status = _serve_all(models, xs, "int8")
    assert status["batching"]["active_variant_batches"] is False
    assert all(r.batch == 1 for r in results)
    for x, r in zip(xs, results, strict=True):
        (got,) = P.tensors_from(r.outputs, memoryview(r.data)).values()
        np.testing.assert_allclose(got, ref.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_requests_of_a_batch_whose_worker_died_are_retried_once_and_all_answered(batch_zoo):
    models, _ = load_zoo(batch_zoo)
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((1, 256)).astype(np.float32) for _ in range(10)]
    ref = _session(batch_zoo, "fp32")

    async def go():
        rt = Runtime(models, spare_workers=0, backoff=(0.01, 0.1))
        try:
            await rt.swap("mlp", "fp32")
            h = rt.slots["mlp"].active
            tasks = [asyncio.ensure_future(rt.infer("mlp", *_req(x))) for x in xs]
            await asyncio.sleep(0)   # all submitted: one runs, the rest queue for the next batch
            h._transport.writelines(P.encode(P.request(None, "crash", {})))
            results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            return results, rt.slots["mlp"].active is not h
        finally:
            await rt.close()

    results, restarted = asyncio.run(go())
    assert restarted
    assert any(r.retried for r in results)
    for x, r in zip(xs, results, strict=True):
        (got,) = P.tensors_from(r.outputs, memoryview(r.data)).values()
        np.testing.assert_allclose(got, ref.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
