"""Starting a real KServe v2 server (KServe's ModelServer wrapping onnxruntime) on loopback for tests.

The KServe ModelServer (PyPI ``kserve``) pins dependencies the agent's own venv must not take (psutil < 6),
so it lives in its own interpreter: ``$AGENT_KSERVE_PYTHON``, else ``.venv-kserve/bin/python`` in the
repository (``scripts/test`` creates it). Without one, the tests that need a server skip and say so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("kserve_onnx.py")


def kserve_python() -> str | None:
    cand = [os.environ.get("AGENT_KSERVE_PYTHON", ""), str(ROOT / ".venv-kserve" / "bin" / "python")]
    for p in cand:
        if p and Path(p).is_file():
            r = subprocess.run([p, "-c", "import kserve, onnxruntime"], capture_output=True, timeout=120, check=False)
            if r.returncode == 0:
                return p
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class KServe:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_kserve(models: dict[str, Path], log: Path, python: str | None = None, port: int | None = None) -> KServe:
    py = python or kserve_python()
    if py is None:
        pytest.skip("no Python with the kserve package (set AGENT_KSERVE_PYTHON or run scripts/test, "
                    "which creates .venv-kserve)")
    port = port or free_port()
    cmd = [py, str(SERVER), *[a for n, p in models.items() for a in ("--serve", f"{n}={p}")],
           "--http_port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(log.parent))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("kserve server exited:\n" + log.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return KServe(proc, url, log)
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    proc.wait(10)
    raise AssertionError("kserve server did not become ready:\n" + log.read_text(errors="replace")[-3000:])
