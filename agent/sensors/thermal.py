"""Thermal zones from ``<sysfs>/class/thermal/thermal_zone*`` with an Android-style level and headroom.

Per zone (temperatures in °C; trips of type ``passive``, ``hot`` and ``critical`` are used, ``active``
trips only start fans and are kept in ``trips`` but do not set the level):

* the **severe** temperature S is the lowest passive trip; without one, the hot trip; without one,
  critical − 15 °C. A zone with none of these trips gives no level (its temperature still counts in
  ``max_c``).
* **headroom** = (t − (S − 30)) / 30, floored at 0: 1.0 exactly at S, +1/30 per °C (the normalisation
  Android's thermal service uses: 30 °C between headroom 0 and 1).
* **level**: ``shutdown`` at or above the critical trip C; ``emergency`` at or above the hot trip (or
  C − 5 without one); ``critical`` at or above S + (C − S)/2 (S + 10 without C); ``severe`` at or
  above S; ``moderate`` for headroom ≥ 0.9 (within 3 °C of S); ``light`` for headroom ≥ 0.75
  (within 7.5 °C); else ``none``. Thresholds are kept monotonic.

The device's level and headroom are the worst over all zones; ``max_c`` is the hottest zone.
:class:`ThermalReader` (used by LiveSensors) caches the zone list and trip points for a minute, so a
tick reads one ``temp`` file per zone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.sensors._io import Notes, list_dir, natural_key, read_int, read_str
from agent.sensors.snapshot import THERMAL_LEVELS, ThermalState, ThermalZone

HEADROOM_SPAN_C = 30.0
MIN_C, MAX_C = -60.0, 200.0   # outside this a reading is a driver sentinel, not a temperature


def zone_level(temp_c: float, trips: tuple[tuple[str, float], ...]) -> tuple[str, float] | None:
    """(level, headroom) for one zone, or None when it has no passive/hot/critical trip."""
    passive = [c for k, c in trips if k == "passive"]
    hot = [c for k, c in trips if k == "hot"]
    crit = [c for k, c in trips if k == "critical"]
    c_trip = min(crit) if crit else None
    h_trip = min(hot) if hot else None
    if passive:
        severe = min(passive)
    elif h_trip is not None:
        severe = h_trip
    elif c_trip is not None:
        severe = c_trip - 15.0
    else:
        return None
    headroom = max(0.0, (temp_c - (severe - HEADROOM_SPAN_C)) / HEADROOM_SPAN_C)
    critical = severe + (c_trip - severe) / 2 if c_trip is not None and c_trip > severe else severe + 10.0
    emergency = h_trip if h_trip is not None and h_trip > severe else (
        c_trip - 5.0 if c_trip is not None else critical + 10.0)
    emergency = max(emergency, critical)
    shutdown = max(c_trip, emergency) if c_trip is not None else None
    if shutdown is not None and temp_c >= shutdown:
        level = "shutdown"
    elif temp_c >= emergency:
        level = "emergency"
    elif temp_c >= critical:
        level = "critical"
    elif temp_c >= severe:
        level = "severe"
    elif headroom >= 0.9:
        level = "moderate"
    elif headroom >= 0.75:
        level = "light"
    else:
        level = "none"
    return level, headroom


def _millic(path: Path | str) -> tuple[float | None, str | None]:
    v, why = read_int(path, minimum=None)
    if v is None:
        return None, why
    c = v / 1000.0
    if not MIN_C <= c <= MAX_C:
        return None, f"implausible {path}: {v}"
    return c, None


@dataclass(frozen=True)
class _ZoneInfo:
    name: str
    type: str
    temp_path: str
    trips: tuple[tuple[str, float], ...]


def discover_zones(sysfs_root: str | Path = "/sys") -> tuple[list[_ZoneInfo], bool]:
    """The enabled zones with their types and valid trip points; and whether the thermal class exists."""
    base = Path(sysfs_root) / "class" / "thermal"
    out: list[_ZoneInfo] = []
    for name in sorted((n for n in list_dir(base) if n.startswith("thermal_zone")), key=natural_key):
        d = base / name
        mode, _ = read_str(d / "mode")
        if mode == "disabled":
            continue
        kind, _ = read_str(d / "type")
        trips: list[tuple[str, float]] = []
        for entry in list_dir(d):
            if entry.startswith("trip_point_") and entry.endswith("_type"):
                ttype, _ = read_str(d / entry)
                tc, _ = _millic(d / (entry[: -len("_type")] + "_temp"))
                if ttype and tc is not None and tc > 0:
                    trips.append((ttype, tc))
        trips.sort(key=lambda kc: kc[1])
        out.append(_ZoneInfo(name, kind or "unknown", str(d / "temp"), tuple(trips)))
    return out, base.exists()


class ThermalReader:
    """Caches the zone list and trip points (re-scanned every ``rescan_s``); reads temperatures each time."""

    def __init__(self, sysfs_root: str | Path = "/sys", rescan_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sysfs_root, self.rescan_s, self._clock = sysfs_root, rescan_s, clock
        self._zones: list[_ZoneInfo] | None = None
        self._exists = False
        self._at = 0.0

    def read(self) -> tuple[ThermalState, Notes]:
        now = self._clock()
        if self._zones is None or now - self._at >= self.rescan_s:
            self._zones, self._exists = discover_zones(self.sysfs_root)
            self._at = now
        return _evaluate(self._zones, self._exists, Path(self.sysfs_root) / "class" / "thermal")


def read_thermal(sysfs_root: str | Path = "/sys") -> tuple[ThermalState, Notes]:
    """Read every thermal zone (discovering them afresh); never raises."""
    zones, exists = discover_zones(sysfs_root)
    return _evaluate(zones, exists, Path(sysfs_root) / "class" / "thermal")


def _evaluate(infos: list[_ZoneInfo], exists: bool, base: Path) -> tuple[ThermalState, Notes]:
    notes = Notes()
    zones: list[ThermalZone] = []
    worst: tuple[int, float] | None = None
    for info in infos:
        temp, why = _millic(info.temp_path)
        if temp is None:
            notes.add(f"thermal.{info.name}", why)
        zones.append(ThermalZone(name=info.name, type=info.type, temp_c=temp, trips=info.trips))
        if temp is not None:
            lh = zone_level(temp, info.trips)
            if lh is not None:
                rank = THERMAL_LEVELS.index(lh[0])
                worst = (max(worst[0], rank), max(worst[1], lh[1])) if worst else (rank, lh[1])
    temps = [z.temp_c for z in zones if z.temp_c is not None]
    if not zones:
        notes.add("thermal", "no thermal zones" if exists else f"missing {base}")
    elif not temps:
        notes.add("thermal.max_c", "no readable zone temperature")
    if worst is None and zones:
        notes.add("thermal.level", "no zone with a readable temperature and passive/hot/critical trip")
    state = ThermalState(
        level=THERMAL_LEVELS[worst[0]] if worst else None,
        headroom=round(worst[1], 4) if worst else None,
        max_c=max(temps) if temps else None,
        zones=tuple(zones),
    )
    return state, notes
