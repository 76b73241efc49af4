"""The SensorSource interface and ``make_source(spec)``, the one place a ``--sensors`` value is parsed.

Specs::

    live                              the real device (``sysfs_root``/``procfs_root`` apply)
    trace:FILE                        replay FILE in real time
    trace:FILE,speed=60,loop=1        60 trace seconds per second, start again at the end
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from agent.errors import ConfigError
from agent.sensors.snapshot import Snapshot


@runtime_checkable
class SensorSource(Protocol):
    """Anything that yields Snapshots. ``read()`` never raises; ``close()`` is idempotent."""

    def read(self) -> Snapshot: ...

    def close(self) -> None: ...


def make_source(spec: str, sysfs_root: str | Path = "/sys", procfs_root: str | Path = "/proc", *,
                clock: Callable[[], float] = time.monotonic) -> SensorSource:
    """Build the source named by ``spec``; a bad spec raises ConfigError(key="sensors")."""
    from agent.sensors.live import LiveSensors
    from agent.sensors.trace import TraceReplay

    spec = (spec or "").strip()
    if spec == "live":
        return LiveSensors(sysfs_root, procfs_root, clock=clock)
    if spec.startswith("trace:"):
        body = spec[len("trace:"):]
        parts = body.split(",")
        # options are the trailing key=value parts; anything before them is the file name
        opts: dict[str, str] = {}
        while len(parts) > 1 and "=" in parts[-1]:
            k, _, v = parts.pop().partition("=")
            k = k.strip()
            if k in opts:
                raise ConfigError(f"option {k!r} given twice in {spec!r}", key="sensors")
            opts[k] = v.strip()
        file = ",".join(parts)
        if not file:
            raise ConfigError(f"expected trace:FILE[,speed=N][,loop=0|1], got {spec!r}", key="sensors")
        unknown = sorted(set(opts) - {"speed", "loop"})
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r} in {spec!r} (known: speed, loop)", key="sensors")
        speed = 1.0
        if "speed" in opts:
            try:
                speed = float(opts["speed"])
            except ValueError:
                speed = float("nan")
            if not (speed > 0 and speed != float("inf")):
                raise ConfigError(f"speed: expected a positive number, got {opts['speed']!r}", key="sensors")
        loop = opts.get("loop", "0")
        if loop not in ("0", "1", "true", "false"):
            raise ConfigError(f"loop: expected 0 or 1, got {loop!r}", key="sensors")
        return TraceReplay(file, speed=speed, clock=clock, loop=loop in ("1", "true"))
    raise ConfigError(f"expected 'live' or 'trace:FILE[,speed=N][,loop=0|1]', got {spec!r}", key="sensors")
