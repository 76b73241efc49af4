"""Structured logging: one JSON object per line on stderr (journald keeps it as the message)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            d.update(fields)
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str, separators=(",", ":"))


OWN_LOGGERS = ("agent", "__main__")


class ThirdPartyFilter(logging.Filter):
    """Lets other libraries' records through only from ``min_level`` up (apscheduler logs two INFO lines
    per sampler tick, uvicorn one per HTTP request): agentd's log is its own decisions, swaps and errors."""

    def __init__(self, min_level: int) -> None:
        super().__init__()
        self.min_level = min_level

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name in OWN_LOGGERS or record.name.startswith("agent.")
        return own or record.levelno >= self.min_level


def setup(level: str = "info", stream: Any = None, third_party: str | None = None) -> None:
    """JSON lines on ``stream`` at ``level``; third-party loggers at WARNING unless ``third_party`` (or a
    ``debug`` level) says otherwise."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter())
    floor = third_party or ("debug" if level.lower() == "debug" else "warning")
    h.addFilter(ThirdPartyFilter(logging.getLevelName(floor.upper())))
    root.addHandler(h)
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime
