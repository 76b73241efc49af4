"""What decide() remembers between samples: current choice per model, swap times, holds, pins, rule memory.

The one store of holds and pins in agentd (the service layer reads them here; the runtime keeps none).

A PolicyState is frozen: decide() returns the next one inside its Decision; nothing is mutated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Hold:
    cookie: str
    profile: str
    owner: str              # who holds it (an IPC peer id); released when that peer disconnects
    since: float            # on the policy's clock (trace time under replay)
    reason: str = ""        # the holder's words, for status
    pid: int = 0            # the holder's process and user (a release needs the same uid, or root)
    uid: int = 0
    created: float = 0.0    # wall-clock time (time.time()) the hold was taken


@dataclass(frozen=True)
class RuleMemory:
    active: bool = False
    pending_since: float | None = None   # when the condition started to disagree with ``active`` (debounce)


@dataclass(frozen=True)
class PolicyState:
    current: Mapping[str, tuple[str, str]] = field(default_factory=dict)   # model -> (variant, device)
    last_swap: Mapping[str, float] = field(default_factory=dict)           # model -> time of last change
    holds: tuple[Hold, ...] = ()
    pins: Mapping[str, tuple[str, str]] = field(default_factory=dict)      # model -> (variant, device)
    rules: Mapping[str, RuleMemory] = field(default_factory=dict)

    def with_hold(self, hold: Hold) -> PolicyState:
        return replace(self, holds=(*(h for h in self.holds if h.cookie != hold.cookie), hold))

    def without_holds(self, cookies: set[str]) -> PolicyState:
        return replace(self, holds=tuple(h for h in self.holds if h.cookie not in cookies))

    def with_pin(self, model: str, variant: str, device: str) -> PolicyState:
        return replace(self, pins={**self.pins, model: (variant, device)})

    def without_pin(self, model: str) -> PolicyState:
        return replace(self, pins={k: v for k, v in self.pins.items() if k != model})

    def with_current(self, model: str, variant: str, device: str, now: float | None = None) -> PolicyState:
        last = dict(self.last_swap)
        if now is not None:
            last[model] = now
        return replace(self, current={**self.current, model: (variant, device)}, last_swap=last)
