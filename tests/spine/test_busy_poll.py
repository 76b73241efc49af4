"""protocol.BusyPoll: poll until the peer answers or the budget is spent, and count what it cost."""

import time

from agent.ipc.protocol import BusyPoll


def test_a_poll_that_finds_the_peer_returns_what_it_found():
    bp = BusyPoll(0.01)
    calls = iter([[], [], ["ready"]])
    assert bp.wait(lambda: next(calls)) == ["ready"]
    assert (bp.hits, bp.misses) == (1, 0)


def test_an_empty_poll_stops_at_its_budget_and_its_cpu_time_is_counted():
    bp = BusyPoll(2e-3)
    t0 = time.perf_counter()
    assert not bp.wait(lambda: [])
    spent = time.perf_counter() - t0
    assert 2e-3 <= spent < 0.05
    assert (bp.hits, bp.misses) == (0, 1) and bp.cpu_s > 0


def test_a_zero_budget_never_polls():
    bp = BusyPoll(0.01)
    assert bp.wait(lambda: ["ready"], budget_s=0.0) is None
    assert bp.cpu_s == 0.0 and bp.hits == bp.misses == 0
