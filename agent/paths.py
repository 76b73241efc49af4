"""Default locations, shared by agentd, agentctl and the systemd units.

Overridable by flags and environment variables: ``AGENT_SOCKET``, ``AGENT_STATE_DIR`` (systemd sets
``STATE_DIRECTORY``), ``AGENT_ZOO``, ``AGENT_POLICY`` (systemd sets ``CONFIGURATION_DIRECTORY``).
"""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_SOCKET = "/run/ondevice-agent/agent.sock"
SYSTEM_STATE = "/var/lib/ondevice-agent"


def default_socket() -> Path:
    return Path(os.environ.get("AGENT_SOCKET") or SYSTEM_SOCKET)


def default_state_dir() -> Path:
    env = os.environ.get("AGENT_STATE_DIR") or (os.environ.get("STATE_DIRECTORY", "").split(":")[0] or None)
    return Path(env or SYSTEM_STATE)


def default_zoo(state_dir: Path | None = None) -> Path:
    env = os.environ.get("AGENT_ZOO")
    return Path(env) if env else (state_dir or default_state_dir()) / "zoo"
