"""The runtime's swap, drain, restart and retry on the fake backend: real worker processes, real frames
and shared memory, real SIGKILLs; only the model is fake (agent/runtime/backends/fake.py), so each test
takes well under a second. The same behaviours on real models: test_hot_swap.py, tests/faults/."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import LoadError, WorkerDied
from agent.ipc import protocol as P
from agent.runtime.backends.fake import PROVIDER, fake_spawner
from agent.runtime.manager import Runtime
from agent.testing import until as _until
from agent.zoo.manifest import Manifest, TensorSpec, Variant

SCALE = {"fp32": 1.0, "int8": 2.0}   # the fake's output is scale x the input's row sum: it names the variant


def _manifest(folder: Path) -> Manifest:
    variants = tuple(Variant(id=v, file=f"{v}.onnx", precision=v, derived_from="source", method="fake",
                             size_bytes=1 << 20) for v in ("fp32", "int8"))
    return Manifest(name="m", kind="tensor", reference="fp32", inputs=(TensorSpec("x", "float32", ("batch", 4)),),
                    outputs=(TensorSpec("y", "float32", ("batch", 3)),), variants=variants, folder=folder)


def _runtime(tmp_path: Path, events: list[dict[str, Any]] | None = None, **fake: Any) -> Runtime:
    spawn = {k: fake.pop(k) for k in ("heartbeat_s", "hang_after_s") if k in fake}
    return Runtime({"m": _manifest(tmp_path)}, spawner=fake_spawner({"scale": SCALE, **fake}, **spawn),
                   warmup_runs=0, backoff=(0.0, 0.0), emit=(events.append if events is not None else None),
                   memory_probe=lambda: 64 << 30)


async def _infer(rt: Runtime, value: float) -> Any:
    descs, bufs = P.tensor_descs({"x": np.full((1, 4), value, np.float32)})
    return await rt.infer("m", descs, memoryview(bytes(bufs[0])), deadline_s=10)


def _y(r: Any) -> np.ndarray:
    return P.tensors_from(r.outputs, memoryview(r.data))["y"]


def test_swap_changes_the_served_variant_and_loses_no_request(tmp_path: Path) -> None:
    async def go() -> None:
        rt = _runtime(tmp_path, run_s=0.002)
        try:
            await rt.start({"m": ("fp32", "cpu")})
            first = await _infer(rt, 1.0)
            assert first.variant == "fp32" and np.allclose(_y(first), 4.0) and first.providers == [PROVIDER]
            calls = [asyncio.ensure_future(_infer(rt, 1.0)) for _ in range(20)]
            await asyncio.sleep(0.01)
            res = await rt.swap("m", "int8", "cpu", {"why": "test"})
            calls += [asyncio.ensure_future(_infer(rt, 1.0)) for _ in range(20)]
            out = await asyncio.gather(*calls)   # raises if any request failed
            assert res["changed"] and res["providers"] == [PROVIDER]
            for r in out:   # every reply names the variant that computed it
                assert np.allclose(_y(r), 4.0 * SCALE[r.variant]), (r.variant, _y(r))
            assert out[-1].variant == "int8"
            assert rt.slots["m"].errors == 0
        finally:
            await rt.close()

    asyncio.run(go())


def test_old_worker_drains_its_inflight_requests_then_stops(tmp_path: Path) -> None:
    async def go() -> None:
        rt = _runtime(tmp_path, run_s=0.03)
        try:
            await rt.start({"m": ("fp32", "cpu")})
            old = rt.slots["m"].active
            assert old is not None
            slow = [asyncio.ensure_future(_infer(rt, 1.0)) for _ in range(5)]
            await _until(lambda: old.inflight > 0)
            await rt.swap("m", "int8", "cpu")
            assert old in rt.slots["m"].draining and old.alive   # still finishing what it holds
            out = await asyncio.gather(*slow)
            assert {r.variant for r in out} == {"fp32"} and all(np.allclose(_y(r), 4.0) for r in out)
            await _until(lambda: not rt.slots["m"].draining)
            assert not old.alive
            assert rt.slots["m"].states["fp32"].status == "unloaded"
            assert (await _infer(rt, 1.0)).variant == "int8"
        finally:
            await rt.close()

    asyncio.run(go())


def test_worker_crash_mid_request_is_retried_on_the_restarted_worker(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []

    async def go() -> None:
        rt = _runtime(tmp_path, events, faults=[{"mode": "crash", "at": 1, "once": str(tmp_path / "crashed")}])
        try:
            await rt.start({"m": ("fp32", "cpu")})
            before = rt.slots["m"].active
            assert before is not None
            r = await _infer(rt, 2.0)   # the worker SIGKILLs itself holding this request
            assert r.retried is True and r.variant == "fp32" and np.allclose(_y(r), 8.0)
            after = rt.slots["m"].active
            assert after is not None and after.pid != before.pid and after.alive and not before.alive
            await _until(lambda: any(e["event"] == "worker_restarted" for e in events))
            died = [e for e in events if e["event"] == "worker_died"]
            assert [e["pid"] for e in died] == [before.pid] and not died[0]["hung"]
            assert [e["variant"] for e in events if e["event"] == "worker_restarted"] == ["fp32"]
            assert rt.slots["m"].failures == 1 and rt.slots["m"].errors == 0
        finally:
            await rt.close()

    asyncio.run(go())


def test_a_request_is_retried_once_only(tmp_path: Path) -> None:
    """Every worker crashes on its first request: the retry dies too, and the error reaches the caller."""
    async def go() -> None:
        rt = _runtime(tmp_path, faults=[{"mode": "crash", "at": 1}])
        try:
            await rt.start({"m": ("fp32", "cpu")})
            with pytest.raises(WorkerDied):
                await _infer(rt, 1.0)
            assert rt.slots["m"].errors == 1
        finally:
            await rt.close()

    asyncio.run(go())


def test_a_failed_load_leaves_the_current_variant_serving(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []

    async def go() -> None:
        rt = _runtime(tmp_path, events, fail_load=["int8"])
        try:
            await rt.start({"m": ("fp32", "cpu")})
            with pytest.raises(LoadError, match="fail_load"):
                await rt.swap("m", "int8", "cpu")
            assert rt.slots["m"].states["int8"].status == "failed"
            assert (await _infer(rt, 1.0)).variant == "fp32"
            assert [e["serving"] for e in events if e["event"] == "load_failed"] == ["fp32"]
        finally:
            await rt.close()

    asyncio.run(go())


def test_a_stopped_worker_is_declared_hung_killed_and_the_request_retried(tmp_path: Path) -> None:
    async def go() -> None:
        rt = _runtime(tmp_path, faults=[{"mode": "stop", "at": 1, "once": str(tmp_path / "stopped")}],
                      heartbeat_s=0.05, hang_after_s=0.2)
        try:
            await rt.start({"m": ("fp32", "cpu")})
            before = rt.slots["m"].active
            assert before is not None
            r = await _infer(rt, 1.0)   # SIGSTOP: no heartbeat; declared hung after 0.2 s, SIGKILLed
            assert r.retried is True and np.allclose(_y(r), 4.0)
            assert before.hung is not None and "no heartbeat" in before.hung
            assert rt.slots["m"].active is not before
        finally:
            await rt.close()

    asyncio.run(go())


def test_a_hung_worker_that_keeps_its_heartbeat_fails_the_request_with_timeout_at_its_deadline(
        tmp_path: Path) -> None:
    from agent.errors import Timeout

    async def go() -> None:
        rt = _runtime(tmp_path, faults=[{"mode": "hang", "at": 1}])
        try:
            await rt.start({"m": ("fp32", "cpu")})
            descs, bufs = P.tensor_descs({"x": np.ones((1, 4), np.float32)})
            with pytest.raises(Timeout, match="m/fp32 did not answer within its deadline of 300 ms"):
                await rt.infer("m", descs, memoryview(bytes(bufs[0])), deadline_s=0.3)
            assert rt.slots["m"].errors == 1
            h = rt.slots["m"].active
            assert h is not None and h.alive and h.hung is None   # it still beats: not declared hung here
            h.declare_hung("test: the request timed out")   # so close() need not wait out its grace period
        finally:
            await rt.close()

    asyncio.run(go())
