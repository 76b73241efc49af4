"""The adaptive loop: sensors -> Snapshot -> policy.decide() -> Decision -> runtime.swap().

The sampler thread (apscheduler) reads the sensor source every ``interval_s`` and hands the Snapshot
to the event loop; there the PolicyEngine decides, and changes are applied one at a time through the
runtime's make-before-break swap. A decision that changes the profile, the rule or a model's variant
is one structured log line and one telemetry row; a sample is one telemetry row.

Energy per request is attributed here too (the worker reports its CPU seconds per request/generation;
the sampler's last two snapshots give the meter and the power), so the hot path does no sysfs reads.

Per-request QoS (``deadline_ms``, ``min_quality``, ``priority``) is noted in a :class:`DemandBook` whose
aggregate per model goes to decide(); :meth:`Controller.admit` refuses at once a request that the loaded
variant cannot finish within its deadline at the current compute state (``DeadlineInfeasible``, naming the
fastest feasible latency); :class:`EdfGate` queues a model's generations by (priority, deadline).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import AgentError, DeadlineInfeasible, InvalidParams
from agent.policy.costs import compute_state
from agent.policy.decide import Decision
from agent.policy.engine import PolicyEngine
from agent.policy.model import DEMAND_WINDOW_S, Demand
from agent.policy.standby import standby_why
from agent.policy.table import VariantRow, table_from_manifests
from agent.runtime.manager import Runtime
from agent.sensors.energy import EnergyAccountant, EnergyReading
from agent.sensors.sampler import Sampler
from agent.sensors.snapshot import Snapshot
from agent.sensors.source import SensorSource
from agent.telemetry import Telemetry

log = logging.getLogger("agent.policy")

SAMPLE_FIELDS = ("battery.percent", "battery.status", "battery.power_w", "power.on_ac", "thermal.level",
                 "thermal.headroom", "thermal.max_c", "memory.available_bytes", "memory.psi_some_avg10",
                 "cpu.load_1m", "cpu.util_percent", "energy.meter", "energy.power_w")


def flat_sample(snap: Snapshot) -> dict[str, Any]:
    d = snap.to_dict()
    out: dict[str, Any] = {"source": snap.source, "mono_s": snap.mono_s}
    for key in SAMPLE_FIELDS:
        sec, name = key.split(".")
        out[key.replace(".", "_")] = d[sec][name]
    return out


@dataclass(frozen=True)
class QoS:
    deadline_ms: float | None = None
    min_quality: float | None = None
    priority: int = 0

    @property
    def empty(self) -> bool:
        return self.deadline_ms is None and self.min_quality is None and self.priority == 0


QOS_KEYS = ("deadline_ms", "min_quality", "priority")


def parse_qos(params: Mapping[str, Any]) -> QoS:
    """The QoS keys of a request (absent = None); bad values raise InvalidParams naming the key."""
    vals: dict[str, Any] = {}
    for k in QOS_KEYS:
        v = params.get(k)
        if v is None:
            continue
        if k == "priority":
            if isinstance(v, bool) or not isinstance(v, int) or not -1000 <= v <= 1000:
                raise InvalidParams(f"priority: expected an integer in -1000..1000, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
                v <= 0 if k == "deadline_ms" else not 0 <= v <= 1):
            want = "a number > 0" if k == "deadline_ms" else "a number in 0..1"
            raise InvalidParams(f"{k}: expected {want}, got {v!r}")
        vals[k] = v
    return QoS(**vals)


class DemandBook:
    """The QoS of each model's recent requests (the last ``window_s``), aggregated for decide(): the
    tightest deadline, the strictest quality floor, the highest priority, the most tokens, and the request
    rate over the window (what decide() prices a swap against)."""

    def __init__(self, window_s: float = DEMAND_WINDOW_S, clock: Any = time.monotonic) -> None:
        self.window_s, self.clock = window_s, clock
        self._recent: dict[str, deque[tuple[float, QoS, int | None]]] = defaultdict(deque)

    def note(self, model: str, qos: QoS, tokens: int | None = None) -> None:
        self._recent[model].append((self.clock(), qos, tokens))

    def demand(self) -> dict[str, Demand]:
        now, out = self.clock(), {}
        for model, q in self._recent.items():
            while q and now - q[0][0] > self.window_s:
                q.popleft()
            if not q:
                continue
            dl = [x.deadline_ms for _, x, _ in q if x.deadline_ms is not None]
            mq = [x.min_quality for _, x, _ in q if x.min_quality is not None]
            tk = [t for _, _, t in q if t is not None]
            out[model] = Demand(min(dl) if dl else None, max(mq) if mq else None,
                                max(x.priority for _, x, _ in q), max(tk) if tk else None,
                                rate_per_s=len(q) / self.window_s)
        return out


class EdfGate:
    """At most ``capacity`` requests of one model run at once; waiting ones go in order of (higher priority,
    earlier absolute deadline, arrival). Requests without a deadline sort after those with one."""

    def __init__(self, slots: int) -> None:
        self.capacity = max(1, slots)
        self.running = 0
        self._heap: list[tuple[int, float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def enter(self, qos: QoS, t0: float) -> None:
        if self.running < self.capacity and not self._heap:
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        due = t0 + qos.deadline_ms / 1e3 if qos.deadline_ms is not None else math.inf
        heapq.heappush(self._heap, (-qos.priority, due, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.leave()       # we were woken and then cancelled: pass the slot on
            raise

    def leave(self) -> None:
        while self._heap:
            *_, fut = heapq.heappop(self._heap)
            if not fut.done():
                fut.set_result(None)
                return
        self.running -= 1


class Controller:
    def __init__(self, runtime: Runtime, engine: PolicyEngine, source: SensorSource, telemetry: Telemetry,
                 *, interval_s: float = 1.0, emit: Any = None) -> None:
        self.runtime = runtime
        self.engine = engine
        self.source = source
        self.telemetry = telemetry
        self.interval_s = interval_s
        self.emit = emit or (lambda ev: None)
        self.acct = EnergyAccountant()
        self.sampler = Sampler(source, self._on_sample, interval_s)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.last: Snapshot | None = None
        self.prev: Snapshot | None = None
        self.last_tick_mono: float | None = None
        self.last_decision: Decision | None = None
        self._applying = False
        self._tasks: set[asyncio.Task[None]] = set()   # the _apply tasks in flight (a reference keeps them alive)
        self._pending: Snapshot | None = None
        self._last_key: tuple[Any, ...] | None = None
        self._unknown_logged: set[str] = set()   # rules over missing readings, logged once each
        self._table: list[VariantRow] = []
        self.hints: dict[str, dict[str, float]] = {}
        self.demands = DemandBook()
        self.gates: dict[str, EdfGate] = {}
        self.routed: dict[str, int] = {}   # deadline requests served by the warm standby, per model
        self._readings: tuple[EnergyReading | None, EnergyReading | None] = (None, None)
        # (model, variant) -> [requests, J, wall s, tokens, cpu s]; meter per (model, variant)
        self.energy: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0, 0.0])
        self.meters: dict[tuple[str, str], str] = {}
        self._own_cpu: tuple[float, float] | None = None
        self.refresh_table()

    def refresh_table(self) -> None:
        self._table = table_from_manifests({n: s.manifest for n, s in self.runtime.slots.items()})

    # -- start / stop -------------------------------------------------------------------------------
    def initial_choices(self) -> dict[str, tuple[str, str]]:
        """What to load at start: the policy's choice on a first snapshot, else the reference on CPU."""
        choices = {n: (s.manifest.reference, "cpu") for n, s in self.runtime.slots.items()}
        try:
            snap = self.source.read()
            self.prev, self.last = None, snap
            d = self.engine.step(snap, self.runtime.placeable(self._table), snap.mono_s, self.demands.demand())
            self.last_decision = d
            for m, c in d.choices.items():
                if m in choices:
                    choices[m] = (c.variant, c.device)
            self._record(d, force=True)
        except Exception:
            log.exception("initial policy decision failed; loading reference variants")
        return choices

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for m, s in self.runtime.slots.items():
            if s.active is not None:
                self.engine.set_current(m, s.active.variant or s.manifest.reference, s.active.device or "cpu")
        self.sampler.start()

    def stop(self) -> None:
        self.sampler.stop(wait=True)
        try:
            self.source.close()
        except Exception:  # noqa: BLE001 - best-effort cleanup on stop: a sensor source may raise anything on close
            pass

    def now(self) -> float:
        """The policy's clock: the last snapshot's (trace time under replay), else monotonic time."""
        return self.last.mono_s if self.last is not None else time.monotonic()

    def healthy(self) -> bool:
        """The sampling loop ticked recently (used to gate the systemd watchdog)."""
        if self.last_tick_mono is None:
            return True
        return time.monotonic() - self.last_tick_mono < max(5.0, 5 * self.interval_s)

    # -- sampling thread ----------------------------------------------------------------------------
    def _own_util(self, snap: Snapshot) -> Snapshot:
        """The snapshot with ``cpu.agent_util_percent``: this daemon's process tree's CPU share since the last
        sample (so decide() does not count the agent's own inference as competing load)."""
        import dataclasses
        import os

        import psutil

        try:
            me = psutil.Process()
            procs = [me, *me.children(recursive=True)]
            total = 0.0
            for p in procs:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            return snap
        now = time.monotonic()
        prev, self._own_cpu = self._own_cpu, (now, total)
        if prev is None or now <= prev[0] or snap.cpu.util_percent is None:
            return snap
        pct = max(0.0, total - prev[1]) / (now - prev[0]) / (snap.cpu.online or os.cpu_count() or 1) * 100
        return dataclasses.replace(snap, cpu=dataclasses.replace(snap.cpu,
                                                                 agent_util_percent=round(min(100.0, pct), 1)))

    def _on_sample(self, snap: Snapshot) -> None:
        if snap.source == "live":
            snap = self._own_util(snap)
        self.prev, self.last = self.last, snap
        # converted once per sample, not per request (the request path only does arithmetic)
        self._readings = (self._readings[1], EnergyReading.from_snapshot(snap))
        self.last_tick_mono = time.monotonic()
        if self.prev is not None:
            self.acct.calibrate(self.prev, snap)   # learns watts per busy core where a meter exists
        self.telemetry.record("samples", flat_sample(snap))
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._decide, snap)

    # -- event loop ---------------------------------------------------------------------------------
    def _decide(self, snap: Snapshot) -> None:
        if self.runtime.closing:
            return
        if self._applying:       # a swap is in progress: decide again on the newest sample afterwards
            self._pending = snap
            return
        try:
            # the snapshot's clock: real time when live, trace time when a trace is replayed, so dwell
            # and debounce count the same seconds the rules' readings do
            demand = self.demands.demand()
            d = self.engine.step(snap, self.runtime.placeable(self._table), snap.mono_s, demand)
        except Exception:
            log.exception("policy decision failed")
            return
        try:
            self._want_standbys(d, snap, demand)
        except Exception:   # a standby is an optimisation: it never stops the decision being applied
            log.exception("standby choice failed")
        self.last_decision = d
        for u in d.unknown:
            if u not in self._unknown_logged:
                self._unknown_logged.add(u)
                log.warning("a rule reads an unknown value; it counts as false",
                            extra={"fields": {"rule": u, "sensors": snap.source}})
        self._record(d)
        pins = self.engine.pins()   # a pinned model stays where its pin put it, measured or not
        changes = [c for c in d.changes() if c.model in self.runtime.slots and c.model not in pins]
        if changes:
            self._applying = True
            task = asyncio.ensure_future(self._apply(d, changes, snap.mono_s))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._sync_standbys()

    # -- warm standby -------------------------------------------------------------------------------
    def _want_standbys(self, d: Decision, snap: Snapshot, demand: Mapping[str, Demand]) -> None:
        """Tell the runtime what to keep warm next to each causal-lm model's chosen variant (before the
        swaps of this decision, so a swap away from the wanted variant keeps its worker as the standby)."""
        prof = self.engine.policy.profiles.get(d.profile)
        pins = self.engine.pins()
        cs = compute_state(snap)
        rows = self.runtime.placeable(self._table)
        for m, slot in self.runtime.slots.items():
            if slot.manifest.kind != "causal-lm":
                continue
            c = d.choices.get(m)
            sc = None
            if prof is None or not prof.standby:
                why = f"profile {d.profile} has no standby"
            elif m in pins:
                why = "pinned"
            elif c is None:
                why = "no policy choice"
            else:
                sc, why = standby_why(m, rows, (c.variant, c.device), demand.get(m), cs)
                why = sc.why if sc is not None else why
            want = sc.key if sc is not None else None
            if want != slot.standby_want:
                log.info("standby want", extra={"fields": {"model": m, "standby": f"{want[0]}@{want[1]}" if want
                                                           else None, "reason": why, "profile": d.profile}})
            self.runtime.want_standby(m, want, why)

    def _sync_standbys(self) -> None:
        for m, slot in self.runtime.slots.items():
            if slot.manifest.kind == "causal-lm":
                self.runtime.sync_standby(m)

    def route(self, model: str, qos: QoS, active: tuple[str, str] | None, standby: tuple[str, str] | None,
              tokens: int | None, waited_ms: float = 0.0) -> bool:
        """Where a deadline request goes: False = the active variant (admitted, see :meth:`admit`); True =
        the warm standby, when the active one's predicted latency misses what is left of the deadline, the
        standby's meets it and its quality meets the request's floor (one log line each). Neither:
        DeadlineInfeasible at once (from admit)."""
        if qos.deadline_ms is None or active is None:
            return False
        left = qos.deadline_ms - waited_ms
        pred = self.predicted_ms(model, active[0], active[1], tokens)
        if pred is None or pred <= left:
            return False
        if standby is not None and model not in self.engine.pins():
            sp = self.predicted_ms(model, standby[0], standby[1], tokens)
            q = next((r.quality_rel for r in self._table if r.model == model and r.key == standby), None)
            floor_ok = qos.min_quality is None or (q or 0.0) >= qos.min_quality
            if sp is not None and sp <= left and floor_ok:
                cs = compute_state(self.last) if self.last is not None else None
                log.info("route standby", extra={"fields": {
                    "model": model, "to": f"{standby[0]}@{standby[1]}", "from": f"{active[0]}@{active[1]}",
                    "deadline_ms": qos.deadline_ms, "left_ms": round(left, 1), "active_ms": round(pred, 1),
                    "standby_ms": round(sp, 1), "quality_rel": q, "min_quality": qos.min_quality,
                    "reason": f"{active[0]}@{active[1]} ~{pred:.0f} ms misses {left:.0f} ms left; standby "
                              f"{standby[0]}@{standby[1]} ~{sp:.0f} ms meets it"
                              + (f" at {cs.describe()}" if cs is not None else "")}})
                self.routed[model] = self.routed.get(model, 0) + 1
                return True
        self.admit(model, qos, active[0], active[1], tokens, waited_ms)
        return False

    async def _apply(self, d: Decision, changes: list[Any], decided_t: float) -> None:
        try:
            for c in changes:
                # decided_t: the snapshot clock of the decision (trace time under replay), so a swap
                # that completes seconds later can still be drawn where the readings caused it
                reason = {"why": "policy", "profile": d.profile, "source": d.source, "rule": d.rule,
                          "hold": d.hold, "explanation": c.why, "readings": d.readings, "decided_t": decided_t}
                try:
                    await self.runtime.swap(c.model, c.variant, c.device, reason)
                except AgentError as e:
                    log.error("policy swap failed", extra={"fields": {"model": c.model, "to": c.label,
                                                                       "error": str(e)}})
                    a = self.runtime.slots[c.model].active
                    if a is not None:
                        self.engine.set_current(c.model, a.variant or "", a.device or "cpu", self.now())
        finally:
            self._applying = False
            self._sync_standbys()
            pending, self._pending = self._pending, None
            if pending is not None:
                self._decide(pending)

    def _record(self, d: Decision, force: bool = False) -> None:
        key = (d.profile, d.rule, d.source, d.hold, tuple(sorted((m, c.label) for m, c in d.choices.items())))
        if not force and key == self._last_key and not d.changes():
            return
        self._last_key = key
        fields = d.log_fields()
        log.info("decision", extra={"fields": fields})
        self.telemetry.record("decisions", fields)
        self.emit({"event": "decision", "profile": d.profile, "rule": d.rule, "source": d.source,
                   "changes": fields.get("changes"), "readings": d.readings, "t": self.now()})

    def hint(self, model: str, hints: dict[str, float]) -> None:
        """Per-request QoS hints (deadline_ms, min_quality, priority): kept per model for decide()."""
        self.hints[model] = {**hints, "at": time.time()}
        self.demands.note(model, parse_qos(hints), int(hints["tokens"]) if hints.get("tokens") else None)

    # -- per-request QoS ----------------------------------------------------------------------------
    def gate(self, model: str, slots: int = 2) -> EdfGate:
        g = self.gates.get(model)
        if g is None:
            g = self.gates[model] = EdfGate(slots)
        return g

    def predicted_ms(self, model: str, variant: str, device: str, tokens: int | None, pct: int = 50) -> float | None:
        """Latency of one request on that row at the last snapshot's compute state (p50 by default: admission
        refuses what would typically be late; decide() plans with p95, so it moves off a row first)."""
        cs = compute_state(self.last) if self.last is not None else None
        for r in self._table:
            if r.model == model and r.variant == variant and r.device == device:
                return (r.at(cs) if cs is not None else r).request_ms(tokens, pct)
        return None

    def admit(self, model: str, qos: QoS, variant: str | None, device: str | None, tokens: int | None,
              waited_ms: float = 0.0) -> float | None:
        """Refuse at once (DeadlineInfeasible) a request the loaded row cannot finish in time; returns the
        predicted latency (None = unknown: admitted)."""
        if qos.deadline_ms is None or variant is None or device is None:
            return None
        left = qos.deadline_ms - waited_ms
        pred = self.predicted_ms(model, variant, device, tokens)
        if pred is None or pred <= left:
            return pred
        cs = compute_state(self.last) if self.last is not None else None
        cands = []
        for r in self._table:
            if r.model != model or (qos.min_quality is not None and (r.quality_rel or 0.0) < qos.min_quality):
                continue
            ms = (r.at(cs) if cs is not None else r).request_ms(tokens, 50)
            if ms is not None:
                cands.append((ms, r.label))
        fastest = min(cands, default=None)
        where = f" at {cs.describe()}" if cs is not None else ""
        if fastest is None:
            msg = f"deadline {qos.deadline_ms:g} ms: {variant}@{device} needs ~{pred:.0f} ms{where}"
        elif fastest[0] <= left:
            msg = (f"deadline {qos.deadline_ms:g} ms cannot be met by the loaded {variant}@{device} "
                   f"(~{pred:.0f} ms{where}); fastest feasible: {fastest[1]} ~{fastest[0]:.0f} ms (the policy "
                   f"is told; retry shortly)")
        else:
            msg = (f"deadline {qos.deadline_ms:g} ms cannot be met by any variant{where}: fastest feasible "
                   f"latency is {fastest[1]} ~{fastest[0]:.0f} ms (loaded {variant}@{device} ~{pred:.0f} ms)")
        raise DeadlineInfeasible(msg, data={"deadline_ms": qos.deadline_ms, "predicted_ms": round(pred, 1),
                                            "fastest_ms": round(fastest[0], 1) if fastest else None,
                                            "fastest": fastest[1] if fastest else None,
                                            "loaded": f"{variant}@{device}", "waited_ms": round(waited_ms, 1)})

    # -- energy -------------------------------------------------------------------------------------
    def attribute(self, model: str, variant: str, cpu_s: float, wall_s: float, tokens: int = 0,
                  requests: int = 1) -> tuple[float, str]:
        """Joules of ``requests`` requests (or one generation) that used ``cpu_s`` of CPU over ``wall_s``."""
        r0, r1 = self._readings
        if r0 is not None and r1 is not None:
            j, meter = self.acct.joules(cpu_s, wall_s, r0, r1)
        else:
            j, meter = self.acct.model(cpu_s), "model"
        e = self.energy[(model, variant)]
        e[0] += requests
        e[1] += j
        e[2] += wall_s
        e[3] += tokens
        e[4] += cpu_s
        self.meters[(model, variant)] = meter
        return j, meter

    def energy_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (m, v), (n, j, s, tok, cpu) in sorted(self.energy.items()):
            meter = self.meters.get((m, v), "model")
            out[f"{m}/{v}"] = {"requests": int(n), "joules_per_request": j / n if n else None,
                               "joules_per_token": j / tok if tok else None, "tokens": int(tok),
                               "cpu_s": round(cpu, 4), "avg_watts": j / s if s > 0 else None,
                               "meter": meter if meter != "model" else
                               f"model (worker CPU time x {self.acct.watts_per_busy_core:g} W per busy core)"}
        return out

    def sensors_status(self) -> dict[str, Any] | None:
        if self.last is None:
            return None
        return flat_sample(self.last)
