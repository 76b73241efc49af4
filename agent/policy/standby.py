"""Warm standby: which variant of a model to keep loaded next to the active one (pure, no I/O).

A profile with ``standby = true`` asks for it. For a causal-lm model whose recent requests carry deadlines,
the standby is the fastest measured row (p95 request latency at the current compute state, at the demand's
tokens) whose quality meets the requests' own floor (``Demand.min_quality``; the profile's ``min_quality`` is
what the *active* choice must meet, the standby is what a request is served by when the active one cannot
make its deadline, as decide() relaxes to the best quality that does). No standby when that row is the
active (target) variant itself, or is not faster than it. The runtime loads it (``Runtime.want_standby``);
the controller routes a deadline request to it when the active variant's predicted latency misses the
deadline and the standby's meets it (``Controller.route``).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.policy.costs import ComputeState
from agent.policy.model import Demand
from agent.policy.table import VariantRow


@dataclass(frozen=True)
class StandbyChoice:
    model: str
    variant: str
    device: str
    why: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.variant, self.device)


def _ms(r: VariantRow, cs: ComputeState | None, tokens: int | None) -> float | None:
    return (r.at(cs) if cs is not None else r).request_ms(tokens)


def standby_for(model: str, rows: list[VariantRow], target: tuple[str, str] | None, demand: Demand | None,
                cs: ComputeState | None) -> StandbyChoice | None:
    """The standby for ``model`` next to ``target`` (the variant the policy serves it with), or None."""
    return standby_why(model, rows, target, demand, cs)[0]


def standby_why(model: str, rows: list[VariantRow], target: tuple[str, str] | None, demand: Demand | None,
                cs: ComputeState | None) -> tuple[StandbyChoice | None, str]:
    """:func:`standby_for` and, when there is none, why not (for the log line)."""
    if demand is None or demand.deadline_ms is None:
        return None, "no deadline demand in the last window"
    if target is None:
        return None, "nothing is served"
    mine = [r for r in rows if r.model == model and r.unit == "token" and r.reachable is not False
            and r.device != "remote"]
    ok = [r for r in mine if demand.min_quality is None or (r.quality_rel or 0.0) >= demand.min_quality]
    timed = [(ms, r) for r in ok if (ms := _ms(r, cs, demand.tokens)) is not None]
    floor = f"quality >= {demand.min_quality:g}" if demand.min_quality is not None else "no quality floor"
    if not timed:
        return None, f"no measured row with {floor}"
    best_ms, best = min(timed, key=lambda x: (x[0], x[1].variant, x[1].device))
    where = f" at {cs.describe()}" if cs is not None else ""
    if best.key == target:
        return None, f"the served {best.label} is the fastest row with {floor} (p95 {best_ms:.0f} ms{where})"
    cur = next((r for r in mine if r.key == target), None)
    cur_ms = _ms(cur, cs, demand.tokens) if cur is not None else None
    if cur_ms is not None and best_ms >= cur_ms:
        return None, f"no row with {floor} is faster than the served {target[0]}@{target[1]}"
    cur_s = f"{cur_ms:.0f} ms" if cur_ms is not None else "unmeasured"
    return StandbyChoice(model, best.variant, best.device,
                         f"deadline {demand.deadline_ms:g} ms demand: fastest row with {floor} is {best.label} "
                         f"(p95 {best_ms:.0f} ms{where}; active {target[0]}@{target[1]} {cur_s})"), ""
