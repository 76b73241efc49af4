"""agentctl and agentd command lines: real processes, real socket."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ctl

pytestmark = pytest.mark.integration


def test_status_models_infer_pin_unpin_history_through_agentctl(daemon, tmp_path):
    st = json.loads(ctl(daemon, "status", "--json").stdout)
    assert st["models"]["mlp"]["active"]["variant"] == "fp32"
    assert "mlp" in ctl(daemon, "models").stdout
    np.save(tmp_path / "x.npy", np.ones((3, 256), np.float32))
    out = json.loads(ctl(daemon, "infer", "mlp", "--input", f"x={tmp_path / 'x.npy'}",
                         "--output", str(tmp_path / "y.npz"), "--json").stdout)
    assert out["variant"] == "fp32" and out["outputs"]["y"]["shape"] == [3, 64]
    assert np.load(tmp_path / "y.npz")["y"].shape == (3, 64)
    ctl(daemon, "pin", "mlp", "int8")
    assert json.loads(ctl(daemon, "status", "--json").stdout)["models"]["mlp"]["pinned"]["variant"] == "int8"
    human = ctl(daemon, "status").stdout
    assert "int8 on cpu" in human and "pinned int8@cpu" in human
    ctl(daemon, "unpin", "mlp")
    hist = json.loads(ctl(daemon, "history", "--since", "10m", "--json").stdout)
    assert [s["to"] for s in hist["swaps"]][:2] == ["int8", "fp32"]
    assert len(hist["requests"]) == 1 and hist["requests"][0]["ok"] == 1


@pytest.mark.parametrize("args,msg", [
    (["infer", "mlp", "--input", "x"], "expected NAME=FILE.npy"),
    (["infer", "mlp", "--input", "x=/nonexistent.npy"], "cannot read"),
    (["history", "--since", "soon"], "expected a duration"),
])
def test_bad_cli_input_exits_2_with_a_clear_message(daemon, args, msg):
    p = ctl(daemon, *args, check=False)
    assert p.returncode == 2 and msg in p.stderr


def test_agent_errors_exit_1(daemon):
    p = ctl(daemon, "pin", "mlp", "int3", check=False)
    assert p.returncode == 1 and "NotFound" in p.stderr and "int3" in p.stderr


def test_unreachable_socket_is_a_clear_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(tmp_path / "none.sock"), "status"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "cannot connect to agentd" in p.stderr


@pytest.mark.parametrize("args,msg", [
    (["--threads", "0"], "--threads: expected >= 1"),
    (["--device", "mlp"], "expected MODEL=DEVICE"),
    (["--max-frame", "abc"], "invalid int value"),
])
def test_agentd_rejects_bad_flags(args, msg, tmp_path):
    p = subprocess.run([sys.executable, "-m", "agent.daemon", "--zoo", str(tmp_path), "--socket",
                        str(tmp_path / "s"), *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and msg in p.stderr


def test_events_stream_shows_swaps_with_reason(daemon):
    import threading

    got = []

    def listen():
        with daemon.client() as c:
            for ev in c.events():
                got.append(ev)
                if ev.get("event") == "swap":
                    return

    t = threading.Thread(target=listen)
    t.start()
    import time

    time.sleep(0.3)
    with daemon.client() as c:
        c.pin("mlp", "int8")
    t.join(30)
    assert got and got[-1]["to"] == "int8" and got[-1]["reason"]["why"] == "pin"


def test_sigterm_drains_in_flight_requests_then_exits_0(daemon):
    import threading

    res = {}

    def call():
        with daemon.client() as c:
            res["r"] = c.infer("mlp", {"x": np.ones((40000, 256), np.float32)})

    t = threading.Thread(target=call)
    t.start()
    import time

    with daemon.client() as c:   # SIGTERM only once the request is being served
        deadline = time.monotonic() + 30
        while c.status()["models"]["mlp"]["active"]["inflight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.002)
    assert daemon.stop() == 0
    t.join(30)
    assert res["r"].outputs["y"].shape == (40000, 64)
    assert not daemon.socket.exists()
