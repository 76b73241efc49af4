"""The adaptive loop: sensors -> Snapshot -> policy.decide() -> Decision -> runtime.swap().

The sampler thread (apscheduler) reads the sensor source every ``interval_s`` and hands the Snapshot
to the event loop; there the PolicyEngine decides, and changes are applied one at a time through the
runtime's make-before-break swap. A decision that changes the profile, the rule or a model's variant
is one structured log line and one telemetry row; a sample is one telemetry row.

Energy per request is attributed here too (the worker reports its CPU seconds; the sampler's last two
snapshots give the meter and the power), so the hot path does no sysfs reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

from agent.errors import AgentError
from agent.policy.decide import Decision
from agent.policy.engine import PolicyEngine
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
        self._pending: Snapshot | None = None
        self._last_key: tuple[Any, ...] | None = None
        self._table: list[VariantRow] = []
        self.hints: dict[str, dict[str, float]] = {}
        self._readings: tuple[EnergyReading | None, EnergyReading | None] = (None, None)
        self.energy: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # n, J, s
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
            d = self.engine.step(snap, self._table, snap.mono_s)
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
        except Exception:
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
    def _on_sample(self, snap: Snapshot) -> None:
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
            d = self.engine.step(snap, self._table, snap.mono_s)
        except Exception:
            log.exception("policy decision failed")
            return
        self.last_decision = d
        self._record(d)
        changes = [c for c in d.changes()
                   if c.model in self.runtime.slots and self.runtime.slots[c.model].pinned is None]
        if changes:
            self._applying = True
            asyncio.ensure_future(self._apply(d, changes, snap.mono_s))

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
        """Per-request QoS hints (deadline_ms, min_quality): kept per model and shown with decisions."""
        self.hints[model] = {**hints, "at": time.time()}

    # -- energy -------------------------------------------------------------------------------------
    def attribute(self, model: str, variant: str, cpu_s: float, wall_s: float) -> tuple[float, str]:
        r0, r1 = self._readings
        if r0 is not None and r1 is not None:
            j, meter = self.acct.joules(cpu_s, wall_s, r0, r1)
        else:
            j, meter = self.acct.model(cpu_s), "model"
        e = self.energy[(model, variant)]
        e[0] += 1
        e[1] += j
        e[2] += wall_s
        return j, meter

    def energy_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (m, v), (n, j, s) in sorted(self.energy.items()):
            out[f"{m}/{v}"] = {"requests": int(n), "joules_per_request": j / n if n else None,
                               "avg_watts": j / s if s > 0 else None}
        return out

    def sensors_status(self) -> dict[str, Any] | None:
        if self.last is None:
            return None
        return flat_sample(self.last)
