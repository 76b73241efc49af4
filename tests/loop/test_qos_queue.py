"""The controller's QoS pieces without a daemon: parsing, the demand book, the deadline-ordered gate."""

from __future__ import annotations

import asyncio

import pytest

from agent.control import DemandBook, EdfGate, QoS, parse_qos
from agent.errors import InvalidParams


def test_parse_qos_accepts_the_three_keys_and_names_a_bad_one() -> None:
    assert parse_qos({"deadline_ms": 500, "min_quality": 0.9, "priority": 2, "other": 1}) == QoS(500, 0.9, 2)
    assert parse_qos({}).empty
    for bad, key in (({"deadline_ms": 0}, "deadline_ms"), ({"deadline_ms": True}, "deadline_ms"),
                     ({"min_quality": -0.1}, "min_quality"), ({"priority": 1.5}, "priority"),
                     ({"deadline_ms": float("nan")}, "deadline_ms")):
        with pytest.raises(InvalidParams, match=key):
            parse_qos(bad)


def test_demand_book_keeps_the_tightest_recent_deadline_and_forgets_old_requests() -> None:
    now = [0.0]
    book = DemandBook(window_s=30, clock=lambda: now[0])
    book.note("m", QoS(2000, 0.8, 0), 16)
    now[0] = 10
    book.note("m", QoS(900, None, 3), 64)
    d = book.demand()["m"]
    assert (d.deadline_ms, d.min_quality, d.priority, d.tokens) == (900, 0.8, 3, 64)
    assert d.rate_per_s == pytest.approx(2 / 30)       # what decide() prices a swap against
    now[0] = 35
    assert book.demand()["m"].deadline_ms == 900 and book.demand()["m"].tokens == 64
    assert book.demand()["m"].rate_per_s == pytest.approx(1 / 30)
    now[0] = 45
    assert "m" not in book.demand()


def test_edf_gate_serves_waiters_by_priority_then_earliest_deadline() -> None:
    async def run() -> list[str]:
        gate, order = EdfGate(1), []
        await gate.enter(QoS(), 0.0)            # holds the only slot

        async def req(name: str, qos: QoS, t0: float) -> None:
            await gate.enter(qos, t0)
            order.append(name)
            gate.leave()

        tasks = [asyncio.create_task(req(n, q, t)) for n, q, t in (
            ("late", QoS(deadline_ms=5000), 0.0), ("none", QoS(), 0.0), ("soon", QoS(deadline_ms=100), 1.0),
            ("urgent", QoS(deadline_ms=9000, priority=1), 2.0))]
        await asyncio.sleep(0.01)
        gate.leave()
        await asyncio.gather(*tasks)
        assert gate.running == 0
        return order

    assert asyncio.run(run()) == ["urgent", "soon", "late", "none"]


def test_a_cancelled_waiter_does_not_lose_the_slot() -> None:
    async def run() -> int:
        gate = EdfGate(1)
        await gate.enter(QoS(), 0.0)
        t = asyncio.create_task(gate.enter(QoS(deadline_ms=10), 0.0))
        await asyncio.sleep(0.01)
        t.cancel()
        await asyncio.sleep(0.01)
        gate.leave()
        await gate.enter(QoS(), 0.0)     # the slot came back
        gate.leave()
        return gate.running

    assert asyncio.run(run()) == 0
