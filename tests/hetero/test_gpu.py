"""GPU paths (``-m gpu``): tensor and LLM workers on a GPU EP, CPU<->GPU swaps under load, memory returned.

Needs the ``gpu`` extra (onnxruntime-gpu) on a machine where ONNX Runtime lists a GPU EP device; anywhere
else every test here skips and says what ONNX Runtime does list. Run: ``scripts/test -m gpu tests/hetero``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.ipc import protocol as P
from agent.runtime import devices as D
from agent.runtime.manager import Runtime
from agent.zoo.manifest import load_zoo

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu() -> D.Device:
    devs = D.available()
    g = [d for d in devs if d.kind == "gpu"]
    if not g:
        pytest.skip(f"no GPU execution provider lists a device here (ONNX Runtime sees: {D.describe(devs)}); "
                    "install the gpu extra (onnxruntime-gpu) on a machine with a GPU")
    return D.select("gpu", devs)


def _infer(rt: Runtime, x: np.ndarray):  # type: ignore[no-untyped-def]
    descs, bufs = P.tensor_descs({"x": x})
    return rt.infer("mlp", descs, memoryview(b"".join(bytes(b) for b in bufs)))


def _gpu_used_bytes(pid: int | None = None) -> int | None:
    """GPU memory in use (by ``pid`` when given) from NVML; None where NVML is absent."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        if pid is None:
            return int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
        return sum(int(p.usedGpuMemory or 0) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h) if p.pid == pid)
    finally:
        pynvml.nvmlShutdown()


def test_tensor_variant_loads_and_infers_on_the_gpu_and_reports_its_provider(gpu, tensor_zoo):
    import onnxruntime as ort

    models, _ = load_zoo(tensor_zoo)
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    ref = ort.InferenceSession(str(tensor_zoo / "mlp" / "fp32.onnx"), providers=["CPUExecutionProvider"])

    async def go() -> None:
        rt = Runtime(models, spare_workers=0)
        try:
            res = await rt.swap("mlp", "fp32", "gpu")
            assert gpu.provider in res["providers"]
            r = await _infer(rt, x)
            y = np.frombuffer(bytes(r.data), np.float32).reshape(4, 64)
            np.testing.assert_allclose(y, ref.run(None, {"x": x})[0], rtol=1e-2, atol=1e-2)   # TF32 matmuls
            assert r.device == "gpu" and gpu.provider in r.providers
            st = rt.status()["mlp"]["active"]
            assert st["assignment"].get(gpu.provider, 0) > 0
        finally:
            await rt.close()

    asyncio.run(go())


def test_swapping_cpu_and_gpu_under_load_loses_no_request(gpu, tensor_zoo):
    models, _ = load_zoo(tensor_zoo)
    x = np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)

    async def go() -> None:
        rt = Runtime(models, spare_workers=1)
        await rt.start({"mlp": ("fp32", "cpu")})
        failures: list[str] = []
        devices: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    r = await _infer(rt, x)
                    devices.append(r.device)
                except Exception as e:  # noqa: BLE001 - every failure counts
                    failures.append(repr(e))
                await asyncio.sleep(0)

        tasks = [asyncio.ensure_future(load()) for _ in range(3)]
        try:
            for i in range(10):
                await rt.swap("mlp", "fp32", "gpu" if i % 2 == 0 else "cpu", {"why": "test"})
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await rt.close()
        assert failures == [] and {"cpu", "gpu"} <= set(devices)

    asyncio.run(go())


def test_gpu_memory_is_returned_when_the_gpu_variant_is_unloaded(gpu, tensor_zoo):
    if _gpu_used_bytes() is None:
        pytest.skip("NVML (nvidia-ml-py, in the gpu extra) is not available to read GPU memory")
    models, _ = load_zoo(tensor_zoo)

    async def go() -> None:
        rt = Runtime(models, spare_workers=0)
        try:
            base = _gpu_used_bytes()
            await rt.swap("mlp", "fp32", "gpu")
            pid = rt.slots["mlp"].active.pid
            held = _gpu_used_bytes(pid)
            assert held and held > 0, "the GPU worker holds no GPU memory?"
            await rt.swap("mlp", "fp32", "cpu")           # the GPU worker drains and exits
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _gpu_used_bytes(pid):  # noqa: ASYNC110 - polls nvidia-smi
                await asyncio.sleep(0.1)
            assert _gpu_used_bytes(pid) == 0
            after = _gpu_used_bytes()
            assert base is not None and after is not None and after <= base + (64 << 20)
        finally:
            await rt.close()

    asyncio.run(go())


def test_llm_worker_generates_on_the_gpu(gpu, tmp_path: Path):
    from tests.serving.tinyzoo import MODEL, make_tiny_llm_zoo

    make_tiny_llm_zoo(tmp_path / "zoo")
    models, errors = load_zoo(tmp_path / "zoo")
    assert not errors

    async def go() -> None:
        rt = Runtime(models, spare_workers=0)
        try:
            res = await rt.swap(MODEL, models[MODEL].reference, "gpu")
            assert gpu.provider in res["providers"]
            toks: list[str] = []
            out = await rt.generate(MODEL, {"prompt": "Hello", "max_tokens": 8}, lambda t: toks.append(t["text"]))
            assert out["device"] == "gpu" and out["usage"]["completion_tokens"] == 8
            assert gpu.provider in rt.status()[MODEL]["active"]["providers"]
        finally:
            await rt.close()

    asyncio.run(go())


def test_cpu_and_gpu_workers_serve_side_by_side_threads(gpu, tensor_zoo):
    """Two runtimes (two models' worth of workers), one on each device, under concurrent load."""
    models, _ = load_zoo(tensor_zoo)
    errors: list[str] = []

    def one(device: str) -> None:
        async def go() -> None:
            rt = Runtime(models, spare_workers=0)
            try:
                await rt.swap("mlp", "int8" if device == "cpu" else "fp32", device)
                for _ in range(50):
                    r = await _infer(rt, np.ones((1, 256), np.float32))
                    if r.device != device:
                        errors.append(r.device)
            finally:
                await rt.close()
        try:
            asyncio.run(go())
        except Exception as e:  # noqa: BLE001 - every failure counts
            errors.append(repr(e))

    ts = [threading.Thread(target=one, args=(d,)) for d in ("cpu", "gpu")]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert errors == []
