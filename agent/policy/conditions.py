"""CEL conditions over the Snapshot, compiled once at load time and evaluated per sample.

We use ``common-expression-language`` (PyPI; ``import cel``: Python bindings to the Rust ``cel``
crate). See docs/POLICY.md for the comparison with ``cel-python`` and why. Nothing is ever ``eval``-ed.

What a rule sees is ``Snapshot.to_dict()`` with tuples turned into lists, plus one derived field,
``thermal.level_rank`` (0 = none ... 6 = shutdown, null when unknown). Because CEL compares strings
alphabetically, a comparison of ``thermal.level`` with a level-name literal (``thermal.level >= "severe"``,
either operand order, any of ``== != < <= > >=``) is rewritten at compile time to the same comparison of
``thermal.level_rank`` with the level's rank, so it follows the Android scale none < light < moderate <
severe < critical < emergency < shutdown. An unknown level name in such a comparison is an error, and so
is ordering ``thermal.level`` against anything but a literal (it would silently compare alphabetically).

A condition is checked at load time by evaluating it against a fully populated sample Snapshot: syntax
errors, unknown fields, type errors (``battery.percent < "x"``) and non-boolean results are reported then.
At run time an unknown reading is ``null`` (a machine without a battery or a thermal sensor). A condition
that fails on it (``null < 20``) is not an error: it counts as false (an active rule stays active), and
evaluate() returns an :class:`UnknownReading` naming the missing fields, which the decision lists under
``unknown`` and the daemon logs once per rule. Any other evaluation failure is an error, reported in the
Decision. Write ``battery.percent != null && ...`` to say it explicitly.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from agent.sensors.snapshot import (
    THERMAL_LEVELS,
    BatteryState,
    CpuState,
    EnergyState,
    MemoryState,
    PowerState,
    Snapshot,
    ThermalState,
    ThermalZone,
)

LEVEL_RANK: dict[str, int] = {name: i for i, name in enumerate(THERMAL_LEVELS)}
_OPS = r"(==|!=|>=|<=|>|<)"
_LIT = r"(?:\"([^\"\\]*)\"|'([^'\\]*)')"
_FWD = re.compile(r"\bthermal\.level\b\s*" + _OPS + r"\s*" + _LIT)
_REV = re.compile(_LIT + r"\s*" + _OPS + r"\s*\bthermal\.level\b")
_BARE_ORDER = re.compile(r"\bthermal\.level\b\s*(>=|<=|>|<)|(>=|<=|>|<)\s*\bthermal\.level\b")
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "==", "!=": "!="}
_FIELD = re.compile(r"\b(battery|power|thermal|memory|cpu|energy)\.([A-Za-z_][A-Za-z0-9_]*)")


class UnknownReading(str):
    """Why a condition could not be evaluated: readings it uses are unknown (null) on this snapshot."""


class ConditionError(ValueError):
    """A condition does not compile or does not type-check; the message reads 'expected ..., got ...'."""


def rewrite_levels(expr: str) -> str:
    """Rewrite thermal-level comparisons to ordered rank comparisons (see module docstring)."""

    def rank(name: str) -> int:
        if name not in LEVEL_RANK:
            raise ConditionError(f"expected a thermal level ({', '.join(THERMAL_LEVELS)}), got {name!r}")
        return LEVEL_RANK[name]

    out = _FWD.sub(lambda m: f"thermal.level_rank {m.group(1)} {rank(m.group(2) or m.group(3) or '')}", expr)
    out = _REV.sub(lambda m: f"thermal.level_rank {_FLIP[m.group(3)]} {rank(m.group(1) or m.group(2) or '')}", out)
    if _BARE_ORDER.search(out):
        raise ConditionError("expected thermal.level to be ordered against a level name literal such as "
                             "\"severe\" (or use thermal.level_rank), got a comparison with another value")
    return out


def _plain(v: Any) -> Any:
    """JSON-like values: dataclasses to dicts, tuples to lists (what ``to_dict`` gives, without its deep copy)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


def activation_dict(snapshot: Snapshot) -> dict[str, Any]:
    """The mapping rules see: ``Snapshot.to_dict()`` made CEL-friendly, plus ``thermal.level_rank``."""
    d: dict[str, Any] = _plain(snapshot)
    d["reasons"] = dict(snapshot.reasons)
    lvl = d["thermal"].get("level")
    d["thermal"]["level_rank"] = LEVEL_RANK.get(lvl) if isinstance(lvl, str) else None
    return d


class Activation:
    """A snapshot converted once for all rules of a step (conversion dominates evaluation cost)."""

    def __init__(self, snapshot: Snapshot) -> None:
        import cel  # the CEL library is imported on first use, not at import time

        self.data = activation_dict(snapshot)
        self.context = cel.Context(self.data)


def _filled(obj: Any) -> Any:
    """``obj`` with every ``None`` field given a value of its annotated type (so fields added to the
    Snapshot later are known in the sample too)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if getattr(obj, f.name) is not None:
            continue
        t = str(f.type)
        if t.startswith("float"):
            values[f.name] = 1.0
        elif t.startswith("int"):
            values[f.name] = 1
        elif t.startswith("bool"):
            values[f.name] = False
        elif t.startswith("str"):
            values[f.name] = "x"
    return dataclasses.replace(obj, **values)


def sample_snapshot() -> Snapshot:
    """A Snapshot with every field known, used to type-check conditions at load time."""
    snap = Snapshot(
        mono_s=100.0, wall_s=1.7e9,
        battery=BatteryState(present=True, percent=55.0, status="Discharging", power_w=6.5, energy_wh=30.0,
                             energy_full_wh=55.0, count=1),
        power=PowerState(on_ac=False, adapters=("AC",)),
        thermal=ThermalState(level="light", headroom=0.6, max_c=61.0,
                             zones=(ThermalZone("thermal_zone0", "x86_pkg_temp", 61.0, (("passive", 90.0),)),)),
        memory=MemoryState(total_bytes=16 << 30, available_bytes=8 << 30, swap_used_bytes=0, psi_some_avg10=0.5,
                           psi_full_avg10=0.1, cgroup_max_bytes=12 << 30, cgroup_current_bytes=1 << 30),
        cpu=CpuState(load_1m=0.8, util_percent=25.0, freq_mhz=2400.0, online=4,
                     core_classes=(("performance", (0, 1)),)),
        energy=EnergyState(meter="rapl", power_w=9.0, joules_total=1234.0, gpu_power_w=3.0, gpu_temp_c=50.0,
                           gpu_util_percent=10.0, npu_busy_s=1.0),
        source="sample",
    )
    return dataclasses.replace(snap, **{name: _filled(getattr(snap, name)) for name in
                                        ("battery", "power", "thermal", "memory", "cpu", "energy")})


def _describe(e: Exception) -> str:
    msg = str(e).strip()
    if isinstance(e, KeyError):
        return f"no such field {msg}"
    first = msg.splitlines()[0] if msg else type(e).__name__
    m = re.search(r"ERROR: <input>:(\d+:\d+): (.*)", msg)
    if m:
        first = f"at {m.group(1)}: {m.group(2)}"
    return first[:240]


@dataclass(frozen=True)
class Condition:
    """A compiled boolean CEL expression; ``source`` is what the user wrote."""

    source: str
    rewritten: str
    program: Any
    fields: tuple[str, ...]

    @classmethod
    def compile(cls, source: str, sample: Activation | None = None) -> Condition:
        import cel

        text = rewrite_levels(source)
        try:
            program = cel.compile(text)
        except Exception as e:  # noqa: BLE001 - the library's errors are mapped to ours here
            raise ConditionError(f"expected a CEL expression, got a syntax error {_describe(e)}") from None
        fields = tuple(sorted({f"{a}.{b}" for a, b in _FIELD.findall(source)}))
        cond = cls(source, text, program, fields)
        act = sample or Activation(sample_snapshot())
        try:
            value = program.execute(act.context)
        except Exception as e:  # noqa: BLE001 - any evaluation error is the rule's fault, reported
            raise ConditionError(f"expected a condition over the Snapshot, got {_describe(e)}") from None
        if not isinstance(value, bool):
            raise ConditionError(f"expected a boolean condition, got {type(value).__name__} {value!r}")
        return cond

    def evaluate(self, act: Activation) -> tuple[bool, str | None]:
        """(value, error); a failure gives (False, why), where ``why`` is an :class:`UnknownReading` when
        readings the condition uses are null on this snapshot."""
        try:
            value = self.program.execute(act.context)
        except Exception as e:  # noqa: BLE001 - a failing condition counts as false and is reported
            missing = self.missing(act)
            if missing:
                return False, UnknownReading(f"unknown {', '.join(missing)}")
            return False, _describe(e)
        if not isinstance(value, bool):
            return False, f"not a boolean: {value!r}"
        return value, None

    def missing(self, act: Activation) -> tuple[str, ...]:
        """The fields this condition reads that are null in ``act`` (thermal.level counts as its rank)."""
        out = []
        for f in self.fields:
            section, _, name = f.partition(".")
            value = act.data.get(section, {}).get(name) if isinstance(act.data.get(section), dict) else None
            if value is None:
                out.append(f)
        return tuple(out)
