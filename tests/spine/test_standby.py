"""Warm standby on the fake backend: real worker processes, real frames, real SIGKILLs; only the model is
fake. The runtime loads the wanted standby next to the active worker, a generation asked of the standby is
served (and named) by it, a swap to the standby's variant promotes that worker (no second load), a swap away
from the wanted variant keeps the old worker warm, and the controller routes a deadline request to the
standby only when the active variant's predicted latency misses it and the standby's meets it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.control import Controller, QoS
from agent.errors import DeadlineInfeasible
from agent.policy.engine import PolicyEngine
from agent.policy.loader import load_policy
from agent.runtime.backends.fake import fake_spawner
from agent.runtime.manager import Runtime
from agent.sensors.snapshot import CpuState, Snapshot
from agent.telemetry import Telemetry
from agent.testing import until as _until
from agent.zoo.manifest import Manifest, Measurement, Quality, TensorSpec, Variant

# per-token p50/p95 ms and TTFT: at a quarter of the machine fp32 needs 10 + 4 x 200 = 810 ms for 4 tokens
# (p50), int4 10 + 4 x 40 = 170 ms; at full CPU fp32 needs 210 ms
FIGURES = {"fp32": (1.0, 50.0), "int4": (0.9, 10.0)}


def _manifest(folder: Path) -> Manifest:
    vs = []
    for vid, (q, tok_ms) in FIGURES.items():
        vs.append(Variant(id=vid, file=f"{vid}.onnx", precision=vid, derived_from="source", method="fake",
                          size_bytes=1 << 20, quality=Quality("agreement", q, q),
                          measurements=(Measurement(latency_ms_p50=tok_ms, latency_ms_p95=tok_ms, ttft_ms=2.5,
                                                    peak_rss_bytes=64 << 20),)))
    return Manifest(name="lm", kind="causal-lm", reference="fp32",
                    inputs=(TensorSpec("input_ids", "int64", ("batch", "seq")),),
                    outputs=(TensorSpec("logits", "float32", ("batch", "seq", 8)),), variants=tuple(vs),
                    folder=folder, llm={})


def _runtime(tmp_path: Path, events: list[dict[str, Any]], **fake: Any) -> Runtime:
    return Runtime({"lm": _manifest(tmp_path)}, spawner=fake_spawner(fake), warmup_runs=0, backoff=(0.0, 0.0),
                   emit=events.append, memory_probe=lambda: 64 << 30, spare_workers=0)


async def _gen(rt: Runtime, standby: bool = False) -> dict[str, Any]:
    return await rt.generate("lm", {"prompt": "hi", "max_tokens": 3}, lambda t: None, deadline_s=10,
                             standby=standby)


def test_standby_loads_serves_is_promoted_by_a_swap_and_kept_by_the_swap_back(tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture
                                                                               ) -> None:
    caplog.set_level(logging.INFO, "agent.swap")

    async def go() -> None:
        events: list[dict[str, Any]] = []
        rt = _runtime(tmp_path, events, load_s=0.05)
        try:
            await rt.start({"lm": ("fp32", "cpu")})
            slot = rt.slots["lm"]
            rt.want_standby("lm", ("int4", "cpu"), "test: deadline demand")
            assert rt.sync_standby("lm")
            await _until(lambda: slot.standby is not None)
            sb = slot.standby
            assert sb is not None and sb.variant == "int4" and slot.active is not None and sb is not slot.active
            assert not rt.sync_standby("lm")          # as wanted: nothing more to do
            assert rt.status()["lm"]["standby"]["variant"] == "int4"
            assert rt.status()["lm"]["variants"]["int4"]["status"] == "standby"
            # served and named by the standby when asked; by the active worker otherwise
            served = await _gen(rt, standby=True)
            assert served["variant"] == "int4" and served["standby"] is True
            served = await _gen(rt)
            assert served["variant"] == "fp32" and "standby" not in served
            loads = sum(1 for e in events if e["event"] in ("swap", "standby"))
            # the swap to int4 promotes the warm worker: same process, no load in the swap
            fp32 = slot.active
            inflight = [asyncio.ensure_future(_gen(rt)) for _ in range(3)]
            res = await rt.swap("lm", "int4", "cpu", {"why": "test"})
            assert res["changed"] and res["load_ms"] == 0.0
            assert slot.active is sb and slot.standby is None
            swap = [e for e in events if e["event"] == "swap"][-1]
            assert swap["promoted"] == "standby" and swap["from"] == "fp32" and swap["to"] == "int4"
            assert {r["variant"] for r in await asyncio.gather(*inflight)} <= {"fp32", "int4"}   # none failed
            await _until(lambda: fp32 is not None and not fp32.alive)   # want is int4 = active: fp32 drained
            # the policy now wants int4 warm next to fp32: the swap back keeps the int4 worker as the standby
            await rt.swap("lm", "fp32", "cpu", {"why": "test"})
            assert slot.standby is sb and sb.alive and slot.active is not None and slot.active.variant == "fp32"
            assert sum(1 for e in events if e["event"] in ("swap", "standby")) == loads + 3   # swap, swap, kept
            assert [e for e in events if e["event"] == "standby"][-1]["load_ms"] == 0.0
            assert (await _gen(rt, standby=True))["variant"] == "int4"
            # no standby wanted: it is stopped (after its requests)
            rt.want_standby("lm", None, "test: no demand")
            assert rt.sync_standby("lm")
            await _until(lambda: slot.standby is None and not sb.alive)
            assert (await _gen(rt, standby=True))["variant"] == "fp32"   # none loaded: the active one serves
            assert slot.errors == 0
        finally:
            await rt.close()

    asyncio.run(go())
    msgs = [r for r in caplog.records if r.name == "agent.swap"]
    standby_lines = [r for r in msgs if r.getMessage() == "standby"]
    assert standby_lines and all(getattr(r, "fields", {}).get("reason") for r in standby_lines)
    assert any(r.getMessage() == "standby stop" for r in msgs)


def test_a_dead_standby_is_replaced_and_a_failed_load_is_not_retried_at_once(tmp_path: Path) -> None:
    async def go() -> None:
        events: list[dict[str, Any]] = []
        rt = _runtime(tmp_path, events)
        try:
            await rt.start({"lm": ("fp32", "cpu")})
            slot = rt.slots["lm"]
            rt.want_standby("lm", ("int4", "cpu"), "test")
            rt.sync_standby("lm")
            await _until(lambda: slot.standby is not None)
            sb = slot.standby
            assert sb is not None
            os.kill(sb.pid, signal.SIGKILL)
            await _until(lambda: slot.standby is None)
            assert slot.active is not None and slot.active.alive and slot.active.variant == "fp32"
            assert rt.sync_standby("lm")
            await _until(lambda: slot.standby is not None and slot.standby.alive)
            assert slot.standby is not sb
        finally:
            await rt.close()
        events2: list[dict[str, Any]] = []
        rt = _runtime(tmp_path, events2, fail_load=["int4"])
        try:
            await rt.start({"lm": ("fp32", "cpu")})
            rt.want_standby("lm", ("int4", "cpu"), "test")
            assert rt.sync_standby("lm")
            await _until(lambda: any(e["event"] == "standby_failed" for e in events2))
            await _until(lambda: rt.slots["lm"].standby_task is not None and rt.slots["lm"].standby_task.done())
            assert not rt.sync_standby("lm")             # not again within retry_s
            assert rt.sync_standby("lm", retry_s=0.0)
            assert (await _gen(rt))["variant"] == "fp32"   # the active variant serves throughout
        finally:
            await rt.close()

    asyncio.run(go())


class _Source:
    def read(self) -> Snapshot:
        return Snapshot(0.0, 0.0)

    def close(self) -> None:
        pass


POLICY = """
schema = 1
default = "q"
[profiles.q]
objective = "max_quality"
min_quality = 0.99
standby = true
"""


def test_controller_routes_to_the_standby_only_when_it_saves_the_deadline(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(POLICY)

    async def go() -> None:
        rt = _runtime(tmp_path, [])
        tel = Telemetry(tmp_path / "t.db")
        engine = PolicyEngine(load_policy([tmp_path / "p.toml"]))
        ctl = Controller(rt, engine, _Source(), tel)
        try:
            fp32, int4 = ("fp32", "cpu"), ("int4", "cpu")
            full = Snapshot(0.0, 0.0, cpu=CpuState(online=4, util_percent=0.0))
            quarter = replace(full, cpu=replace(full.cpu, quota_cores=1.0))
            ctl.last = full
            assert ctl.route("lm", QoS(deadline_ms=500), fp32, int4, 4) is False        # fp32 makes it
            ctl.last = quarter
            assert ctl.route("lm", QoS(deadline_ms=500), fp32, int4, 4) is True         # 810 ms vs 170 ms
            assert ctl.routed == {"lm": 1}
            with pytest.raises(DeadlineInfeasible, match="fastest feasible: int4"):
                ctl.route("lm", QoS(deadline_ms=500), fp32, None, 4)                     # no standby loaded
            with pytest.raises(DeadlineInfeasible):
                ctl.route("lm", QoS(deadline_ms=500, min_quality=0.95), fp32, int4, 4)   # below the floor
            with pytest.raises(DeadlineInfeasible):
                ctl.route("lm", QoS(deadline_ms=100), fp32, int4, 4)                     # the standby misses too
            engine.pin_loaded("lm", "fp32", "cpu")
            with pytest.raises(DeadlineInfeasible):
                ctl.route("lm", QoS(deadline_ms=500), fp32, int4, 4)                     # a pin is kept
            engine.unpin("lm")
            # the policy's want: int4 warm next to fp32 while requests carry deadlines, none without demand
            await rt.start({"lm": fp32})
            d = engine.step(full, rt.placeable(ctl._table), 1.0, {})
            ctl._want_standbys(d, full, {})
            assert rt.slots["lm"].standby_want is None
            ctl.demands.note("lm", QoS(deadline_ms=500), 4)
            demand = ctl.demands.demand()
            d = engine.step(full, rt.placeable(ctl._table), 2.0, demand)
            assert d.choices["lm"].variant == "fp32"
            ctl._want_standbys(d, full, demand)
            assert rt.slots["lm"].standby_want == int4
            assert "int4@cpu" in rt.slots["lm"].standby_why
            engine.pin_loaded("lm", "fp32", "cpu")
            ctl._want_standbys(engine.step(full, rt.placeable(ctl._table), 3.0, demand), full, demand)
            assert rt.slots["lm"].standby_want is None and rt.slots["lm"].standby_why == "pinned"
        finally:
            await rt.close()
            tel.close()

    asyncio.run(go())
