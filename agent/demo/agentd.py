"""The demo's moving parts: agentd as a child process, the chat workload, the event follower."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about a laptop battery.",
    "Explain in two sentences why the sky is blue.",
    "Give three tips for saving energy on a laptop.",
    "What is 12 times 12?",
    "Name three planets of the solar system.",
    "Summarise what a thermostat does in one sentence.",
    "Suggest a name for a friendly robot.",
)


@dataclass
class Plan:
    model: str
    recipe: Path
    zoo: Path
    out: Path
    policy: list[Path]
    sensors: str
    sensors_note: str
    trace: bool
    cores: list[int]
    sysfs_root: str = "/sys"


class DemoError(AgentError):
    """The demo could not run (exit status 1); the message says what to do."""


def serve_in_background(zoo: Path, policy: list[Path], socket: Path, state: Path) -> tuple[int, Path]:
    """Start a detached agentd on live sensors (it outlives the demo): (pid, log path). Waits until it
    answers, so the next ``agentctl status`` finds it."""
    from agent.client import Client, wait_for_socket

    log_path = state / "agentd.log"
    state.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agent.daemon", "--zoo", str(zoo), "--socket", str(socket),
           "--state-dir", str(state)]
    for p in policy:
        cmd += ["--policy", str(p)]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_for_socket(socket, timeout=300)
        with Client(socket, timeout=30) as c:
            c.status()
    except AgentError as e:
        rc = proc.poll()
        raise DemoError(f"background agentd did not start ({e}; exit {rc}); see {log_path}") from None
    return proc.pid, log_path


class Agentd:
    """agentd as a child process on a private socket; its log goes to OUT/agentd.log."""

    def __init__(self, plan: Plan, socket: Path | None = None) -> None:
        self.sock_dir: Path | None = None
        if socket is None:
            self.sock_dir = Path(tempfile.mkdtemp(prefix="agentdemo-"))
            socket = self.sock_dir / "agent.sock"
        self.socket = socket
        self.log_path = plan.out / "agentd.log"
        cmd = [sys.executable, "-m", "agent.daemon", "--zoo", str(plan.zoo), "--socket", str(self.socket),
               "--state-dir", str(plan.out), "--sensors", plan.sensors, "--sample-interval", "0.5",
               "--spare-workers", "1", "--sysfs-root", plan.sysfs_root]
        if plan.cores:
            cmd += ["--threads", str(len(plan.cores))]
        for p in plan.policy:
            cmd += ["--policy", str(p)]
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("LISTEN_FDS", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 300.0) -> None:
        from agent.client import Client

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.alive():
                raise DemoError(f"agentd exited with status {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists():
                try:
                    with Client(self.socket, timeout=10) as c:
                        c.status()
                    return
                except AgentError:
                    pass
            time.sleep(0.2)
        raise DemoError(f"agentd did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self.sock_dir is not None:
            try:
                self.socket.unlink(missing_ok=True)
                self.sock_dir.rmdir()
            except OSError:
                pass
        return rc


def run_workload(sock: Path, model: str, rec: Any, stop: threading.Event, max_tokens: int) -> None:
    """Chat prompts in a loop until ``stop``; each reply is one Generation in ``rec``."""
    from agent.client import Client
    from agent.demo.record import Generation

    i = 0
    try:
        client = Client(sock, timeout=120)
    except AgentError as e:
        rec.errors.append(f"workload: {e}")
        return
    with client:
        while not stop.is_set():
            prompt = PROMPTS[i % len(PROMPTS)]
            t0 = rec.now()
            parts: list[str] = []
            final = None
            try:
                for ch in client.generate(model, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=max_tokens, temperature=0.7, top_p=0.9, seed=i):
                    if ch.result is not None:
                        final = ch
                        break
                    if stop.is_set():   # the demo is over: cancel this reply (the client tells agentd)
                        break
                    parts.append(ch.text)
                    rec.last_text = f"» {prompt}\n" + "".join(parts)
            except AgentError as e:
                rec.errors.append(f"generate: {type(e).__name__}: {e}")
                if stop.wait(0.5):
                    break
                i += 1
                continue
            i += 1
            if final is None or final.result is None:
                continue
            res = final.result
            usage = res.get("usage") or {}
            toks = int(usage.get("completion_tokens") or 0)
            t1 = rec.now()
            tps = usage.get("decode_tokens_per_s") or (toks / (t1 - t0) if t1 > t0 and toks else None)
            text = res.get("text") or "".join(parts) + (final.text or "")
            rec.add_generation(Generation(t0, t1, res.get("variant"), res.get("device"), toks, tps,
                                          usage.get("ttft_ms"), res.get("joules"), res.get("meter"),
                                          f"» {prompt}\n{text}", res.get("finish_reason")))


def follow_events(sock: Path, q: queue.Queue[dict[str, Any]]) -> None:
    from agent.client import Client

    try:
        with Client(sock, timeout=None) as c:
            for ev in c.events():
                q.put(ev)
    except AgentError:
        return
