from __future__ import annotations

import itertools
import logging
import threading
import time

import pytest

from agent.sensors.live import LiveSensors
from agent.sensors.sampler import Batcher, Sampler
from agent.sensors.trace import TraceReplay, shipped


def _wait(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_sampler_calls_back_with_snapshots_until_stopped(fake):
    fake.desktop_basics()
    got = []
    s = Sampler(LiveSensors(fake.sys, fake.proc, nvml=False), got.append, interval_s=0.05)
    s.start()
    try:
        assert _wait(lambda: len(got) >= 3)
    finally:
        s.stop()
    n = len(got)
    time.sleep(0.2)
    assert len(got) == n and not s.running
    assert all(a.mono_s < b.mono_s for a, b in itertools.pairwise(got))


def test_callback_exceptions_are_logged_and_sampling_goes_on(fake, caplog):
    fake.desktop_basics()
    calls = []

    def cb(snap):
        calls.append(snap)
        if len(calls) == 1:
            raise RuntimeError("boom")

    s = Sampler(LiveSensors(fake.sys, fake.proc, nvml=False), cb, interval_s=0.05)
    with caplog.at_level(logging.ERROR, logger="agent.sensors.sampler"):
        s.start()
        try:
            assert _wait(lambda: len(calls) >= 3)
        finally:
            s.stop()
    assert s.errors >= 1 and "callback failed" in caplog.text


def test_source_read_errors_are_logged_not_raised(caplog):
    class Broken:
        def read(self):
            raise OSError("sensor gone")

        def close(self):
            pass

    s = Sampler(Broken(), lambda snap: None)
    with caplog.at_level(logging.ERROR):
        s.tick()
    assert s.errors == 1 and s.ticks == 0 and "read failed" in caplog.text


def test_sampler_on_a_replayed_trace_sees_trace_values():
    got = []
    rep = TraceReplay(shipped("laptop_workday"), speed=3600.0)     # one trace hour per second
    s = Sampler(rep, got.append, interval_s=0.05)
    s.start()
    try:
        assert _wait(lambda: len(got) >= 5)
    finally:
        s.stop()
    values = {snap.battery.percent for snap in got}
    trace_values = {snap.battery.percent for snap in rep.trace.snapshots}
    assert values <= trace_values and len(values) >= 2


def test_interval_must_be_positive(fake):
    with pytest.raises(ValueError):
        Sampler(LiveSensors(fake.sys, fake.proc, nvml=False), lambda s: None, interval_s=0)


def test_batcher_hands_over_full_batches_and_flushes_the_rest():
    batches = []
    b = Batcher(batches.append, batch=3)
    for i in range(7):
        b(i)  # type: ignore[arg-type]
    assert batches == [[0, 1, 2], [3, 4, 5]]
    b.flush()
    assert batches[-1] == [6]
    b.flush()
    assert len(batches) == 3


def test_start_twice_keeps_one_scheduler(fake):
    fake.desktop_basics()
    s = Sampler(LiveSensors(fake.sys, fake.proc, nvml=False), lambda snap: None, interval_s=0.5)
    s.start()
    sched = s._sched
    s.start()
    assert s._sched is sched
    s.stop()
    s.stop()
    assert threading.active_count() >= 1
