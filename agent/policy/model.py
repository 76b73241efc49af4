"""The policy's data model: profiles, constraints, rules, switching discipline (all frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from agent.policy.conditions import LEVEL_RANK, Condition

OBJECTIVES = ("min_energy", "min_latency", "max_quality")
DEVICES = ("cpu", "gpu", "npu", "remote", "split")
BUILTIN_PROFILES = ("power-saver", "balanced", "performance")


@dataclass(frozen=True)
class Constraints:
    """Hard limits a (variant, device) row must meet. ``None`` = no limit."""

    min_quality: float | None = None            # quality relative to the model's reference variant
    max_latency_p95_ms: float | None = None     # the p95 latency SLO
    memory_headroom_mb: float | None = None     # memory that must stay available after loading
    allow_devices: frozenset[str] | None = None  # None = every device
    deny_devices: frozenset[str] = frozenset()
    thermal_ceiling: str | None = None          # at/above this level the objective becomes min_energy
    # from the live requests (Demand), never from policy files:
    deadline_ms: float | None = None            # a request must finish within this (p95 at the current state)
    request_tokens: int | None = None           # tokens per request, to price per-token (causal-lm) rows

    def tighten(self, other: Constraints) -> Constraints:
        """The stricter of the two on every axis (rules only ever tighten)."""

        def hi(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else max(a, b)

        def lo(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else min(a, b)

        allow = self.allow_devices if other.allow_devices is None else (
            other.allow_devices if self.allow_devices is None else self.allow_devices & other.allow_devices)
        ceil = self.thermal_ceiling
        if other.thermal_ceiling is not None and (ceil is None or LEVEL_RANK[other.thermal_ceiling] < LEVEL_RANK[ceil]):
            ceil = other.thermal_ceiling
        return Constraints(
            min_quality=hi(self.min_quality, other.min_quality),
            max_latency_p95_ms=lo(self.max_latency_p95_ms, other.max_latency_p95_ms),
            memory_headroom_mb=hi(self.memory_headroom_mb, other.memory_headroom_mb),
            allow_devices=allow, deny_devices=self.deny_devices | other.deny_devices, thermal_ceiling=ceil,
            deadline_ms=lo(self.deadline_ms, other.deadline_ms),
            request_tokens=self.request_tokens if other.request_tokens is None else other.request_tokens,
        )

    def device_ok(self, device: str) -> bool:
        return device not in self.deny_devices and (self.allow_devices is None or device in self.allow_devices)

    def describe(self) -> dict[str, object]:
        return {
            "min_quality": self.min_quality, "max_latency_p95_ms": self.max_latency_p95_ms,
            "memory_headroom_mb": self.memory_headroom_mb,
            "allow_devices": sorted(self.allow_devices) if self.allow_devices is not None else None,
            "deny_devices": sorted(self.deny_devices), "thermal_ceiling": self.thermal_ceiling,
            "deadline_ms": self.deadline_ms, "request_tokens": self.request_tokens,
        }


# How far back the live demand looks (the daemon's DemandBook) and the window a simulated request file's
# rate is counted over, so decide() sees the same rate in both.
DEMAND_WINDOW_S = 30.0


@dataclass(frozen=True)
class Demand:
    """What the live requests of one model ask for (aggregated by the controller; a workload in the
    simulator). ``None`` = no request said."""

    deadline_ms: float | None = None   # the tightest deadline among recent requests
    min_quality: float | None = None   # the requests' own quality floor (the strictest among them)
    priority: int = 0                  # the highest priority among them (larger = more urgent)
    tokens: int | None = None          # tokens per request (max_tokens) for causal-lm models
    rate_per_s: float | None = None    # expected requests per second (prices a swap against its saving)

    def describe(self) -> str:
        parts = []
        if self.deadline_ms is not None:
            parts.append(f"deadline {self.deadline_ms:g} ms")
        if self.min_quality is not None:
            parts.append(f"min_quality {self.min_quality:g}")
        if self.tokens is not None:
            parts.append(f"{self.tokens} tokens")
        if self.priority:
            parts.append(f"priority {self.priority}")
        if self.rate_per_s is not None:
            parts.append(f"{self.rate_per_s:.3g} requests/s")
        return ", ".join(parts) or "no demand"


@dataclass(frozen=True)
class Profile:
    name: str
    objective: str
    constraints: Constraints = field(default_factory=Constraints)
    description: str = ""
    include: str | None = None
    # warm standby (causal-lm models with deadline demand): keep the fastest variant the requests' quality
    # floor allows loaded next to the active one, and serve a deadline request the active variant would miss
    # from it (agent/policy/standby.py, Runtime.want_standby). Costs that variant's memory while on.
    standby: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    when: Condition
    exit_when: Condition | None = None      # hysteresis: once active, stays until this is true
    profile: str | None = None              # select this profile while active
    tighten: Constraints | None = None      # tighten the active profile's constraints while active
    debounce_s: float | None = None         # overrides [switching] debounce_s
    exit_debounce_s: float | None = None    # how long the exit must hold before the rule ends (cool-down)


@dataclass(frozen=True)
class Margins:
    """Relative improvement a better candidate needs over a still-feasible current choice."""

    energy: float = 0.10
    latency: float = 0.10
    quality: float = 0.002


@dataclass(frozen=True)
class Switching:
    min_dwell_s: float = 30.0
    debounce_s: float = 3.0
    margins: Margins = field(default_factory=Margins)
    # Swap payback (objective min_energy): a swap costs the new row's load_ms x swap_power_w joules, and is
    # made only if the expected saving over payback_horizon_s (None: min_dwell_s) at the demand's request
    # rate pays it back.
    swap_power_w: float = 10.0
    payback_horizon_s: float | None = None

    @property
    def horizon_s(self) -> float:
        return self.min_dwell_s if self.payback_horizon_s is None else self.payback_horizon_s


@dataclass(frozen=True)
class Policy:
    profiles: dict[str, Profile]
    rules: tuple[Rule, ...] = ()
    default: str = "balanced"
    switching: Switching = field(default_factory=Switching)
    sources: tuple[str, ...] = ()

    def profile(self, name: str) -> Profile:
        return self.profiles[name]


def builtin_profiles() -> dict[str, Profile]:
    """The three profiles every policy has unless its files redefine them."""
    return {
        "power-saver": Profile("power-saver", "min_energy",
                               Constraints(min_quality=0.97, memory_headroom_mb=256.0),
                               "least energy per request, quality within 3 % of the reference"),
        "balanced": Profile("balanced", "min_energy",
                            Constraints(min_quality=0.99, memory_headroom_mb=256.0),
                            "least energy per request, quality within 1 % of the reference"),
        "performance": Profile("performance", "min_latency",
                               Constraints(min_quality=0.99, memory_headroom_mb=256.0),
                               "lowest latency, quality within 1 % of the reference"),
    }


def default_policy() -> Policy:
    return Policy(profiles=builtin_profiles())


def with_profiles(p: Policy, profiles: dict[str, Profile]) -> Policy:
    return replace(p, profiles=profiles)
