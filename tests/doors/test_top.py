"""``agentctl top`` in a real pseudo-terminal (tmux): live figures change under traffic; q and Ctrl-C quit."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from doors_helpers import LLM, MLP, wait_for

from agent.top import frame, model_figures

pytestmark = pytest.mark.integration
TMUX = shutil.which("tmux")
ROOT = Path(__file__).resolve().parents[2]


class Tmux:
    def __init__(self, cmd: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="agttmux", dir="/tmp"))
        self.sock = self.dir / "t.sock"
        self.rc = self.dir / "rc"
        assert TMUX is not None
        full = f"{cmd}; echo $? > {shlex.quote(str(self.rc))}"
        self.run("new-session", "-d", "-s", "top", "-x", "150", "-y", "40", full)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert TMUX is not None
        return subprocess.run([TMUX, "-S", str(self.sock), "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=30, check=False)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "top").stdout

    def exit_code(self, timeout: float = 15.0) -> int | None:
        got = wait_for(lambda: self.rc.exists() and self.rc.read_text().strip(), timeout=timeout)
        return int(got) if got else None

    def close(self) -> None:
        self.run("kill-server")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def top(doors_daemon: Any) -> Iterator[Tmux]:
    if TMUX is None:
        pytest.skip("tmux is not installed")
    env = f"PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', str(ROOT)))} TERM=xterm-256color"
    t = Tmux(f"env {env} {shlex.quote(sys.executable)} -m agent.cli --socket {shlex.quote(str(doors_daemon.socket))} "
             f"top --interval 0.3")
    yield t
    t.close()


def _row(screen: str, model: str) -> list[str] | None:
    for line in screen.splitlines():
        if line.startswith(model + " "):
            return line.split()
    return None


def test_top_shows_live_figures_that_change_under_traffic_and_q_quits(top, doors_daemon):
    assert wait_for(lambda: _row(top.screen(), MLP), timeout=30), top.screen()
    screen = top.screen()
    assert "MODEL" in screen and "REQ/S" in screen and "P95 MS" in screen and "recent swaps" in screen
    assert re.search(r"sensors \(trace:laptop_workday\.jsonl\): battery \d+%", screen), screen
    assert re.search(rf"^{LLM} +causal-lm +(fp32|int8)@cpu", screen, re.MULTILINE), screen
    total0 = int(_row(screen, MLP)[-1])   # type: ignore[index]
    x = np.ones((1, 16), np.float32)
    with doors_daemon.client() as c:
        for _ in range(30):
            c.infer(MLP, {"x": x})

    def moved() -> list[str] | None:
        row = _row(top.screen(), MLP)
        return row if row and int(row[-1]) >= total0 + 30 and float(row[3]) > 0 else None

    row = wait_for(moved, timeout=30)
    assert row, top.screen()
    assert row[2].endswith("@cpu") and float(row[4]) > 0   # REQ/S and P95 are figures now
    top.run("send-keys", "-t", "top", "q")
    assert top.exit_code() == 0


def test_top_quits_on_ctrl_c_with_exit_0(top):
    assert wait_for(lambda: _row(top.screen(), MLP), timeout=30), top.screen()
    top.run("send-keys", "-t", "top", "C-c")
    assert top.exit_code() == 0


def test_top_once_prints_one_frame_without_a_terminal(doors_daemon):
    out = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(doors_daemon.socket), "top", "--once"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and _row(out.stdout, MLP) and _row(out.stdout, LLM)
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(doors_daemon.socket), "top",
                          "--interval", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "--interval" in bad.stderr
    piped = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(doors_daemon.socket), "top"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert piped.returncode == 0 and "\x1b" not in piped.stdout and _row(piped.stdout, MLP)
    gone = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", "/tmp/no-such-agentd.sock", "top", "--once"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert gone.returncode == 1


def test_figures_come_from_the_last_minute_of_requests():
    now = 1000.0
    rows = [{"ts": now - i * 0.5, "model": "m", "ok": True, "latency_ms": float(i + 1), "joules": 0.5}
            for i in range(20)]   # 20 requests over 10 s, latencies 1..20 ms
    rows += [{"ts": now - 30, "model": "g", "ok": True, "kind": "generate", "latency_ms": 50.0, "tokens": 10,
              "tokens_per_s": 100.0, "joules": 2.0}, {"ts": now - 1, "model": "g", "ok": False, "error": "X"}]
    f = model_figures(rows, now)
    assert f["m"]["rate"] == 2.0 and f["m"]["p95_ms"] == 19.0 and f["m"]["j_per"] == 0.5
    assert f["g"]["tok_s"] == 100.0 and f["g"]["j_per"] == pytest.approx(0.2) and f["g"]["errors"] == 1
    status = {"daemon": {"version": "x", "pid": 1, "uptime_s": 5},
              "models": {"m": {"kind": "tensor", "active": {"variant": "int8", "device": "cpu"}, "requests": 20}},
              "sensors": None}
    lines = frame(status, rows, [{"ts": now, "model": "m", "from": "fp32", "to": "int8", "device": "cpu",
                                  "reason": {"why": "policy", "rule": "battery_low"}}], now)
    text = "\n".join(lines)
    assert "int8@cpu" in text and "fp32 -> int8@cpu  why=policy rule=battery_low" in text
    assert "sensors: no sample yet" in text
