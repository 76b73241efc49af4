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
"""

from __future__ import annotations

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


def _millic(path: Path) -> tuple[float | None, str | None]:
    v, why = read_int(path, minimum=None)
    if v is None:
        return None, why
    c = v / 1000.0
    if not MIN_C <= c <= MAX_C:
        return None, f"implausible {path}: {v}"
    return c, None


def read_thermal(sysfs_root: str | Path = "/sys") -> tuple[ThermalState, Notes]:
    """Read every thermal zone; never raises."""
    notes = Notes()
    base = Path(sysfs_root) / "class" / "thermal"
    zones: list[ThermalZone] = []
    worst: tuple[int, float] | None = None
    for name in sorted((n for n in list_dir(base) if n.startswith("thermal_zone")), key=natural_key):
        d = base / name
        kind, _ = read_str(d / "type")
        mode, _ = read_str(d / "mode")
        if mode == "disabled":
            continue
        temp, why = _millic(d / "temp")
        if temp is None:
            notes.add(f"thermal.{name}", why)
        trips: list[tuple[str, float]] = []
        for entry in list_dir(d):
            if entry.startswith("trip_point_") and entry.endswith("_type"):
                ttype, _ = read_str(d / entry)
                tc, _ = _millic(d / (entry[: -len("_type")] + "_temp"))
                if ttype and tc is not None and tc > 0:
                    trips.append((ttype, tc))
        trips.sort(key=lambda kc: kc[1])
        zones.append(ThermalZone(name=name, type=kind or "unknown", temp_c=temp, trips=tuple(trips)))
        if temp is not None:
            lh = zone_level(temp, tuple(trips))
            if lh is not None:
                rank = THERMAL_LEVELS.index(lh[0])
                worst = (max(worst[0], rank), max(worst[1], lh[1])) if worst else (rank, lh[1])
    temps = [z.temp_c for z in zones if z.temp_c is not None]
    if not zones:
        notes.add("thermal", "no thermal zones" if base.exists() else f"missing {base}")
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
