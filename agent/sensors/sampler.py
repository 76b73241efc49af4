"""Sampler: read a SensorSource every ``interval_s`` on an apscheduler 3.x BackgroundScheduler thread.

The callback receives each Snapshot; an exception in it (or in ``read()``) is logged and sampling
goes on. Ticks never overlap (``max_instances=1``) and late ticks are coalesced, so a stalled callback
costs missed samples, not a pile-up. :class:`Batcher` is a ready callback that hands snapshots to a
sink (e.g. the telemetry store's batched insert) every ``batch`` samples and on ``flush()``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent.sensors.snapshot import Snapshot
from agent.sensors.source import SensorSource

log = logging.getLogger(__name__)


class Sampler:
    def __init__(self, source: SensorSource, callback: Callable[[Snapshot], Any],
                 interval_s: float = 1.0) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        self.source, self.callback, self.interval_s = source, callback, float(interval_s)
        self._sched: Any = None
        self._lock = threading.Lock()
        self.ticks = 0
        self.errors = 0
        self.last: Snapshot | None = None

    def tick(self) -> None:
        """One sample (also callable directly, e.g. from tests or a manual refresh)."""
        try:
            snap = self.source.read()
        except Exception:
            self.errors += 1
            log.exception("sensor source read failed")
            return
        self.last = snap
        self.ticks += 1
        try:
            self.callback(snap)
        except Exception:
            self.errors += 1
            log.exception("sensor sample callback failed")

    def start(self) -> None:
        with self._lock:
            if self._sched is not None:
                return
            from apscheduler.schedulers.background import BackgroundScheduler

            sched = BackgroundScheduler(daemon=True, timezone=UTC)
            sched.add_job(self.tick, "interval", seconds=self.interval_s, id="sensors",
                          max_instances=1, coalesce=True, misfire_grace_time=None,
                          next_run_time=datetime.now(UTC))
            sched.start()
            self._sched = sched

    def stop(self, wait: bool = True) -> None:
        with self._lock:
            sched, self._sched = self._sched, None
        if sched is not None:
            sched.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return self._sched is not None


class Batcher:
    """Collects snapshots and calls ``sink(list_of_snapshots)`` every ``batch`` samples."""

    def __init__(self, sink: Callable[[list[Snapshot]], Any], batch: int = 30) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.sink, self.batch = sink, batch
        self._buf: list[Snapshot] = []
        self._lock = threading.Lock()

    def __call__(self, snap: Snapshot) -> None:
        with self._lock:
            self._buf.append(snap)
            if len(self._buf) < self.batch:
                return
            out, self._buf = self._buf, []
        self.sink(out)

    def flush(self) -> None:
        with self._lock:
            out, self._buf = self._buf, []
        if out:
            self.sink(out)
