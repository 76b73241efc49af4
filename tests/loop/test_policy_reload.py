"""A reload validates first and swaps second: a broken policy file leaves the old policy running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import start_daemon

pytestmark = pytest.mark.integration

GOOD = """
schema = 1
default = "balanced"
[profiles.balanced]
objective = "min_energy"
min_quality = 0.99
"""

BROKEN = GOOD.replace("min_quality = 0.99", "min_quality = 0.99\nmax_latency_p95_ms = \"fast\"")


@pytest.mark.parametrize("how", ["ipc", "sighup"])
def test_broken_policy_reload_keeps_old_policy_and_status_shows_located_error(tensor_zoo, tmp_path, how):
    pol = tmp_path / "policy.toml"
    pol.write_text(GOOD)
    d = start_daemon(tensor_zoo, tmp_path, "--policy", str(pol))
    try:
        with d.client() as c:
            before = c.status()["policy"]
            pol.write_text(BROKEN)
            if how == "ipc":
                res = c.reload()
                assert "max_latency_p95_ms" in res["policy_error"]
            else:
                d.proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 20
                while not c.status()["daemon"]["reload_error"]:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            st = c.status()
            err = st["daemon"]["reload_error"]
            assert f"{pol}:7: profiles.balanced.max_latency_p95_ms: expected" in err
            assert st["policy"]["default_profile"] == before["default_profile"]
            assert st["policy"]["last_error"] == err
            # still serving, still deciding
            assert c.status()["models"]["mlp"]["active"]["alive"]
        human = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(d.socket), "status"],
                               capture_output=True, text=True, timeout=60).stdout
        assert "last reload failed:" in human and "policy.toml:7" in human
        pol.write_text(GOOD)   # a good file clears the error
        with d.client() as c:
            assert c.reload()["policy_error"] is None
            assert c.status()["daemon"]["reload_error"] is None
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("flag,value,msg", [
    ("--policy", "BROKEN", "max_latency_p95_ms: expected"),
    ("--sensors", "trace:/nonexistent.jsonl", "nonexistent"),
    ("--sensors", "bluetooth", "expected 'live' or 'trace:FILE"),
])
def test_agentd_refuses_to_start_on_bad_policy_or_sensor_spec(tensor_zoo, tmp_path, flag, value, msg):
    if value == "BROKEN":
        value = str(tmp_path / "p.toml")
        (tmp_path / "p.toml").write_text(BROKEN)
    p = subprocess.run([sys.executable, "-m", "agent.daemon", "--zoo", str(tensor_zoo), "--socket",
                        str(tmp_path / "s.sock"), "--state-dir", str(tmp_path / "st"), flag, value],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and msg in p.stderr
    assert not (tmp_path / "s.sock").exists()
