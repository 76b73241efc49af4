"""Human output for agentctl: values rounded and with units, long signatures summarised.

Programs use ``--json``; these helpers only shape what a person reads.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from typing import Any


def mb(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.1f} GB" if n >= 10e9 else f"{n / 1e6:.1f} MB"


def ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f} ms" if x < 10 else f"{x:.0f} ms")


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def value(v: Any) -> str:
    """One reading, rounded: floats to 3 significant decimals, containers summarised."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    if isinstance(v, Mapping):
        return " ".join(f"{k}={value(x)}" for k, x in v.items() if x is not None) or "-"
    if isinstance(v, list | tuple):
        return ", ".join(value(x) for x in v) or "-"
    return str(v)


def sensors_lines(s: Mapping[str, Any]) -> list[str]:
    """The sensor snapshot as a few labelled lines with units; unknown readings shown as '-'."""
    def get(k: str) -> Any:
        return s.get(k)

    bat = get("battery_percent")
    battery = "none" if bat is None else f"{bat:.0f} % ({get('battery_status') or '?'})"
    if get("battery_power_w") is not None:
        battery += f", {get('battery_power_w'):.1f} W"
    ac = {True: "on AC", False: "on battery", None: "AC unknown"}[get("power_on_ac")]
    temp = get("thermal_max_c")
    heat = "no sensor" if temp is None and get("thermal_level") is None else \
        f"{get('thermal_level') or '?'}" + (f", {temp:.0f} °C" if temp is not None else "") + \
        (f", headroom {get('thermal_headroom'):.2f}" if get("thermal_headroom") is not None else "")
    mem = get("memory_available_bytes")
    psi = get("memory_psi_some_avg10")
    cpu = get("cpu_util_percent")
    load = get("cpu_load_1m")
    energy = get("energy_meter") or "none"
    if get("energy_power_w") is not None:
        energy += f", {get('energy_power_w'):.1f} W"
    return [f"  battery {battery}; {ac}",
            f"  thermal {heat}",
            f"  memory  {mb(mem)} available" + (f", pressure {psi:.1f} %" if psi is not None else ""),
            f"  cpu     {'-' if cpu is None else f'{cpu:.0f} %'} busy" +
            (f", load {load:.2f}" if load is not None else ""),
            f"  energy meter {energy}   (source: {get('source') or '?'})"]


def policy_lines(p: Mapping[str, Any]) -> list[str]:
    files = ", ".join(p.get("policy_files") or []) or "built-in profiles"
    line = f"  profile {p.get('profile') or p.get('default_profile') or '-'} ({p.get('source') or '-'})" \
           f", objective {p.get('objective') or '-'}; files: {files}"
    out = [line]
    if p.get("rules_active"):
        out.append(f"  rules active: {', '.join(p['rules_active'])}")
    if p.get("holds"):
        out.append("  holds: " + ", ".join(f"{h['profile']} ({h['cookie']})" for h in p["holds"]))
    if p.get("pins"):
        out.append("  pins: " + ", ".join(f"{m}={v}" for m, v in p["pins"].items()))
    if p.get("last_error"):
        out.append(f"  last error: {p['last_error']}")
    return out


_NUMBERED = re.compile(r"^(.*?)(\d+)(.*)$")


def summarise_names(names: Iterable[str]) -> list[str]:
    """Collapse families of numbered names: ``past_key_values.0.key`` … ``.29.value`` -> one entry
    ``past_key_values.N.key|value (60)``; other names are kept as they are, in order."""
    groups: dict[tuple[str, str], list[str]] = {}
    order: list[tuple[str, str] | str] = []
    for n in names:
        m = _NUMBERED.match(n)
        if not m:
            order.append(n)
            continue
        key = (m.group(1), re.sub(r"\d+", "N", m.group(3)))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(n)
    out = []
    for item in order:
        if isinstance(item, str):
            out.append(item)
        elif len(groups[item]) < 3:
            out.extend(groups[item])
        else:
            out.append(f"{item[0]}N{item[1]} ({len(groups[item])})")
    return out


def signature(tensors: list[Mapping[str, Any]]) -> str:
    """Inputs or outputs of a model in one short line: named tensors with shapes; KV-cache families counted."""
    names = [t["name"] for t in tensors]
    by_name = {t["name"]: t for t in tensors}
    parts = []
    for s in summarise_names(names):
        t = by_name.get(s)
        parts.append(f"{s}:{t['dtype']}{list(t['shape'])}" if t is not None else s)
    kv = sum(1 for n in names if "past_key_values" in n or n.startswith("present"))
    text = ", ".join(parts)
    if kv >= 3:
        text += f"  [{kv} KV-cache tensors]"
    return text


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))
