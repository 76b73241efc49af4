"""The runtime alone changes runtime state (models added by a reload, fallbacks), and pins and holds live in
the policy state: real workers, a real daemon, no fakes of our own code."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.config import Config
from agent.errors import LoadError, NotFound
from agent.ipc import protocol as P
from agent.ops.records import Caller
from agent.ops.service import Ops
from agent.policy.engine import PolicyEngine
from agent.runtime.manager import Runtime
from agent.telemetry import Telemetry
from agent.testing import make_tensor_zoo
from agent.zoo.manifest import load_zoo


def _x() -> tuple[list[dict[str, Any]], memoryview]:
    descs, bufs = P.tensor_descs({"x": np.ones((1, 256), np.float32)})
    return descs, memoryview(bytes(bufs[0]))


def test_a_tensor_model_added_by_put_model_serves_on_the_callback_path(tensor_zoo: Path) -> None:
    models, _ = load_zoo(tensor_zoo)
    make_tensor_zoo(tensor_zoo, "mlp2")
    later, _ = load_zoo(tensor_zoo)

    async def go() -> None:
        rt = Runtime(models, spare_workers=0)
        try:
            assert rt.put_model(later["mlp2"]) is True
            assert rt.put_model(later["mlp"]) is False          # known: its manifest is replaced, no new slot
            assert rt.slot("mlp").manifest is later["mlp"]
            await rt.swap("mlp2", "fp32", "cpu")
            got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            descs, payload = _x()
            assert rt.infer_nowait("mlp2", descs, payload, lambda r, e: got.set_result((r and r.variant, e)))
            assert await asyncio.wait_for(got, 30) == ("fp32", None)
        finally:
            await rt.close()

    asyncio.run(go())


def test_a_fallback_swaps_to_the_reference_and_says_why(tensor_zoo: Path) -> None:
    models, _ = load_zoo(tensor_zoo)
    events: list[dict[str, Any]] = []

    async def go() -> None:
        rt = Runtime(models, spare_workers=0, emit=events.append)
        try:
            await rt.swap("mlp", "int8", "cpu")
            await rt.fall_back("mlp", "startup fallback", "int8 failed")
            assert rt.slot("mlp").active is not None and rt.slot("mlp").active.variant == "fp32"
            (tensor_zoo / "mlp" / "fp32.onnx").write_bytes(b"not a model")
            await rt.swap("mlp", "int8", "cpu")
            with pytest.raises(LoadError):
                await rt.fall_back("mlp", "restart fallback", "int8 keeps dying")
            assert rt.slot("mlp").active.variant == "int8"      # a failed fallback changes nothing
        finally:
            await rt.close()

    asyncio.run(go())
    fb = [e for e in events if e["event"] == "fallback"]
    assert [(e["from"], e["to"], e["why"], e["ok"]) for e in fb] == [
        ("int8", "fp32", "startup fallback", True), ("int8", "fp32", "restart fallback", False)]
    assert fb[0]["error"] == "int8 failed" and fb[1]["fallback_error"]
    swap = next(e for e in events if e["event"] == "swap" and e["to"] == "fp32")
    assert swap["reason"] == {"why": "startup fallback", "error": "int8 failed"}


def _ops(tmp_path: Path) -> tuple[Ops, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    cfg = Config(zoo=tmp_path / "zoo", socket=tmp_path / "a.sock", state_dir=tmp_path)
    ops = Ops(cfg, Telemetry(tmp_path / "t.db"), sent.append)
    ops.engine = PolicyEngine()
    return ops, sent


def test_the_policy_learns_what_a_fallback_loaded(tmp_path: Path) -> None:
    ops, sent = _ops(tmp_path)
    assert ops.engine is not None
    try:
        ops.engine.set_current("mlp", "int8", "cpu")
        ops.on_event({"event": "fallback", "model": "mlp", "from": "int8", "to": "fp32", "device": "cpu",
                      "why": "failover", "error": "gone", "ok": False})
        assert ops.engine.status()["current"] == {"mlp": "int8@cpu"}     # it failed: nothing changed
        ops.on_event({"event": "fallback", "model": "mlp", "from": "int8", "to": "fp32", "device": "cpu",
                      "why": "failover", "error": "gone", "ok": True})
        assert ops.engine.status()["current"] == {"mlp": "fp32@cpu"}
        assert [m["params"]["event"] for m in sent] == ["fallback", "fallback"]
    finally:
        ops.telemetry.close()


def test_holds_live_in_the_policy_state_and_end_with_their_connection(tmp_path: Path) -> None:
    ops, sent = _ops(tmp_path)
    assert ops.engine is not None
    try:
        me, other = Caller(uid=1000, pid=11, conn_id=7), Caller(uid=1001, pid=12, conn_id=8)
        h = ops.hold("power-saver", "on a train", me)
        assert [(x.cookie, x.reason, x.pid) for x in ops.holds()] == [(h.cookie, "on a train", 11)]
        assert [x["cookie"] for x in ops.engine.status()["holds"]] == [h.cookie]   # the one store
        assert ops.is_held(7) and not ops.is_held(8)
        with pytest.raises(NotFound):
            ops.release(h.cookie, other)                   # another user's hold
        h2 = ops.hold("performance", "", other)
        assert ops.release(h2.cookie, Caller(uid=0, pid=1)).released == h2.cookie   # root may
        ops.on_disconnect(7)
        assert ops.holds() == [] and ops.engine.state.holds == ()
        assert [m["params"].get("why") for m in sent if m["params"]["event"] == "hold_released"] == [
            "released", "client disconnected"]
        assert time.time() - h.since < 60
    finally:
        ops.telemetry.close()


def test_a_model_added_by_reload_serves_and_a_pin_shows_from_the_policy_state(daemon: Any) -> None:
    make_tensor_zoo(daemon.zoo, "mlp2")
    with daemon.client() as c:
        r = c.call("reload", {})[0]
        assert r["added"] == ["mlp2"], r
        assert c.infer("mlp2", {"x": np.ones((1, 256), np.float32)}).variant == "fp32"
        c.pin("mlp2", "int8")
        st = c.status()
        assert st["models"]["mlp2"]["pinned"] == {"variant": "int8", "device": "cpu"}
        assert st["policy"]["pins"] == {"mlp2": "int8@cpu"}
        assert c.call("unpin", {"model": "mlp2"})[0]["was_pinned"] == ["int8", "cpu"]
        assert c.status()["models"]["mlp2"]["pinned"] is None
