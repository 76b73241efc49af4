"""PolicyEngine: the stateful wrapper the daemon owns (holds, pins, reload, status) around decide()."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.errors import InvalidParams, NotFound, PolicyError
from agent.policy.decide import Decision, decide
from agent.policy.loader import load_policy
from agent.policy.model import Demand, Policy, default_policy
from agent.policy.state import Hold, PolicyState
from agent.policy.table import VariantRow
from agent.sensors.snapshot import Snapshot


class PolicyEngine:
    """Thread-safe. ``step()`` runs decide() and keeps its state; the daemon applies ``changes()``."""

    def __init__(self, policy: Policy | None = None, paths: Sequence[Path | str] = ()) -> None:
        self._lock = threading.Lock()
        self.policy = policy or default_policy()
        self.paths = tuple(str(p) for p in paths)
        self.state = PolicyState()
        self.last: Decision | None = None
        self.last_error: str | None = None
        self._table: list[VariantRow] = []

    @classmethod
    def from_files(cls, paths: Sequence[Path | str]) -> PolicyEngine:
        return cls(load_policy(paths), paths)

    def step(self, snapshot: Snapshot, table: list[VariantRow], now: float,
             demand: Mapping[str, Demand] | None = None) -> Decision:
        with self._lock:
            d = decide(snapshot, self.state, self.policy, table, now, demand)
            self.state, self.last, self._table = d.state, d, list(table)
            return d

    def hold(self, cookie: str, profile: str, owner: str, now: float = 0.0, *, reason: str = "", pid: int = 0,
             uid: int = 0) -> Hold:
        with self._lock:
            if profile not in self.policy.profiles:
                raise InvalidParams(f"profile: expected one of {', '.join(sorted(self.policy.profiles))}, "
                                    f"got {profile!r}")
            if not cookie:
                raise InvalidParams("cookie: expected a non-empty string, got ''")
            h = Hold(cookie, profile, owner, now, reason, pid, uid, time.time())
            self.state = self.state.with_hold(h)
            return h

    def holds(self) -> tuple[Hold, ...]:
        with self._lock:
            return self.state.holds

    def release(self, cookie: str) -> bool:
        with self._lock:
            had = any(h.cookie == cookie for h in self.state.holds)
            self.state = self.state.without_holds({cookie})
            return had

    def release_owner(self, owner: str) -> list[str]:
        """Release every hold of ``owner`` (call when that IPC peer disconnects)."""
        with self._lock:
            gone = [h.cookie for h in self.state.holds if h.owner == owner]
            self.state = self.state.without_holds(set(gone))
            return gone

    def pin(self, model: str, variant: str, device: str) -> None:
        """Pin ``model`` to a measured ``variant`` on ``device``: checked against the variant table of the
        last step always (before the first step the table is empty, so every pin is refused: the
        policy cannot vouch for a variant it has not seen)."""
        for key, val in (("model", model), ("variant", variant), ("device", device)):
            if not isinstance(val, str) or not val:
                raise InvalidParams(f"{key}: expected a non-empty string, got {val!r}")
        with self._lock:
            if not any(r.model == model and r.variant == variant and r.device == device for r in self._table):
                known = sorted({f"{r.variant}@{r.device}" for r in self._table if r.model == model})
                raise NotFound(f"no measured variant {variant!r} on {device!r} for model {model!r}; measured: "
                               + (", ".join(known) or "none (the policy has no table for it yet)"))
            self.state = self.state.with_pin(model, variant, device)

    def pin_loaded(self, model: str, variant: str, device: str) -> None:
        """Pin ``model`` to what the runtime has just loaded for a pin request, measured or not: the runtime
        vouches for it. decide() keeps a measured pin and says an unmeasured one is ignored; either way the
        controller moves no pinned model (:meth:`pins`)."""
        with self._lock:
            self.state = self.state.with_pin(model, variant, device)

    def pins(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            return dict(self.state.pins)

    def unpin(self, model: str) -> bool:
        with self._lock:
            had = model in self.state.pins
            self.state = self.state.without_pin(model)
            return had

    def dwell_remaining(self, models: Sequence[str], now: float) -> float:
        """Seconds until the policy may swap any of ``models`` again (0: at its next decision); a
        pin ignores dwell, so this is what an unpin or a released hold waits for."""
        with self._lock:
            dwell = self.policy.switching.min_dwell_s
            last = [self.state.last_swap[m] for m in models if m in self.state.last_swap]
            return max([0.0] + [dwell - (now - t) for t in last])

    def set_current(self, model: str, variant: str, device: str, now: float | None = None) -> None:
        """Tell the engine what is really loaded (at start, or after a swap failed)."""
        with self._lock:
            self.state = self.state.with_current(model, variant, device, now)

    def reload(self, paths: Sequence[Path | str] | None = None) -> None:
        """Validate first, swap second: on error the old policy stays and the error is kept for status()."""
        paths = tuple(str(p) for p in (paths if paths is not None else self.paths))
        try:
            new = load_policy(paths)
        except PolicyError as e:
            with self._lock:
                self.last_error = str(e)
            raise
        with self._lock:
            self.policy, self.paths, self.last_error = new, paths, None
            known = {r.name for r in new.rules}
            self.state = replace(self.state, rules={k: v for k, v in self.state.rules.items() if k in known})

    def status(self) -> dict[str, Any]:
        with self._lock:
            d = self.last
            return {
                "policy_files": list(self.paths),
                "default_profile": self.policy.default,
                "profile": d.profile if d else None,
                "objective": d.objective if d else None,
                "source": d.source if d else None,
                "rule": d.rule if d else None,
                "rules_active": list(d.rules_active) if d else [],
                "holds": [{"cookie": h.cookie, "profile": h.profile, "owner": h.owner} for h in self.state.holds],
                "pins": {m: f"{v}@{dv}" for m, (v, dv) in self.state.pins.items()},
                "current": {m: f"{v}@{dv}" for m, (v, dv) in self.state.current.items()},
                "last_error": self.last_error,
            }
