"""decide(): the pure core of the policy engine. No I/O; the clock is the ``now`` argument.

Precedence, per model: a pin wins (and ignores dwell); else the profile comes from the holds (power-saver
wins among them, else the earliest hold), else from the first active rule that selects one, else the
policy's default. Every active rule's ``tighten`` applies on top of whichever profile won (so thermal
and memory guards still bind an app's hold). See docs/POLICY.md for the full semantics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.policy.conditions import LEVEL_RANK, Activation, UnknownReading
from agent.policy.costs import compute_state
from agent.policy.model import Constraints, Demand, Policy, Profile, Rule, Switching
from agent.policy.state import Hold, PolicyState, RuleMemory
from agent.policy.table import VariantRow, by_model
from agent.sensors.snapshot import Snapshot

_FIGURE = {"min_energy": "energy_j", "min_latency": "latency_ms_p50", "max_quality": "quality_rel"}
_MARGIN = {"min_energy": "energy", "min_latency": "latency", "max_quality": "quality"}
_BASE_READINGS = ("battery.percent", "power.on_ac", "thermal.level", "memory.available_bytes",
                  "memory.psi_some_avg10")


@dataclass(frozen=True)
class Alternative:
    variant: str
    device: str
    verdict: str        # "violates" | "worse" | "within-margin" | "no-payback" | "dwell" | "fallback"
    why: str


@dataclass(frozen=True)
class ModelChoice:
    model: str
    variant: str
    device: str
    provider: str
    change: bool
    previous: tuple[str, str] | None
    why: str
    alternatives: tuple[Alternative, ...]
    constraints: Constraints | None = None   # the effective constraints for this model (profile + demand)
    request_ms: float | None = None          # predicted p95 per request of the chosen row at this state

    @property
    def label(self) -> str:
        return f"{self.variant}@{self.device}"


@dataclass(frozen=True)
class Decision:
    now: float
    profile: str
    objective: str
    source: str                       # "hold" | "rule" | "default"
    rule: str | None                  # the rule that selected the profile
    rules_active: tuple[str, ...]
    constraints: Constraints
    readings: dict[str, Any]
    choices: dict[str, ModelChoice]
    state: PolicyState                # the state to pass to the next decide()
    errors: tuple[str, ...] = ()      # rule conditions that could not be evaluated on this snapshot
    unknown: tuple[str, ...] = ()     # rules over readings this snapshot lacks (counted false, not errors)
    hold: str | None = None           # cookie of the winning hold

    def changes(self) -> list[ModelChoice]:
        return [c for c in self.choices.values() if c.change]

    def log_fields(self) -> dict[str, Any]:
        """One flat dict: a structured log line and a telemetry row (scalars only)."""
        out: dict[str, Any] = {
            "event": "policy.decision", "t": self.now, "profile": self.profile, "objective": self.objective,
            "source": self.source, "rule": self.rule, "hold": self.hold,
            "rules_active": ",".join(self.rules_active),
            "min_quality": self.constraints.min_quality, "slo_p95_ms": self.constraints.max_latency_p95_ms,
            "changes": ";".join(f"{c.model}:{_lbl(c.previous)}->{c.label}" for c in self.changes()),
            "choices": ";".join(f"{m}={c.label}" for m, c in sorted(self.choices.items())),
            "errors": "; ".join(self.errors),
            "unknown": "; ".join(self.unknown),
        }
        for k, v in self.readings.items():
            out[f"r.{k}"] = v
        for m, c in sorted(self.choices.items()):
            out[f"why.{m}"] = c.why
        return out


def _lbl(key: tuple[str, str] | None) -> str:
    return f"{key[0]}@{key[1]}" if key else "none"


def _step_rules(policy: Policy, act: Activation, state: PolicyState, now: float
                ) -> tuple[dict[str, RuleMemory], list[Rule], list[str], list[str]]:
    memory: dict[str, RuleMemory] = {}
    active: list[Rule] = []
    errors: list[str] = []
    unknown: list[str] = []
    for rule in policy.rules:
        mem = state.rules.get(rule.name, RuleMemory())
        if mem.active and rule.exit_when is not None:
            leave, err = rule.exit_when.evaluate(act)
            target = not leave
        else:
            target, err = rule.when.evaluate(act)
            if err is not None and mem.active:
                target = True       # an unreadable value does not end an active rule
        if err is not None:
            (unknown if isinstance(err, UnknownReading) else errors).append(f"rule {rule.name}: {err}")
        debounce = policy.switching.debounce_s if rule.debounce_s is None else rule.debounce_s
        if mem.active and rule.exit_debounce_s is not None:
            debounce = rule.exit_debounce_s
        if target == mem.active:
            mem = RuleMemory(mem.active, None)
        elif mem.pending_since is None and debounce > 0:
            mem = RuleMemory(mem.active, now)
        elif debounce <= 0 or (mem.pending_since is not None and now - mem.pending_since >= debounce):
            mem = RuleMemory(target, None)
        memory[rule.name] = mem
        if mem.active:
            active.append(rule)
    return memory, active, errors, unknown


def _winning_hold(policy: Policy, holds: tuple[Hold, ...]) -> Hold | None:
    valid = [h for h in holds if h.profile in policy.profiles]
    if not valid:
        return None
    saver = [h for h in valid if h.profile == "power-saver"]
    return min(saver or valid, key=lambda h: (h.since, h.cookie))


def violations(row: VariantRow, c: Constraints, objective: str, snapshot: Snapshot,
               current: VariantRow | None) -> list[str]:
    """Why ``row`` may not run now (empty = feasible); ``current`` is the model's loaded row, if any.

    Memory: the loaded row needs ``available >= headroom``. Another row is loaded next to the current one
    and the current one is then drained and unloaded, so it needs ``available >= its memory`` at the peak
    and ``available + current's memory - its memory >= headroom`` afterwards (other models are not counted).
    """
    out: list[str] = []
    if not c.device_ok(row.device):
        out.append(f"device {row.device} not allowed")
    if row.reachable is False:
        out.append("server unreachable")
    fig = _FIGURE[objective]
    if getattr(row, fig) is None:
        out.append(f"no measured {fig}")
    if c.min_quality is not None:
        if row.quality_rel is None:
            out.append("no measured quality")
        elif row.quality_rel < c.min_quality:
            out.append(f"quality {row.quality_rel:.4g} < {c.min_quality:.4g}")
    if c.max_latency_p95_ms is not None:
        if row.latency_ms_p95 is None:
            out.append("no measured latency_ms_p95")
        elif row.latency_ms_p95 > c.max_latency_p95_ms:
            out.append(f"p95 {row.latency_ms_p95:.4g} ms > SLO {c.max_latency_p95_ms:.4g} ms")
    if c.deadline_ms is not None:
        req = row.request_ms(c.request_tokens)
        if req is None:
            out.append("no measured latency_ms_p95")
        elif req > c.deadline_ms:
            out.append(f"request p95 {req:.4g} ms > deadline {c.deadline_ms:.4g} ms")
    avail = snapshot.memory.available_bytes
    if c.memory_headroom_mb is not None and avail is not None:
        head = c.memory_headroom_mb * 1e6
        if current is not None and current.key == row.key:
            if avail < head:
                out.append(f"headroom {head / 1e6:.0f} MB, {avail / 1e6:.0f} MB available")
        elif row.memory_bytes is None:
            out.append("no measured memory_bytes")
        else:
            freed = (current.memory_bytes or 0) if current is not None else 0
            need = max(row.memory_bytes, head + row.memory_bytes - freed)
            if avail < need:
                out.append(f"needs {need / 1e6:.0f} MB free, {avail / 1e6:.0f} MB available")
    return out


def rank_key(row: VariantRow, objective: str) -> tuple[Any, ...]:
    inf = float("inf")
    e = row.energy_j if row.energy_j is not None else inf
    lat = row.latency_ms_p50 if row.latency_ms_p50 is not None else inf
    q = -(row.quality_rel if row.quality_rel is not None else -inf)
    if objective == "min_energy":
        return (e, q, lat, row.variant, row.device)
    if objective == "min_latency":
        return (lat, e, q, row.variant, row.device)
    return (q, e, lat, row.variant, row.device)


def _improvement(best: VariantRow, cur: VariantRow, objective: str) -> float:
    fig = _FIGURE[objective]
    b, c = float(getattr(best, fig)), float(getattr(cur, fig))
    if c == 0:
        return 0.0 if b == c else float("inf")
    return (b - c) / abs(c) if objective == "max_quality" else (c - b) / abs(c)


def payback(best: VariantRow, cur: VariantRow, sw: Switching, demand: Demand | None,
            tokens: int | None) -> tuple[bool, str] | None:
    """Does swapping ``cur`` -> ``best`` for energy pay back within the switching horizon? None when the
    demand gives no request rate (nothing to price the swap against). Else (pays, why): the saving per
    request (at this state) x the requests expected over ``sw.horizon_s`` at ``demand.rate_per_s``, against
    the swap's own energy (``best.load_ms`` x ``sw.swap_power_w``); it pays only if strictly larger."""
    if demand is None or demand.rate_per_s is None:
        return None
    jb, jc = best.request_j(tokens), cur.request_j(tokens)
    if jb is None or jc is None:
        return None
    expected = demand.rate_per_s * sw.horizon_s
    saving, cost = (jc - jb) * expected, best.swap_j(sw.swap_power_w)
    rel = ">" if saving > cost else "<="
    why = (f"{best.label} saves {jc - jb:.4g} J/request x {expected:.3g} requests in {sw.horizon_s:g} s = "
           f"{saving:.4g} J {rel} swap {cost:.4g} J")
    return saving > cost, why


def with_demand(cons: Constraints, demand: Demand | None) -> Constraints:
    if demand is None:
        return cons
    return cons.tighten(Constraints(deadline_ms=demand.deadline_ms, request_tokens=demand.tokens))


def _choose(model: str, rows: list[VariantRow], cons: Constraints, objective: str, policy: Policy,
            state: PolicyState, snapshot: Snapshot, now: float, profile: str,
            demand: Demand | None = None) -> ModelChoice:
    """Feasible = the profile's constraints plus the demand's deadline. When no row meets both the profile's
    quality floor and the deadline, the floor relaxes to the requests' own (``demand.min_quality``) and the
    best-quality row that meets the deadline wins. When no row meets it at p95, the best-quality row (at the
    requests' floor) whose *typical* (p50) request meets it wins: most of its requests make the deadline, and
    the daemon's admission, which uses p50, refuses the rest at once. When none meets it even at p50, the
    fastest row that meets the profile's constraints wins - the closest to the deadline, without giving up
    quality that would not buy it; requests that cannot make it are refused at once by the daemon."""
    cur_key = state.current.get(model)
    by_key = {r.key: r for r in rows}
    cur = by_key.get(cur_key) if cur_key else None
    base_cons, cons = cons, with_demand(cons, demand)
    note = ""
    viol = {r.key: violations(r, cons, objective, snapshot, cur) for r in rows}
    feasible = sorted((r for r in rows if not viol[r.key]), key=lambda r: rank_key(r, objective))
    if not feasible and cons.deadline_ms is not None:
        relaxed = replace(cons, min_quality=demand.min_quality if demand is not None else None)
        rv = {r.key: violations(r, relaxed, objective, snapshot, cur) for r in rows}
        rf = sorted((r for r in rows if not rv[r.key]), key=lambda r: rank_key(r, "max_quality"))
        dl, tok = cons.deadline_ms, cons.request_tokens
        loose = replace(relaxed, deadline_ms=None)
        lv = {r.key: violations(r, loose, objective, snapshot, cur) for r in rows}
        typical = sorted((r for r in rows if not lv[r.key] and (r.request_ms(tok, 50) or float("inf")) <= dl),
                         key=lambda r: rank_key(r, "max_quality"))
        if rf:
            note = (f"deadline {cons.deadline_ms:g} ms: no variant at quality >= {base_cons.min_quality} meets it; "
                    f"best quality that does (request floor {relaxed.min_quality})")
            cons, viol, feasible, objective = relaxed, rv, rf, "max_quality"
        elif typical:
            note = (f"deadline {dl:g} ms: no variant meets it at p95; best quality whose typical (p50) request "
                    f"does: {typical[0].label} {typical[0].request_ms(tok, 50):.0f} ms (request floor "
                    f"{relaxed.min_quality})")
            cons, viol, feasible, objective = loose, lv, typical, "max_quality"
        else:
            fastest = min((r for r in rows if r.request_ms(cons.request_tokens) is not None),
                          key=lambda r: r.request_ms(cons.request_tokens) or 0.0, default=None)
            note = (f"deadline {cons.deadline_ms:g} ms infeasible on every variant"
                    + (f" (fastest {fastest.label} {fastest.request_ms(cons.request_tokens):.0f} ms)"
                       if fastest else "")
                    + "; the fastest at the profile's floor (a lower floor would not buy the deadline)")
            cons = replace(cons, deadline_ms=None)
            viol = {r.key: violations(r, cons, objective, snapshot, cur) for r in rows}
            tok = cons.request_tokens

            def fastest_first(r: VariantRow) -> tuple[Any, ...]:
                return (r.request_ms(tok) if r.request_ms(tok) is not None else float("inf"), *rank_key(r, objective))

            feasible = sorted((r for r in rows if not viol[r.key]), key=fastest_first)
            objective = "min_latency"
    verdicts: dict[tuple[str, str], Alternative] = {}
    pin = state.pins.get(model)
    if pin is not None and pin in by_key:
        chosen, why = by_key[pin], f"pinned to {_lbl(pin)}"
    elif not feasible:
        if cur is not None:
            chosen, why = cur, "no variant meets the constraints; keeping the current one"
        else:
            chosen = min(rows, key=lambda r: (len(viol[r.key]), rank_key(r, objective)))
            why = "no variant meets the constraints; fallback to the one violating the fewest"
    else:
        best = feasible[0]
        chosen, why = best, f"{profile}: {objective} best of {len(feasible)} feasible"
        if cur is not None and best.key != cur.key:
            since = now - state.last_swap.get(model, float("-inf"))
            if since < policy.switching.min_dwell_s:
                chosen = cur
                why = f"dwell: last swap {since:.1f}s ago < min_dwell_s {policy.switching.min_dwell_s:g}"
                verdicts[best.key] = Alternative(best.variant, best.device, "dwell", why)
            elif not viol[cur.key]:
                gain = _improvement(best, cur, objective)
                margin = getattr(policy.switching.margins, _MARGIN[objective])
                pay = payback(best, cur, policy.switching, demand, cons.request_tokens) \
                    if objective == "min_energy" else None
                if gain <= margin:
                    chosen = cur
                    why = f"margin: {best.label} better by {gain:.1%} <= {margin:.1%}; keeping current"
                    verdicts[best.key] = Alternative(best.variant, best.device, "within-margin",
                                                     f"better by {gain:.1%}, margin {margin:.1%}")
                elif pay is not None and not pay[0]:
                    chosen = cur
                    why = f"payback: {pay[1]}; keeping current"
                    verdicts[best.key] = Alternative(best.variant, best.device, "no-payback", pay[1])
                elif pay is not None:
                    why += f"; swap pays back: {pay[1]}"
    fig = _FIGURE[objective]
    for r in rows:
        if r.key == chosen.key or r.key in verdicts:
            continue
        if viol[r.key]:
            verdicts[r.key] = Alternative(r.variant, r.device, "violates", "; ".join(viol[r.key]))
        else:
            verdicts[r.key] = Alternative(r.variant, r.device, "worse",
                                          f"{fig} {getattr(r, fig):.4g} vs {getattr(chosen, fig)}")
    if pin is not None and pin not in by_key:
        why += f" (pin {_lbl(pin)} ignored: not in the variant table)"
    if note:
        why = f"{note}; {why}"
    if chosen.state.compute < 1.0 or chosen.state.load > 0:
        why += f" [{chosen.state.describe()}]"
    alts = tuple(verdicts[r.key] for r in rows if r.key in verdicts)
    return ModelChoice(model, chosen.variant, chosen.device, chosen.provider, chosen.key != cur_key, cur_key,
                       why, alts, cons, chosen.request_ms(cons.request_tokens))


def _readings(policy: Policy, snapshot: Snapshot, act: Activation) -> dict[str, Any]:
    names = set(_BASE_READINGS)
    for r in policy.rules:
        names.update(r.when.fields)
        if r.exit_when is not None:
            names.update(r.exit_when.fields)
    out: dict[str, Any] = {}
    for n in sorted(names):
        sec, _, key = n.partition(".")
        v = act.data.get(sec, {}).get(key)
        if v is None or isinstance(v, (bool, int, float, str)):
            out[n] = v
    return out


def decide(snapshot: Snapshot, state: PolicyState, policy: Policy, table: list[VariantRow],
           now: float, demand: Mapping[str, Demand] | None = None) -> Decision:
    """Choose (variant, device) for every model in ``table``; pure and deterministic.

    Every row is first read at the snapshot's compute state (CPU quota x thermal factor, competing load:
    :func:`agent.policy.costs.compute_state`), so latency and energy are the figures of *now*. ``demand``
    gives per model what the live requests ask for (deadline, quality floor, tokens)."""
    cs = compute_state(snapshot)
    table = [r.at(cs) for r in table]
    act = Activation(snapshot)
    memory, active, errors, unknown = _step_rules(policy, act, state, now)
    hold = _winning_hold(policy, state.holds)
    rule_name: str | None = None
    if hold is not None:
        profile, source = policy.profile(hold.profile), "hold"
    else:
        selecting = next((r for r in active if r.profile is not None), None)
        if selecting is not None and selecting.profile is not None:
            profile, source, rule_name = policy.profile(selecting.profile), "rule", selecting.name
        else:
            profile, source = policy.profile(policy.default), "default"
    cons = profile.constraints
    for r in active:
        if r.tighten is not None:
            cons = cons.tighten(r.tighten)
    objective = _objective(profile, cons, snapshot)
    new_state = replace(state, rules=memory)
    choices: dict[str, ModelChoice] = {}
    label = profile.name
    if objective != profile.objective:
        label += f" (thermal ceiling {cons.thermal_ceiling} reached)"
    for model, rows in sorted(by_model(table).items()):
        ch = _choose(model, rows, cons, objective, policy, state, snapshot, now, label,
                     (demand or {}).get(model))
        choices[model] = ch
        if ch.change:
            new_state = new_state.with_current(model, ch.variant, ch.device, now)
    readings = _readings(policy, snapshot, act)
    readings.update({"compute.factor": round(cs.compute, 4), "compute.quota": round(cs.quota, 4),
                     "compute.thermal": round(cs.thermal, 4), "compute.load": round(cs.load, 4)})
    return Decision(now=now, profile=profile.name, objective=objective, source=source, rule=rule_name,
                    rules_active=tuple(r.name for r in active), constraints=cons,
                    readings=readings, choices=choices, state=new_state,
                    errors=tuple(errors), unknown=tuple(unknown), hold=hold.cookie if hold else None)


def _objective(profile: Profile, cons: Constraints, snapshot: Snapshot) -> str:
    lvl = snapshot.thermal.level
    if cons.thermal_ceiling is not None and lvl in LEVEL_RANK and LEVEL_RANK[lvl] >= LEVEL_RANK[cons.thermal_ceiling]:
        return "min_energy"
    return profile.objective
