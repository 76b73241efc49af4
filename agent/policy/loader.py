"""Policy files: strict TOML parsing and validation (every error is ``file:line: key: expected ..., got ...``).

Format (see docs/POLICY.md and policies/example-annotated.toml)::

    schema = 1                      # optional; only 1
    default = "balanced"            # the profile used when no rule selects one
    description = "..."
    [switching]
    min_dwell_s = 30                # no swap of a model within this long of its previous swap
    debounce_s = 3                  # a rule changes state only after its condition held this long
    swap_power_w = 10               # power while loading a variant: a swap costs load_ms x this
    payback_horizon_s = 30          # min_energy swaps only if the saving over this long pays the swap
    [switching.margins]             # hysteresis on the objective
    energy = 0.10; latency = 0.10; quality = 0.002
    [profiles.NAME]
    include = "balanced"            # inherit every key, override what is given here
    objective = "min_energy"        # min_energy | min_latency | max_quality
    min_quality = 0.99              # relative to the reference variant, 0..1
    max_latency_p95_ms = 250        # the p95 latency SLO
    memory_headroom_mb = 512
    allow_devices = ["cpu", "npu"]; deny_devices = ["gpu"]
    thermal_ceiling = "severe"      # at/above it the objective becomes min_energy
    standby = true                  # warm standby of the fastest variant (causal-lm, deadline demand)
    [[rules]]
    name = "low-battery"
    when = 'battery.percent < 20 && !power.on_ac'     # CEL over the Snapshot
    exit_when = 'battery.percent > 25 || power.on_ac' # optional hysteresis
    profile = "power-saver"         # and/or:
    [rules.tighten]                 # the constraint keys above, minus objective/include
    min_quality = 0.995

Several files form one policy: later files redefine profiles of the same name, add rules after the
earlier ones, and override ``default`` / ``[switching]`` when they give them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, PolicyError
from agent.policy.conditions import THERMAL_LEVELS, Activation, Condition, ConditionError, sample_snapshot
from agent.policy.model import (
    DEVICES,
    OBJECTIVES,
    Constraints,
    Margins,
    Policy,
    Profile,
    Rule,
    Switching,
    builtin_profiles,
)
from agent.tomlfile import Checker, TomlDoc

_CONSTRAINT_KEYS = {"min_quality", "max_latency_p95_ms", "memory_headroom_mb", "allow_devices", "deny_devices",
                    "thermal_ceiling"}
_PROFILE_KEYS = _CONSTRAINT_KEYS | {"objective", "include", "description", "standby"}
_RULE_KEYS = {"name", "when", "exit_when", "profile", "tighten", "debounce_s", "exit_debounce_s", "description"}


def _builtin_raw() -> dict[str, dict[str, Any]]:
    """The built-in profiles as raw tables, so file profiles can ``include`` them."""
    return {
        name: {"objective": p.objective, "description": p.description,
               **{k: v for k, v in p.constraints.describe().items() if v not in (None, [])}}
        for name, p in builtin_profiles().items()
    }


@dataclass
class _Part:
    """One file's contribution before merging."""

    doc: TomlDoc
    default: tuple[str, Checker] | None = None
    switching: Switching | None = None
    profiles: dict[str, Checker] = field(default_factory=dict)
    rules: list[Checker] = field(default_factory=list)


def _num(c: Checker, key: str, lo: float, hi: float) -> float | None:
    """An optional number in lo..hi; NaN is refused too (Checker.num's range test lets it through)."""
    v = c.num(key, required=False, lo=lo, hi=hi)
    if v is not None and math.isnan(v):
        raise c.error(key, f"expected a number in {lo}..{hi}, got nan")
    return None if v is None else float(v)


def _devices(c: Checker, key: str) -> frozenset[str] | None:
    v = c.list_of_str(key)
    if v is None:
        return None
    for d in v:
        if d not in DEVICES:
            raise c.error(key, f"expected devices from {', '.join(DEVICES)}, got {d!r}")
    return frozenset(v)


def _constraints(c: Checker, raw: dict[str, Any] | None = None) -> Constraints:
    """Constraints from ``c`` (values from ``raw`` when given: an include-merged table)."""
    src = Checker(c.doc, raw, c.path) if raw is not None else c
    q = _num(src, "min_quality", 0, 1)
    slo = _num(src, "max_latency_p95_ms", 0, 3_600_000)
    if slo is not None and slo <= 0:
        raise src.error("max_latency_p95_ms", f"expected a number greater than 0, got {slo}")
    head = _num(src, "memory_headroom_mb", 0, 10_000_000)
    ceil = src.str("thermal_ceiling", required=False, choices=THERMAL_LEVELS)
    allow = _devices(src, "allow_devices")
    deny = _devices(src, "deny_devices") or frozenset()
    if allow is not None and not (allow - deny):
        raise src.error("deny_devices", f"expected at least one allowed device left, got allow {sorted(allow)} "
                                        f"minus deny {sorted(deny)} = none")
    return Constraints(min_quality=q, max_latency_p95_ms=slo, memory_headroom_mb=head, allow_devices=allow,
                       deny_devices=deny, thermal_ceiling=ceil)


def _switching(c: Checker) -> Switching:
    c.only({"min_dwell_s", "debounce_s", "margins", "swap_power_w", "payback_horizon_s"})
    base = Switching()
    margins = base.margins
    mc = c.table_of("margins")
    if mc is not None:
        mc.only({"energy", "latency", "quality"})
        vals = {k: _num(mc, k, 0, 1) for k in ("energy", "latency", "quality")}
        margins = Margins(**{k: float(getattr(margins, k) if v is None else v) for k, v in vals.items()})
    dwell = _num(c, "min_dwell_s", 0, 3600)
    deb = _num(c, "debounce_s", 0, 600)
    watts = _num(c, "swap_power_w", 0, 10000)
    horizon = _num(c, "payback_horizon_s", 0, 86400)
    return Switching(min_dwell_s=float(base.min_dwell_s if dwell is None else dwell),
                     debounce_s=float(base.debounce_s if deb is None else deb), margins=margins,
                     swap_power_w=float(base.swap_power_w if watts is None else watts),
                     payback_horizon_s=None if horizon is None else float(horizon))


def _read_part(path: Path) -> _Part:
    doc = TomlDoc.load(path, PolicyError)
    c = Checker(doc, doc.data)
    c.only({"schema", "default", "description", "switching", "profiles", "rules"})
    schema = c.num("schema", required=False, integer=True)
    if schema is not None and schema != 1:
        raise c.error("schema", f"expected 1, got {schema}")
    c.str("description", required=False)
    part = _Part(doc)
    if "default" in c.table:
        part.default = (c.str("default"), c)
    sw = c.table_of("switching")
    if sw is not None:
        part.switching = _switching(sw)
    pc = c.table_of("profiles")
    if pc is not None:
        for name in pc.table:
            sub = pc.table_of(name)
            assert sub is not None
            sub.only(_PROFILE_KEYS)
            sub.str("include", required=False)
            sub.str("description", required=False)
            sub.str("objective", required=False, choices=OBJECTIVES)
            sub.bool("standby", required=False)
            _constraints(sub)  # type-check this table's own keys where they are written
            part.profiles[name] = sub
    part.rules = c.array_of_tables("rules")
    return part


def _resolve_profiles(parts: list[_Part]) -> dict[str, Profile]:
    builtin_raw = _builtin_raw()
    raw_by_name: dict[str, Checker | None] = {name: None for name in builtin_raw}
    for part in parts:
        raw_by_name.update(part.profiles)
    merged: dict[str, dict[str, Any]] = {}

    def resolve(name: str, chain: list[str]) -> dict[str, Any]:
        if name in merged:
            return merged[name]
        c = raw_by_name[name]
        if c is None:
            merged[name] = dict(builtin_raw[name])
            return merged[name]
        inc = c.table.get("include")
        base: dict[str, Any] = {}
        if inc is not None:
            if inc not in raw_by_name:
                raise c.error("include", f"expected a known profile ({', '.join(sorted(raw_by_name))}), got {inc!r}")
            if inc in chain or inc == name:
                loop = [*chain[chain.index(inc):], name, inc] if inc in chain else [name, inc]
                cycle = " -> ".join(loop)
                raise c.error("include", f"expected an include chain without cycles, got {cycle}")
            base = {k: v for k, v in resolve(inc, [*chain, name]).items() if k != "description"}
        out = {**base, **{k: v for k, v in c.table.items() if k != "include"}}
        merged[name] = out
        return out

    profiles: dict[str, Profile] = {}
    for name, c in raw_by_name.items():
        table = resolve(name, [])
        if c is None:
            b = builtin_profiles()[name]
            profiles[name] = b
            continue
        if "objective" not in table:
            raise c.error(None, "objective: expected an objective (min_energy, min_latency, max_quality) here or "
                                "in an included profile, got none")
        profiles[name] = Profile(name=name, objective=table["objective"], constraints=_constraints(c, table),
                                 description=str(table.get("description", "")), include=c.table.get("include"),
                                 standby=bool(table.get("standby", False)))
    return profiles


def _condition(c: Checker, key: str, sample: Activation, required: bool) -> Condition | None:
    src = c.str(key, required=required)
    if src is None:
        return None
    if not src.strip():
        raise c.error(key, "expected a CEL condition, got an empty string")
    try:
        return Condition.compile(src, sample)
    except ConditionError as e:
        raise c.error(key, str(e)) from None


def _rules(parts: list[_Part], profiles: dict[str, Profile]) -> tuple[Rule, ...]:
    sample = Activation(sample_snapshot())
    rules: list[Rule] = []
    seen: set[str] = set()
    for part in parts:
        for rc in part.rules:
            rc.only(_RULE_KEYS)
            name = rc.str("name")
            if not name:
                raise rc.error("name", "expected a non-empty rule name, got ''")
            if name in seen:
                raise rc.error("name", f"expected a unique rule name, got duplicate {name!r}")
            seen.add(name)
            rc.str("description", required=False)
            when = _condition(rc, "when", sample, True)
            exit_when = _condition(rc, "exit_when", sample, False)
            prof = rc.str("profile", required=False)
            if prof is not None and prof not in profiles:
                raise rc.error("profile", f"expected a known profile ({', '.join(sorted(profiles))}), got {prof!r}")
            tc = rc.table_of("tighten")
            tighten = None
            if tc is not None:
                tc.only(_CONSTRAINT_KEYS)
                tighten = _constraints(tc)
            if prof is None and tighten is None:
                raise rc.error(None, "expected 'profile' or a [rules.tighten] table (or both), got neither")
            deb = _num(rc, "debounce_s", 0, 600)
            exit_deb = _num(rc, "exit_debounce_s", 0, 3600)
            assert when is not None
            rules.append(Rule(name=name, when=when, exit_when=exit_when, profile=prof, tighten=tighten,
                              debounce_s=deb, exit_debounce_s=exit_deb))
    return tuple(rules)


def load_policy(paths: Sequence[Path | str]) -> Policy:
    """Read, merge and validate policy files; raises :class:`PolicyError` naming ``file:line: key``."""
    if not paths:
        raise PolicyError("expected at least one policy file, got none")
    parts = [_read_part(Path(p)) for p in paths]
    profiles = _resolve_profiles(parts)
    default = "balanced"
    switching = Switching()
    for part in parts:
        if part.default is not None:
            name, c = part.default
            if name not in profiles:
                raise c.error("default", f"expected a known profile ({', '.join(sorted(profiles))}), got {name!r}")
            default = name
        if part.switching is not None:
            switching = part.switching
    return Policy(profiles=profiles, rules=_rules(parts, profiles), default=default, switching=switching,
                  sources=tuple(str(p) for p in paths))


def check_files(paths: Sequence[Path | str]) -> list[str]:
    """Validate each file on its own; one located error message per bad file (empty list = all good)."""
    errors: list[str] = []
    for p in paths:
        try:
            load_policy([p])
        except ConfigError as e:
            errors.append(str(e))
    return errors
