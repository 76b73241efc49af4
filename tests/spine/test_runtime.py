"""Runtime behaviour in process (real workers, injected memory probe)."""

import asyncio

import numpy as np
import pytest

from agent.errors import LoadError, NotFound
from agent.ipc import protocol as P
from agent.runtime.manager import Runtime
from agent.zoo.manifest import load_zoo


def _run(coro):
    return asyncio.run(coro)


def test_load_is_refused_with_a_reason_when_the_variant_does_not_fit(tensor_zoo):
    models, _ = load_zoo(tensor_zoo)

    async def go():
        rt = Runtime(models, memory_probe=lambda: 300 << 20, headroom_bytes=256 << 20, spare_workers=0)
        try:
            with pytest.raises(LoadError) as e:
                await rt.swap("mlp", "fp32", "cpu")
            assert "needs ~" in str(e.value) and "available" in str(e.value)
            assert rt.slots["mlp"].states["fp32"].status == "failed"
            assert rt.slots["mlp"].active is None
        finally:
            await rt.close()

    _run(go())


def test_insufficient_memory_keeps_the_current_variant_serving(tensor_zoo):
    models, _ = load_zoo(tensor_zoo)
    free = {"bytes": 8 << 30}

    async def go():
        rt = Runtime(models, memory_probe=lambda: free["bytes"], spare_workers=0)
        try:
            await rt.swap("mlp", "fp32", "cpu")
            free["bytes"] = 100 << 20
            with pytest.raises(LoadError, match="refusing to load"):
                await rt.swap("mlp", "int8", "cpu")
            descs, bufs = P.tensor_descs({"x": np.ones((1, 256), np.float32)})
            r = await rt.infer("mlp", descs, memoryview(bytes(bufs[0])))
            assert r.variant == "fp32"
        finally:
            await rt.close()

    _run(go())


def test_estimate_uses_measured_peak_rss_when_the_manifest_has_it(tensor_zoo):
    from dataclasses import replace

    from agent.zoo.manifest import Measurement

    models, _ = load_zoo(tensor_zoo)
    m = models["mlp"]
    v = replace(m.variant("fp32"), measurements=(Measurement(device="cpu", peak_rss_bytes=123_456_789),))
    rt = Runtime(models)
    size = m.variant("fp32").size_bytes
    twin = 2 * size   # a small CPU tensor variant may keep a one-thread twin session (backends.onnx)
    assert rt.estimate_bytes(m, v, "cpu") == 123_456_789 + twin
    assert rt.estimate_bytes(m, m.variant("fp32"), "cpu") > size + twin


def test_unknown_device_fails_the_load_and_never_falls_back(tensor_zoo):
    models, _ = load_zoo(tensor_zoo)

    async def go():
        rt = Runtime(models, spare_workers=0)
        try:
            with pytest.raises(NotFound, match="no device matches 'npu'; available: cpu:CPUExecutionProvider"):
                await rt.swap("mlp", "fp32", "npu")   # refused before any worker is asked to load
            assert rt.slots["mlp"].states.get("fp32") is None
            with pytest.raises(NotFound):
                await rt.swap("mlp", "fp64", "cpu")
        finally:
            await rt.close()

    _run(go())


def test_swap_reports_assignment_of_nodes_to_providers(tensor_zoo):
    models, _ = load_zoo(tensor_zoo)
    events = []

    async def go():
        rt = Runtime(models, spare_workers=0, emit=events.append)
        try:
            await rt.swap("mlp", "int8", "cpu", {"why": "test"})
        finally:
            await rt.close()

    _run(go())
    (ev,) = [e for e in events if e["event"] == "swap"]
    assert ev["assignment"].get("CPUExecutionProvider", 0) > 0
    assert ev["reason"] == {"why": "test"} and ev["to"] == "int8" and ev["from"] is None


def test_close_while_a_spare_worker_is_starting_leaves_no_worker_running(tensor_zoo):
    """A swap takes the pre-spawned spare and starts its replacement; closing right away cancels that
    start, which must still end the half-started worker. (When the replacement's start already finished
    before close(), this passes either way; test_handle_reaping checks the cancelled spawn itself.)"""
    import time

    import psutil

    models, _ = load_zoo(tensor_zoo)
    me = psutil.Process()

    async def go() -> None:
        before = {p.pid for p in me.children()}
        rt = Runtime(models, spare_workers=1)
        try:
            await rt.start({"mlp": ("fp32", "cpu")})
            await rt.swap("mlp", "int8", "cpu")
        finally:
            await rt.close()
        left = [p for p in me.children() if p.pid not in before]
        end = time.monotonic() + 30
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left):
            assert time.monotonic() < end, [(p.pid, p.cmdline()) for p in left if p.is_running()]
            await asyncio.sleep(0.05)

    asyncio.run(go())
