"""A worker's end never blocks the event loop: ``kill()`` (called from a swap, a restart, a failed load)
and a lost connection hand the process to a background reaper instead of waiting for it on the loop.

Real worker processes. Deterministic, no timing asserts: the old code waited inside the call (kill) or
gave up after a blocking 0.5 s wait and never reaped (connection lost), and both are visible in
``proc.returncode``, which only a ``wait``/``poll`` sets."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from typing import Any

from agent.runtime.handle import WorkerHandle
from agent.testing import until

_until = functools.partial(until, within_s=60.0, step_s=0.02)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_kill_returns_at_once_and_the_process_is_reaped_in_the_background():
    async def go() -> None:
        h = await WorkerHandle.spawn()
        other = await WorkerHandle.spawn()
        try:
            assert h.proc is not None
            h.kill()
            assert h.proc.returncode is None      # kill() did not wait for the process
            # the loop keeps serving: a call to another worker is answered while h is reaped
            res, _ = await other.call("ping", {}, timeout=60)
            assert res["pid"] == other.pid
            await _until(lambda: h.proc is not None and h.proc.returncode is not None)
            assert h.proc.returncode == -signal.SIGKILL and not h.alive
        finally:
            h.kill()
            await other.stop()
    _run(go())


def test_a_lost_connection_does_not_wait_for_a_worker_that_is_still_running():
    async def go() -> None:
        h = await WorkerHandle.spawn()
        other = await WorkerHandle.spawn()
        pid = h.pid
        assert h.proc is not None and pid is not None
        try:
            os.kill(pid, signal.SIGSTOP)      # the worker cannot exit now: a blocking wait would time out
            assert h._transport is not None
            h._transport.close()              # connection_lost -> _on_lost, with the process still there
            await _until(lambda: not h.alive)
            res, _ = await other.call("ping", {}, timeout=60)
            assert res["pid"] == other.pid
            assert h.proc.returncode is None
            os.kill(pid, signal.SIGKILL)      # now it goes: the handle's reaper collects it, nobody else
            await _until(lambda: h.proc is not None and h.proc.returncode is not None)
            assert h.proc.returncode == -signal.SIGKILL
        finally:
            if h.proc.returncode is None:
                os.kill(pid, signal.SIGKILL)
                h.proc.wait(10)
            await other.stop()
    _run(go())


def test_a_spawn_cancelled_before_the_worker_said_hello_kills_that_worker():
    """A runtime closing cancels its spare-worker task, perhaps mid-spawn: the half-started worker must
    not be left running (nor its channel open) with nobody holding its handle."""
    import psutil

    async def go() -> None:
        me = psutil.Process()
        before = {p.pid for p in me.children()}
        t = asyncio.ensure_future(WorkerHandle.spawn())
        await _until(lambda: {p.pid for p in me.children()} - before != set())  # started, no hello yet
        new = [psutil.Process(pid) for pid in {p.pid for p in me.children()} - before]
        assert not t.done()
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)

        def gone() -> bool:
            return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in new)
        await _until(gone, within_s=30)
    _run(go())


def test_a_start_cancelled_mid_way_leaves_no_unretrieved_error_behind():
    """A runtime closing while a worker starts cancels the spawn; the worker is killed and its hello
    future fails afterwards with nobody awaiting it. That failure is expected and must not be reported
    by the loop as 'Future exception was never retrieved' (it was, at the end of a test run)."""
    import gc

    reported: list[str] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: reported.append(str(ctx.get("message"))))
        for wait_s in (0.05, 0.02, 0.01, 0.005):   # a start that already finished is stopped and tried again
            task = asyncio.ensure_future(WorkerHandle.spawn())
            await asyncio.sleep(wait_s)       # exec'd and connected, still importing: no hello yet
            if not task.done():
                break
            await task.result().stop()
        assert not task.done(), "every worker started before the cancel"
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0.5)              # the killed worker's connection is lost: hello fails
        gc.collect()
        await asyncio.sleep(0)
    _run(go())
    assert not [m for m in reported if "never retrieved" in m], reported
