"""protocol.BusyPoll: poll while it pays, back off when polls come back empty."""

import time

from agent.ipc.protocol import BusyPoll


def test_a_poll_that_finds_the_peer_returns_what_it_found():
    bp = BusyPoll(0.01)
    calls = iter([[], [], ["ready"]])
    assert bp.wait(lambda: next(calls)) == ["ready"]
    assert bp.hit == 1.0


def test_empty_polls_back_off_to_one_probe_in_32_and_a_hit_resumes_polling():
    bp = BusyPoll(50e-6)
    checks = [0]

    def never() -> list:
        checks[0] += 1
        return []
    for _ in range(20):                 # the moving average of hits falls under MIN_HIT
        assert not bp.wait(never)
    assert bp.hit < BusyPoll.MIN_HIT
    t0 = time.perf_counter()
    polled = 0
    for _ in range(64):
        checks[0] = 0
        bp.wait(never)
        polled += checks[0] > 0
    assert polled == 2                  # only every PROBE-th wait spins now
    assert time.perf_counter() - t0 < 0.05
    while bp.hit < BusyPoll.MIN_HIT:    # probes that hit bring polling back
        bp.wait(lambda: ["ready"])
    assert bp.wait(lambda: ["ready"]) == ["ready"]


def test_a_zero_budget_never_polls():
    bp = BusyPoll(0.01)
    assert bp.wait(lambda: ["ready"], budget_s=0.0) is None
    assert bp.cpu_s == 0.0
