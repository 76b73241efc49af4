"""Lanes: tensor requests straight to the serving worker (agent.ipc.lane, agent.runtime.lanes)."""

import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from agent.client import LANE_AFTER, Client
from agent.errors import InvalidParams, NotFound
from agent.ipc.lane import LaneClosed, open_lane
from agent.testing import set_serving

pytestmark = pytest.mark.integration


def _x(rows: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 256)).astype(np.float32)


def _lane_client(daemon, model: str = "mlp", **kw) -> Client:
    """A client past its first LANE_AFTER (framed) requests to ``model``: the next one opens a lane."""
    c = Client(daemon.socket, **kw)
    for _ in range(LANE_AFTER):
        assert not c.infer(model, {"x": _x()}).extra.get("lane")
    return c


def _lane_stats(c: Client, model: str = "mlp", want: int = 1, timeout: float = 5.0) -> dict:
    """The model's lane counts once the worker reported at least ``want`` requests (heartbeat, 0.5 s)."""
    end = time.monotonic() + timeout
    while True:
        lanes = c.status()["models"][model].get("lanes") or {}
        if lanes.get("requests", 0) >= want or time.monotonic() > end:
            return lanes
        time.sleep(0.1)


def test_lane_answers_equal_the_daemon_path_small_and_large(daemon):
    with _lane_client(daemon) as c, Client(daemon.socket, lanes=False) as framed:
        for rows in (1, 1024):   # 1 KB inline, 1 MB through the lane's shared memory (both ways)
            x = _x(rows)
            r, f = c.infer("mlp", {"x": x}), framed.infer("mlp", {"x": x})
            assert r.extra.get("lane") is True and not f.extra.get("lane")
            assert r.variant == f.variant == "fp32" and r.device == f.device == "cpu"
            np.testing.assert_array_equal(r.outputs["y"], f.outputs["y"])
            r.outputs["y"] += 1   # the client's copy, not the shared buffer
        again = c.infer("mlp", {"x": _x(1024)})
        np.testing.assert_array_equal(again.outputs["y"], framed.infer("mlp", {"x": _x(1024)}).outputs["y"])
        lanes = _lane_stats(c, want=3)
    assert lanes["requests"] >= 3 and lanes["open"] == 1 and lanes["errors"] == 0


def test_lane_requests_reach_telemetry_with_energy(daemon):
    with _lane_client(daemon) as c:
        for _ in range(20):
            c.infer("mlp", {"x": _x()})
        _lane_stats(c, want=20)
        deadline = time.monotonic() + 10
        rows: list = []
        while time.monotonic() < deadline:
            rows = [r for r in c.history("1h", ["requests"])["requests"] if r.get("kind") == "lane"]
            if sum(r["count"] for r in rows) >= 20:
                break
            time.sleep(0.3)
    assert sum(r["count"] for r in rows) >= 20
    assert all(r["variant"] == "fp32" and r["cpu_s"] >= 0 and r["meter"] for r in rows)


def test_swaps_under_lane_load_lose_nothing_and_lanes_follow_the_variant(daemon):
    failures: list[str] = []
    seen: list[tuple[str, bool]] = []
    stop = threading.Event()

    def load() -> None:
        with _lane_client(daemon) as c:
            while not stop.is_set():
                try:
                    r = c.infer("mlp", {"x": _x()})
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))
                    continue
                seen.append((r.variant, bool(r.extra.get("lane"))))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with daemon.client() as admin:
            for n in range(12):
                admin.pin("mlp", "int8" if n % 2 == 0 else "fp32")
                time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert {v for v, lane in seen if lane} == {"fp32", "int8"}, "lanes reopened to each new worker"
    assert any(not lane for _, lane in seen), "requests cut off by a swap went through the daemon"


def test_a_killed_worker_costs_no_request(daemon):
    with _lane_client(daemon) as c:
        assert c.infer("mlp", {"x": _x()}).extra.get("lane")
        pid = c.status()["models"]["mlp"]["active"]["pid"]
        os.kill(pid, signal.SIGKILL)
        r = c.infer("mlp", {"x": _x()})   # the lane ends: served through the daemon (which retries)
        assert r.variant == "fp32"
        end = time.monotonic() + 20
        while not c.infer("mlp", {"x": _x()}).extra.get("lane"):
            assert time.monotonic() < end, "no lane to the restarted worker"
            time.sleep(0.05)


def test_bad_inputs_on_a_lane_get_the_daemons_error(daemon):
    with _lane_client(daemon) as c:
        with pytest.raises(InvalidParams):
            c.infer("mlp", {"x": np.zeros((1, 7), np.float32)})
        with pytest.raises(NotFound):
            c.infer("nope", {"x": _x()})
        assert c.infer("mlp", {"x": _x()}).extra.get("lane")   # the lane went on


def test_malformed_lane_frames_end_only_that_lane(daemon):
    lane = open_lane(str(daemon.socket), "mlp")
    with daemon.client() as c:
        pid = c.status()["models"]["mlp"]["active"]["pid"]
        res, _ = lane.call("ping", {})
        assert res["pid"] == pid and res["variant"] == "fp32"
        with pytest.raises(InvalidParams):
            lane.call("load", {})                    # not a lane method: an error, the lane goes on
        with pytest.raises(InvalidParams):
            lane.call("run", {"inputs": "x"})
        lane.sock.sendall(b"\xff\xff\xff\x7fgarbage")    # a frame longer than the limit
        with pytest.raises(LaneClosed):
            lane.call("ping", {})
        c.lane_ping("mlp")
        assert c.infer("mlp", {"x": _x()}).extra.get("lane")
        assert c.status()["models"]["mlp"]["active"]["pid"] == pid   # the worker lived on
    raw = open_lane(str(daemon.socket), "mlp")
    raw.sock.shutdown(socket.SHUT_WR)   # a client that leaves mid-way
    with pytest.raises(LaneClosed):
        raw.call("ping", {})


def test_a_lane_to_an_unknown_model_is_refused_and_lanes_can_be_off(daemon):
    with pytest.raises(NotFound):
        open_lane(str(daemon.socket), "nope")
    with Client(daemon.socket, lanes=False) as c:
        assert c.infer("mlp", {"x": _x()}).extra.get("lane") is None


def test_lanes_batch_concurrent_requests_and_each_gets_its_own_rows(tmp_path, tensor_zoo):
    import onnxruntime as ort

    from tests.conftest import start_daemon

    set_serving(tensor_zoo / "mlp", max_batch=8, max_queue_delay_ms=2)
    ref = ort.InferenceSession(str(tensor_zoo / "mlp" / "fp32.onnx"), providers=["CPUExecutionProvider"])
    d = start_daemon(tensor_zoo, tmp_path)
    failures: list[str] = []
    batches: list[int] = []

    def client(i: int) -> None:
        with _lane_client(d) as c:
            for k in range(60):
                x = _x(rows=1 + (i + k) % 2, seed=100 * i + k)
                try:
                    r = c.infer("mlp", {"x": x})
                    np.testing.assert_allclose(r.outputs["y"], ref.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
                    assert r.extra.get("lane") and r.variant == "fp32"
                    batches.append(int(r.extra.get("batch", 1)))
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))
    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with d.client() as c:
            lanes = _lane_stats(c, want=300)
            shown = c.status()["models"]["mlp"]
    finally:
        d.stop()
    assert failures == []
    assert max(batches) > 1, "concurrent lane requests were never stacked"
    assert lanes["batching"]["batches"] >= 1 and lanes["batching"]["max_batch_seen"] <= 8
    assert shown["lanes"]["batching"]["max_batch"] == 8


def test_lane_response_cache_hits_and_dies_with_the_swap(tmp_path, tensor_zoo):
    from tests.conftest import start_daemon

    set_serving(tensor_zoo / "mlp", cache_bytes=1 << 20)
    d = start_daemon(tensor_zoo, tmp_path)
    try:
        with _lane_client(d) as c:
            x = _x()
            first, second = c.infer("mlp", {"x": x}), c.infer("mlp", {"x": x})
            assert first.extra.get("lane") and not first.extra.get("cached")
            assert second.extra.get("cached") is True
            np.testing.assert_array_equal(first.outputs["y"], second.outputs["y"])
            assert not c.infer("mlp", {"x": _x(seed=3)}).extra.get("cached")
            lanes = _lane_stats(c, want=3)
            assert lanes["hits"] == 1 and lanes["cache"]["entries"] == 2
            c.pin("mlp", "int8")
            r = c.infer("mlp", {"x": x})
            while not r.extra.get("lane"):
                r = c.infer("mlp", {"x": x})
            assert r.variant == "int8" and not r.extra.get("cached")   # a new worker, an empty cache
    finally:
        d.stop()


def test_sigterm_answers_a_lane_request_in_flight_then_exits_0(daemon):
    res: dict = {}
    c = _lane_client(daemon)
    big = np.ones((60000, 256), np.float32)   # ~1 s of work: SIGTERM lands while it runs

    def call() -> None:
        res["r"] = c.infer("mlp", {"x": big})

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    assert daemon.stop() == 0
    t.join(30)
    c.close()
    assert res["r"].outputs["y"].shape == (60000, 64) and res["r"].extra.get("lane")


def test_a_lane_is_a_connection_of_its_uid_and_its_client_is_never_evicted_as_idle(tmp_path, tensor_zoo):
    """The lane's lease (the connection that was granted it) counts against max_connections, and the
    connections of a process that holds a lane are not idle: eviction to make room takes another one."""
    import subprocess
    import sys

    from tests.conftest import start_daemon

    access = tmp_path / "access.toml"
    access.write_text("[access]\nmax_connections = 3\n")
    d = start_daemon(tensor_zoo, tmp_path, "--access-config", str(access))
    script = (
        "import sys, numpy as np\n"
        "from agent.client import Client\n"
        "c = Client(sys.argv[1])\n"
        "x = np.ones((1, 256), np.float32)\n"
        "for _ in range(3): r = c.infer('mlp', {'x': x})\n"
        "print('lane', r.extra.get('lane'), flush=True)\n"
        "sys.stdin.readline()\n"                       # the test fills the uid's connections meanwhile
        "print('lane', c.infer('mlp', {'x': x}).extra.get('lane'), c.ping()['pong'], flush=True)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(d.socket)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().split() == ["lane", "True"]   # main connection + lease: 2 of 3
        with Client(d.socket, lanes=False) as b:
            b.ping()
            with Client(d.socket, lanes=False) as c:   # the 4th: the idle one evicted is b, not the holder's
                c.ping()
                with pytest.raises(Exception, match="idle"):
                    b.ping()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["lane", "True", "True"]
    finally:
        holder.kill()
        holder.communicate(timeout=10)   # reaps it and closes its pipes
        d.stop()


def test_a_uid_holds_at_most_max_concurrent_lanes_and_the_rest_of_its_requests_go_framed(tmp_path, tensor_zoo):
    """A lane is a request the daemon does not see begin or end, so lanes are bounded by the uid's
    ``max_concurrent``: a client refused a lane is served through the daemon (where the limit applies to
    each request), and a lane that closes makes room for another."""
    from tests.conftest import start_daemon

    access = tmp_path / "access.toml"
    access.write_text("[access]\nmax_concurrent = 2\nmax_connections = 16\n")
    d = start_daemon(tensor_zoo, tmp_path, "--access-config", str(access))
    try:
        c1, c2, c3 = (_lane_client(d) for _ in range(3))
        assert c1.infer("mlp", {"x": _x()}).extra.get("lane") is True
        assert c2.infer("mlp", {"x": _x()}).extra.get("lane") is True
        r = c3.infer("mlp", {"x": _x(seed=3)})          # its lane is refused: served framed, correctly
        assert not r.extra.get("lane") and r.outputs["y"].shape == (1, 64)
        with pytest.raises(Exception, match="max_concurrent"):
            open_lane(str(d.socket), "mlp")            # the refusal says which limit
        c1.close()
        end = time.monotonic() + 10
        while True:                                    # the daemon sees c1's lease close
            with _lane_client(d) as c4:
                if c4.infer("mlp", {"x": _x()}).extra.get("lane"):
                    break
            assert time.monotonic() < end, "no lane after one was closed"
            time.sleep(0.1)
        assert c2.infer("mlp", {"x": _x()}).extra.get("lane") is True
        c2.close()
        c3.close()
    finally:
        d.stop()
