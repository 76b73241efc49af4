"""A worker that stops answering (SIGSTOP stands in for a hung execution provider or driver):
the request returns within its deadline + 1 s, the hung worker is killed and replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.errors import Timeout
from agent.ipc import protocol as P

pytestmark = pytest.mark.integration


def _active(c) -> dict:  # type: ignore[no-untyped-def]
    return c.status()["models"]["mlp"]["active"]


def _gone(pid: int) -> bool:
    """Not running any more: no such process, or a zombie nobody waited for yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def _wait_replaced(c, old_pid: int, timeout: float = 20.0) -> dict:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        a = _active(c)
        if a is not None and a["pid"] != old_pid and a["alive"]:
            return a
        time.sleep(0.1)
    raise AssertionError(f"worker {old_pid} was not replaced: {_active(c)}")


def _infer(c, x: np.ndarray, deadline_ms: float | None):  # type: ignore[no-untyped-def]
    descs, bufs = P.tensor_descs({"x": x})
    params = {"model": "mlp", "inputs": descs}
    if deadline_ms is not None:
        params["deadline_ms"] = deadline_ms
    return c.call("infer", params, bufs)


def test_sigstopped_worker_is_declared_hung_replaced_and_the_request_served_within_its_deadline(daemon):
    x = np.ones((2, 256), np.float32)
    with daemon.client() as c:
        old = _active(c)["pid"]
        os.kill(old, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            res, _ = _infer(c, x, deadline_ms=8000)
            took = time.monotonic() - t0
        finally:
            if not _gone(old):
                os.kill(old, signal.SIGCONT)
        assert took <= 8.0 + 1.0, took
        assert res["retried"] is True and res["variant"] == "fp32", res   # served by the replacement
        new = _wait_replaced(c, old)
        assert _gone(old), f"the hung worker {old} still runs"
        assert c.infer("mlp", {"x": x}).outputs["y"].shape == (2, 64)
        st = c.status()["models"]["mlp"]
        assert st["active"]["pid"] == new["pid"]
    assert daemon.stop() == 0
    log = daemon.log_text()
    assert "worker declared hung" in log and str(old) in log, log[-3000:]


def test_worker_stopped_mid_request_is_replaced_and_the_request_retried(daemon):
    big = np.ones((60000, 256), np.float32)   # keeps the worker busy long enough to stop it mid-run
    out: dict[str, object] = {}
    with daemon.client() as c:
        old = _active(c)["pid"]

        def run() -> None:
            with daemon.client() as c2:
                t0 = time.monotonic()
                try:
                    out["res"] = _infer(c2, big, deadline_ms=15000)[0]
                except Exception as e:  # noqa: BLE001 - any failure is recorded, asserted below
                    out["err"] = e
                out["took"] = time.monotonic() - t0
        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.15)
        os.kill(old, signal.SIGSTOP)
        t.join(30)
        if not _gone(old):
            os.kill(old, signal.SIGCONT)
        assert "err" not in out, out
        assert float(out["took"]) <= 15.0 + 1.0, out  # type: ignore[arg-type]
        res = out["res"]
        assert isinstance(res, dict) and res["variant"] == "fp32"
        _wait_replaced(c, old)
        assert _gone(old)


def test_a_deadline_shorter_than_the_hang_limit_gives_timeout_naming_the_variant(daemon):
    x = np.ones((2, 256), np.float32)
    with daemon.client() as c:
        old = _active(c)["pid"]
        os.kill(old, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(Timeout, match=r"mlp/fp32 .*deadline of 700 ms") as ei:
                _infer(c, x, deadline_ms=700)
            took = time.monotonic() - t0
            assert took <= 0.7 + 1.0, took
            assert ei.value.data["variant"] == "fp32" and ei.value.data["deadline_ms"] == 700
            # the client's own short deadline does not kill the worker; its silence (heartbeat) does
            _wait_replaced(c, old)
            assert _gone(old)
        finally:
            if not _gone(old):
                os.kill(old, signal.SIGCONT)
        assert c.infer("mlp", {"x": x}).variant == "fp32"


def test_bad_deadlines_are_refused_with_a_clear_error(shared_daemon):
    from agent.errors import InvalidParams

    x = np.ones((1, 256), np.float32)
    with shared_daemon.client() as c:
        for bad in (0, -5, "soon", True, 1e12):
            with pytest.raises(InvalidParams, match="deadline_ms"):
                _infer(c, x, deadline_ms=bad)  # type: ignore[arg-type]
        assert _infer(c, x, deadline_ms=5000)[0]["variant"] == "fp32"
