"""Default locations, shared by agentd, agentctl, the zoo tools and the systemd units.

Run as a system service (root, or systemd's ``STATE_DIRECTORY``/``RUNTIME_DIRECTORY``), the agent uses
``/var/lib/ondevice-agent`` and ``/run/ondevice-agent/agent.sock``; run by a user, the XDG directories
(``~/.local/state/ondevice-agent``, ``$XDG_RUNTIME_DIR/ondevice-agent/agent.sock``). Environment
overrides: ``AGENT_SOCKET``, ``AGENT_STATE_DIR``, ``AGENT_ZOO``.
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_SOCKET = "/run/ondevice-agent/agent.sock"
SYSTEM_STATE = "/var/lib/ondevice-agent"


def _system() -> bool:
    return os.geteuid() == 0


def default_socket() -> Path:
    if os.environ.get("AGENT_SOCKET"):
        return Path(os.environ["AGENT_SOCKET"])
    rt = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if rt:
        return Path(rt) / "agent.sock"
    if _system():
        return Path(SYSTEM_SOCKET)
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/ondevice-agent-{os.getuid()}"
    return Path(base) / "ondevice-agent" / "agent.sock"


def default_state_dir() -> Path:
    env = os.environ.get("AGENT_STATE_DIR") or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if env:
        return Path(env)
    if _system():
        return Path(SYSTEM_STATE)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ondevice-agent"


def default_zoo(state_dir: Path | None = None) -> Path:
    env = os.environ.get("AGENT_ZOO")
    return Path(env) if env else (state_dir or default_state_dir()) / "zoo"
