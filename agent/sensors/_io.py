"""Small, never-raising file readers shared by the sensor modules.

Every reader returns ``(value, None)`` or ``(None, reason)``: a missing file, a directory where a file
was expected, a permission error, text that is not a number, an empty file or a value out of range all
become a short reason string. Readers collect these in :class:`Notes`, which ends up in
``Snapshot.reasons``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

Read = tuple[str | None, str | None]


class Notes:
    """Ordered ``field -> reason`` pairs; the first reason given for a field wins."""

    def __init__(self) -> None:
        self._d: dict[str, str] = {}

    def add(self, field: str, why: str | None) -> None:
        if why and field not in self._d:
            self._d[field] = why

    def items(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._d.items())

    def __contains__(self, field: str) -> bool:
        return field in self._d

    def get(self, field: str) -> str | None:
        return self._d.get(field)


def read_str(path: Path | str) -> Read:
    """The stripped text of a small sysfs/procfs file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(65536)
    except FileNotFoundError:
        return None, f"missing {path}"
    except IsADirectoryError:
        return None, f"unreadable {path}: is a directory"
    except PermissionError:
        return None, f"unreadable {path}: permission denied"
    except OSError as e:  # EIO, ENODEV, EAGAIN from drivers
        return None, f"unreadable {path}: {e.strerror or e}"
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, f"malformed {path}: not text"
    if not text:
        return None, f"malformed {path}: empty"
    return text, None


def read_int(path: Path | str, *, minimum: int | None = 0) -> tuple[int | None, str | None]:
    """An integer file (sysfs units: µW, µWh, m°C, kHz ...); below ``minimum`` is rejected."""
    text, why = read_str(path)
    if text is None:
        return None, why
    try:
        value = int(text)
    except ValueError:
        return None, f"malformed {path}: {text[:40]!r} is not an integer"
    if minimum is not None and value < minimum:
        return None, f"malformed {path}: {value} is below {minimum}"
    return value, None


def parse_float(text: str, where: str) -> tuple[float | None, str | None]:
    try:
        value = float(text)
    except ValueError:
        return None, f"malformed {where}: {text[:40]!r} is not a number"
    if not math.isfinite(value):
        return None, f"malformed {where}: {text[:40]!r} is not finite"
    return value, None


def list_dir(path: Path) -> list[str]:
    """Sorted entries of a directory; [] when it is missing or unreadable."""
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def natural_key(name: str) -> tuple[str, int]:
    """Sort ``thermal_zone10`` after ``thermal_zone9``."""
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return head, int(tail) if tail else -1


def parse_cpu_list(text: str) -> tuple[int, ...] | None:
    """``"0-3,6,8-9"`` -> (0, 1, 2, 3, 6, 8, 9); None when malformed."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if lo < 0 or hi < lo:
                    return None
                out.extend(range(lo, hi + 1))
            else:
                n = int(part)
                if n < 0:
                    return None
                out.append(n)
    except ValueError:
        return None
    return tuple(sorted(set(out)))
