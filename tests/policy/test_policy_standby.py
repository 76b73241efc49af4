"""Warm standby: the profile key (strict, located errors, inherited by include) and the pure choice of the
variant to keep warm (agent/policy/standby.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import REPO

from agent.errors import PolicyError
from agent.policy.costs import NOMINAL, ComputeState
from agent.policy.loader import load_policy
from agent.policy.model import Demand
from agent.policy.standby import standby_for, standby_why
from agent.policy.table import VariantRow


def _row(variant: str, q: float, tok_ms: float, ttft: float = 20.0, unit: str = "token",
         device: str = "cpu") -> VariantRow:
    return VariantRow("lm", variant, device, "CPUExecutionProvider", variant, q, tok_ms, tok_ms * 1.1, 0.01,
                      100 << 20, 500.0, unit=unit, ttft_ms=ttft)


ROWS = [_row("fp32", 1.0, 28.0), _row("int8", 0.96, 20.0), _row("int4", 0.9, 14.0)]
QUARTER = ComputeState(0.25, 0.0, 0.25, 1.0)


def test_the_profile_key_is_parsed_inherited_and_checked(write_policy: Callable[..., Path]) -> None:
    p = write_policy('default = "a"\n[profiles.a]\nobjective = "max_quality"\nstandby = true\n'
                     '[profiles.b]\ninclude = "a"\n[profiles.c]\ninclude = "a"\nstandby = false\n')
    pol = load_policy([p])
    assert (pol.profile("a").standby, pol.profile("b").standby, pol.profile("c").standby) == (True, True, False)
    assert not pol.profile("balanced").standby          # built-in profiles: off
    assert load_policy([REPO / "policies" / "quality-first.toml"]).profile("quality-first").standby
    assert not load_policy([REPO / "policies" / "balanced.toml"]).profile("balanced").standby
    bad = write_policy('[profiles.a]\nobjective = "max_quality"\nstandby = "yes"\n', "bad.toml")
    with pytest.raises(PolicyError) as ei:
        load_policy([bad])
    assert str(ei.value).startswith(f"{bad}:3: profiles.a.standby: expected true or false, got string")
    rule = write_policy('[profiles.a]\nobjective = "max_quality"\n[[rules]]\nname = "r"\n'
                        "when = 'battery.percent < 20.0'\n[rules.tighten]\nstandby = true\n", "rule.toml")
    with pytest.raises(PolicyError, match="standby"):   # a rule tightens constraints; standby is not one
        load_policy([rule])


def test_the_standby_is_the_fastest_row_the_requests_floor_allows() -> None:
    demand = Demand(deadline_ms=1600, tokens=16)
    sc = standby_for("lm", ROWS, ("fp32", "cpu"), demand, NOMINAL)
    assert sc is not None and sc.key == ("int4", "cpu")
    assert "deadline 1600 ms" in sc.why and "int4@cpu" in sc.why and "fp32@cpu" in sc.why
    # the requests' own floor excludes int4: int8 is the fastest it allows
    sc = standby_for("lm", ROWS, ("fp32", "cpu"), Demand(deadline_ms=1600, min_quality=0.95, tokens=16), QUARTER)
    assert sc is not None and sc.key == ("int8", "cpu") and "quality >= 0.95" in sc.why
    # none: the served variant is already the fastest, no deadline demand, no demand, nothing faster allowed
    assert standby_for("lm", ROWS, ("int4", "cpu"), demand, NOMINAL) is None
    assert "the served int4@cpu is the fastest" in standby_why("lm", ROWS, ("int4", "cpu"), demand, NOMINAL)[1]
    assert standby_why("lm", ROWS, ("fp32", "cpu"), Demand(tokens=16), NOMINAL)[1].startswith("no deadline")
    assert standby_for("lm", ROWS, ("fp32", "cpu"), Demand(tokens=16), NOMINAL) is None
    assert standby_for("lm", ROWS, ("fp32", "cpu"), None, NOMINAL) is None
    assert standby_for("lm", ROWS, ("fp32", "cpu"), Demand(deadline_ms=900, min_quality=0.99), NOMINAL) is None
    # per-request rows (tensor models) never get a standby; nor other models' rows
    flat = [_row(r.variant, r.quality_rel or 0.0, r.latency_ms_p50 or 0.0, unit="request") for r in ROWS]
    assert standby_for("lm", flat, ("fp32", "cpu"), demand, NOMINAL) is None
    assert standby_for("other", ROWS, ("fp32", "cpu"), demand, NOMINAL) is None
