"""A new user's first hour on a fresh clone: the README's first command, then `agentctl status` by name."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# a new .venv (pip installs the demo extra) and the SmolLM2 + Silero VAD builds: 10-20 minutes
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_fresh_clone_demo_then_agentctl_by_name_in_a_fresh_shell(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    home = tmp_path / "home"
    home.mkdir()
    # a user whose PATH has ~/.local/bin (Debian's and Ubuntu's default .profile add it once it exists)
    path = f"{home}/.local/bin:/usr/local/bin:/usr/bin:/bin"
    env = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8",
           "AGENT_STATE_DIR": str(tmp_path / "state"), "AGENT_SOCKET": str(tmp_path / "run" / "agent.sock")}
    demo = subprocess.run(["scripts/demo", "--duration", "60", "--plain", "--keep-serving"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=1800)
    pid = None
    try:
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "agentctl and agentd are on your PATH" in demo.stderr
        line = next(x for x in demo.stdout.splitlines() if x.startswith("agentd keeps serving"))
        pid = int(line.split("pid ")[1].split(",")[0])
        # a fresh shell: nothing of the demo's environment but HOME, PATH and the agent's locations
        st = subprocess.run(["bash", "-c", "agentctl status"], cwd=home, env=env, capture_output=True,
                            text=True, timeout=120)
        assert st.returncode == 0, st.stderr
        assert "smollm2 [causal-lm]  active:" in st.stdout and "silero_vad [tensor]  active:" in st.stdout
        assert shutil.which("agentctl", path=path) == str(home / ".local" / "bin" / "agentctl")
    finally:
        if pid is not None:
            os.kill(pid, 15)
