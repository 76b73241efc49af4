"""agentd's configuration: one record, built by ``agent.daemon`` from the command line (or by tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.ipc import protocol as P


@dataclass
class Config:
    zoo: Path
    socket: Path
    state_dir: Path
    policy: list[Path] = field(default_factory=list)
    sensors: str = "live"
    sysfs_root: str = "/sys"
    procfs_root: str = "/proc"
    sample_interval_s: float = 1.0
    threads: int | None = None
    max_frame: int = P.DEFAULT_MAX_FRAME
    max_inflight: int = 64
    drain_timeout: float = 30.0
    headroom_bytes: int = 256 << 20
    spare_workers: int = 1
    retention_s: float = 7 * 86400
    devices: dict[str, str] = field(default_factory=dict)   # model -> initial device
    http: str | None = None        # OpenAI-compatible endpoint: "127.0.0.1:8077" | "unix:PATH" (None: off)
    request_timeout_s: float = 10.0   # floor of every model's default deadline (agent/runtime/deadlines.py)
    hang_after_s: float = 3.0         # a worker silent this long (no heartbeat) is declared hung
    frame_timeout_s: float = 5.0      # a client's frame must be complete this long after its first byte
    stall_timeout_s: float = 5.0      # a client that leaves its replies unread this long is closed
    require_models: bool = False   # a zoo with no loadable model is an error (else a warning)
