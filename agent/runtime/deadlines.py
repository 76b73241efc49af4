"""Request deadlines: every request has one, and a worker that misses it is declared hung.

A request's deadline is its own ``deadline_ms`` when the client gives one, else the model's default:
``margin`` × the slowest measured p95 in the zoo's manifest (per request for tensor models; per token,
or the time to first token, for causal LMs), never below ``floor_s``. Manifests measure p50/p95, not
p99: the margin (20× by default) is what covers the tail, queueing behind other requests and a loaded
machine.

The *model's* deadline also bounds how long a worker may take to answer: past it the worker is
declared hung (killed and replaced). A client's shorter deadline only fails that request with
:class:`~agent.errors.Timeout`, so one impatient client cannot make the daemon kill healthy workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agent.errors import InvalidParams, Timeout
from agent.zoo.manifest import Manifest

MAX_DEADLINE_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class DeadlinePolicy:
    floor_s: float = 10.0
    margin: float = 20.0

    def default_s(self, m: Manifest) -> float:
        """The model's default deadline (per request; per token for a causal LM)."""
        worst_ms = 0.0
        for v in m.variants:
            for meas in v.measurements:
                for ms in (meas.latency_ms_p95, meas.ttft_ms):
                    if ms is not None and ms > worst_ms:
                        worst_ms = ms
        return max(self.floor_s, self.margin * worst_ms / 1e3)


def parse_deadline_ms(value: Any) -> float | None:
    """A client's ``deadline_ms`` (None: not given) as seconds; a clear error for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_DEADLINE_MS:
        raise InvalidParams(f"deadline_ms: expected a number of milliseconds in (0, {MAX_DEADLINE_MS}], "
                            f"got {value!r}")
    return float(value) / 1e3


def timeout_error(model: str, variant: str | None, pid: int | None, limit_s: float, *, hung: bool,
                  what: str = "did not answer") -> Timeout:
    tail = f"; worker {pid} was declared hung and is being replaced" if hung else ""
    return Timeout(f"{model}/{variant or '?'} {what} within its deadline of {limit_s * 1e3:.0f} ms{tail}",
                   data={"model": model, "variant": variant, "pid": pid, "deadline_ms": round(limit_s * 1e3, 1),
                         "worker_hung": hung})


async def watch_progress(coro: Coroutine[Any, Any, Any], *, end: float, gap_s: float,
                         last_progress: Callable[[], float],
                         on_stall: Callable[[float], None]) -> tuple[bool, Any]:
    """Await ``coro`` until it finishes, the absolute deadline ``end`` (monotonic) passes, or it makes no
    progress for ``gap_s``: then ``on_stall(silence)`` runs once (it is expected to kill the worker, which
    makes the coroutine fail) and the coroutine is awaited further. Returns (True, result) when it
    finished, or (False, stalled) when the deadline passed first (the coroutine is then cancelled).
    Cancelling the caller cancels the coroutine."""
    task = asyncio.ensure_future(coro)
    stalled = False
    try:
        while True:
            now = time.monotonic()
            if not stalled and now - last_progress() >= gap_s:
                stalled = True
                on_stall(now - last_progress())
            if now >= end and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return False, stalled
            wait = end - now if stalled else min(end - now, last_progress() + gap_s - now)
            done, _ = await asyncio.wait({task}, timeout=max(wait, 0.0))
            if done:
                return True, task.result()
    except asyncio.CancelledError:
        task.cancel()
        raise
