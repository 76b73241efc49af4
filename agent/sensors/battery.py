"""Batteries and external power supplies from ``<sysfs>/class/power_supply``.

Every supply is classified by its ``type`` file, never by its name: ``Battery`` supplies are combined
(peripheral batteries with ``scope`` = ``Device`` and empty slots with ``present`` = 0 are skipped);
``Mains``, ``USB*`` and ``Wireless`` supplies are adapters, whatever they are called (``AC``, ``ADP1``,
``ACAD``, ``ucsi-source-psy-…``).

Both kernel forms are read, in SI units:

* energy form: ``energy_now``/``energy_full`` (µWh) and ``power_now`` (µW);
* charge form: ``charge_now``/``charge_full`` (µAh), ``current_now`` (µA) and ``voltage_now`` (µV);
  energy = charge × voltage and power = current × voltage (never mixing µWh with µA).

``power_w`` is positive while discharging and negative while charging (drivers disagree on the sign
of ``current_now``/``power_now``, so the sign comes from ``status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.sensors._io import Notes, list_dir, natural_key, read_int, read_str
from agent.sensors.snapshot import BatteryState, PowerState

STATUSES = ("Charging", "Discharging", "Full", "Not charging", "Unknown")
ADAPTER_TYPES = ("Mains", "Wireless")  # plus every type starting with "USB"


@dataclass
class _One:
    name: str
    status: str | None
    energy_uwh: float | None
    full_uwh: float | None
    power_uw: float | None
    capacity: int | None


def _is_adapter(kind: str) -> bool:
    return kind in ADAPTER_TYPES or kind.startswith("USB") or kind == "BrickID"


def _read_one(d: Path, name: str, notes: Notes) -> _One:
    status, why = read_str(d / "status")
    if status is not None and status not in STATUSES:
        notes.add("battery.status", f"{name}: unknown status {status[:30]!r}")
        status = "Unknown"
    elif status is None:
        notes.add("battery.status", why)

    energy = full = power = None
    e_now, why_e = read_int(d / "energy_now")
    if e_now is not None or (d / "energy_now").exists():
        # energy form
        e_full, why_f = read_int(d / "energy_full")
        p_now, why_p = read_int(d / "power_now", minimum=None)
        energy = float(e_now) if e_now is not None else None
        full = float(e_full) if e_full else None
        power = abs(float(p_now)) if p_now is not None else None
        notes.add("battery.energy_wh", why_e)
        notes.add("battery.energy_full_wh", why_f)
        notes.add("battery.power_w", why_p)
    else:
        c_now, why_c = read_int(d / "charge_now")
        c_full, why_cf = read_int(d / "charge_full")
        i_now, why_i = read_int(d / "current_now", minimum=None)
        v_now, why_v = read_int(d / "voltage_now")
        if v_now is None or v_now == 0:
            v_min, _ = read_int(d / "voltage_min_design")
            volts = v_min / 1e6 if v_min else None
        else:
            volts = v_now / 1e6
        if c_now is None and not (d / "charge_now").exists():
            notes.add("battery.energy_wh", f"{name}: neither energy_now nor charge_now")
        else:
            notes.add("battery.energy_wh", why_c)
        notes.add("battery.energy_full_wh", why_cf)
        notes.add("battery.power_w", why_i or (why_v if volts is None else None))
        if volts is not None:
            energy = c_now * volts if c_now is not None else None           # µAh × V = µWh
            full = c_full * volts if c_full else None
            power = abs(i_now) * volts if i_now is not None else None       # µA × V = µW
        else:
            notes.add("battery.energy_wh", why_v or f"{name}: no voltage to convert charge to energy")
    cap, why_cap = read_int(d / "capacity")
    if cap is not None and cap > 100:
        why_cap, cap = f"malformed {d / 'capacity'}: {cap} is above 100", None
    if cap is None and (energy is None or not full):
        notes.add("battery.percent", why_cap)
    return _One(name, status, energy, full, power, cap)


def _combined_status(statuses: list[str | None]) -> str | None:
    known = [s for s in statuses if s]
    if not known:
        return None
    for s in ("Discharging", "Charging"):
        if s in known:
            return s
    if all(s == "Full" for s in known):
        return "Full"
    if "Not charging" in known:
        return "Not charging"
    return "Full" if "Full" in known else "Unknown"


def read_power_supplies(sysfs_root: str | Path = "/sys") -> tuple[BatteryState, PowerState, Notes]:
    """Read every power supply; never raises."""
    notes = Notes()
    base = Path(sysfs_root) / "class" / "power_supply"
    names = sorted(list_dir(base), key=natural_key)
    bats: list[_One] = []
    adapters: list[str] = []
    online_any: bool | None = None
    for name in names:
        d = base / name
        kind, why = read_str(d / "type")
        if kind is None:
            notes.add(f"power_supply.{name}", why)
            continue
        if kind == "Battery":
            scope, _ = read_str(d / "scope")
            if scope == "Device":      # a mouse or headset battery, not the system's
                continue
            present, _ = read_str(d / "present")
            if present == "0":
                continue
            bats.append(_read_one(d, name, notes))
        elif _is_adapter(kind):
            adapters.append(name)
            online, why_o = read_int(d / "online")
            if online is None:
                notes.add("power.on_ac", f"{name}: {why_o}")
                continue
            online_any = bool(online) or bool(online_any)

    if not bats:
        notes.add("battery", "no power_supply of type Battery" if names or base.exists()
                  else f"missing {base}")
        battery = BatteryState()
    else:
        energies = [b.energy_uwh for b in bats]
        fulls = [b.full_uwh for b in bats]
        percent: float | None = None
        energy_wh = full_wh = None
        if all(e is not None for e in energies) and all(fulls):
            e_sum = sum(e for e in energies if e is not None)
            f_sum = sum(f for f in fulls if f)
            energy_wh, full_wh = e_sum / 1e6, f_sum / 1e6
            percent = min(100.0, 100.0 * e_sum / f_sum)
        elif all(b.capacity is not None for b in bats):
            percent = sum(float(b.capacity or 0) for b in bats) / len(bats)
        if percent is None:
            notes.add("battery.percent", "no readable energy/charge or capacity")
        status = _combined_status([b.status for b in bats])
        powers = [b.power_uw for b in bats]
        power_w: float | None = None
        if all(p is not None for p in powers):
            total = sum(p for p in powers if p is not None) / 1e6
            power_w = -total if status == "Charging" else total
        battery = BatteryState(present=True, percent=percent, status=status, power_w=power_w,
                               energy_wh=energy_wh, energy_full_wh=full_wh, count=len(bats))

    on_ac = online_any
    if on_ac is None and battery.present and battery.status in ("Discharging", "Charging", "Full"):
        on_ac = battery.status != "Discharging"       # no adapter file: infer from the battery
    if on_ac is None:
        notes.add("power.on_ac", "no readable Mains/USB supply and no battery status")
    return battery, PowerState(on_ac=on_ac, adapters=tuple(adapters)), notes
