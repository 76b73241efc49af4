from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from policy_helpers import REPO, make_snap

from agent.policy.decide import decide
from agent.policy.loader import load_policy
from agent.policy.model import Policy
from agent.policy.state import Hold, PolicyState
from agent.policy.synthetic import smollm2_rows
from agent.policy.table import VariantRow

BASE = """
[switching]
min_dwell_s = 0
debounce_s = 0
[switching.margins]
energy = 0.0
latency = 0.0
quality = 0.0
"""


@pytest.fixture
def pol(write_policy: Callable[..., Path]) -> Callable[[str], Policy]:
    def make(extra: str = "", default: str | None = None) -> Policy:
        head = f'default = "{default}"\n' if default else ""
        return load_policy([write_policy(head + BASE + extra)])
    return make


LOW_BATTERY = """
[[rules]]
name = "low-battery"
when = 'power.on_ac == false && battery.percent < 20.0'
profile = "power-saver"
[profiles.power-saver]
objective = "min_energy"
min_quality = 0.5
"""


def choice(d, model: str = "smollm2") -> str:  # type: ignore[no-untyped-def]
    return d.choices[model].label


def test_default_balanced_picks_int8_the_least_energy_within_one_percent(pol, rows) -> None:  # type: ignore[no-untyped-def]
    d = decide(make_snap(), PolicyState(), pol(), rows, 0.0)
    assert choice(d) == "int8@cpu" and d.profile == "balanced" and d.source == "default"
    assert d.choices["smollm2"].change and d.choices["smollm2"].previous is None


def test_swaps_to_int8_dyn_when_battery_below_20_percent(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(LOW_BATTERY)
    d = decide(make_snap(pct=15.0), PolicyState(), p, rows, 0.0)
    assert d.profile == "power-saver" and d.rule == "low-battery" and d.source == "rule"
    assert choice(d) == "int8-dyn@cpu"
    assert d.readings["battery.percent"] == 15.0 and d.readings["power.on_ac"] is False


def test_rule_does_not_fire_on_ac(pol, rows) -> None:  # type: ignore[no-untyped-def]
    d = decide(make_snap(pct=15.0, on_ac=True), PolicyState(), pol(LOW_BATTERY), rows, 0.0)
    assert d.profile == "balanced" and d.rule is None


def test_first_active_rule_with_a_profile_wins(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(LOW_BATTERY + """
[[rules]]
name = "any"
when = 'true'
profile = "performance"
""")
    d = decide(make_snap(pct=10.0), PolicyState(), p, rows, 0.0)
    assert d.rule == "low-battery" and set(d.rules_active) == {"low-battery", "any"}


def test_exit_when_gives_hysteresis(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(LOW_BATTERY.replace("profile =", "exit_when = 'battery.percent > 25.0'\nprofile ="))
    st = PolicyState()
    seq = [(18.0, True), (22.0, True), (24.9, True), (26.0, False), (22.0, False), (19.0, True)]
    for t, (pct, active) in enumerate(seq):
        d = decide(make_snap(pct=pct), st, p, rows, float(t))
        st = d.state
        assert ("low-battery" in d.rules_active) is active, (pct, d.rules_active)


def test_debounce_needs_the_condition_to_hold(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(LOW_BATTERY.replace("profile =", "debounce_s = 10\nprofile ="))
    st = PolicyState()
    active = []
    for t, pct in [(0, 15.0), (5, 15.0), (9, 15.0), (10, 15.0), (12, 50.0), (15, 15.0), (21, 50.0)]:
        d = decide(make_snap(pct=pct), st, p, rows, float(t))
        st = d.state
        active.append("low-battery" in d.rules_active)
    # pending from t=0, active at t=10; a blip to 50 % at t=12 does not end it; neither does one at t=21
    assert active == [False, False, False, True, True, True, True]


def test_blips_shorter_than_debounce_never_activate(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(LOW_BATTERY.replace("profile =", "debounce_s = 5\nprofile ="))
    st = PolicyState()
    for t in range(60):
        d = decide(make_snap(pct=15.0 if t % 4 < 2 else 50.0), st, p, rows, float(t))
        st = d.state
        assert not d.rules_active


def test_tighten_raises_the_quality_floor_on_top_of_the_profile(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(LOW_BATTERY + """
[[rules]]
name = "strict"
when = 'power.on_ac == false'
[rules.tighten]
min_quality = 0.999
""")
    d = decide(make_snap(pct=15.0), PolicyState(), p, rows, 0.0)
    assert d.profile == "power-saver" and d.constraints.min_quality == 0.999
    assert choice(d) == "fp32@cpu"


def test_memory_pressure_tightening_excludes_variants_that_do_not_fit(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol("""
[[rules]]
name = "pressure"
when = 'memory.psi_some_avg10 > 10.0'
[rules.tighten]
memory_headroom_mb = 1000
min_quality = 0.5
""")
    d = decide(make_snap(avail_mb=1300.0, psi=20.0), PolicyState(), p, rows, 0.0)
    # int8-dyn (200 MB) and int4 (150 MB) fit in 1300-1000; int8 (330 MB) does not
    assert choice(d) == "int8-dyn@cpu"
    alt = {a.variant: a for a in d.choices["smollm2"].alternatives}
    assert alt["int8"].verdict == "violates" and "MB free" in alt["int8"].why


def test_resident_variant_only_needs_the_headroom(pol, rows) -> None:  # type: ignore[no-untyped-def]
    st = PolicyState(current={"smollm2": ("int8", "cpu")})
    d = decide(make_snap(avail_mb=300.0), st, pol(), rows, 0.0)   # 300 MB >= 256 MB headroom
    assert choice(d) == "int8@cpu" and not d.choices["smollm2"].change


def test_thermal_rule_fires_from_severe_upwards(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol("""
[[rules]]
name = "hot"
when = 'thermal.level >= "severe"'
profile = "power-saver"
""")
    assert decide(make_snap(level="moderate"), PolicyState(), p, rows, 0.0).rule is None
    assert decide(make_snap(level="critical"), PolicyState(), p, rows, 0.0).rule == "hot"


def test_thermal_ceiling_switches_the_objective_to_min_energy(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(default="fast", extra="""
[profiles.fast]
objective = "min_latency"
min_quality = 0.5
thermal_ceiling = "severe"
""")
    cool = decide(make_snap(level="light"), PolicyState(), p, rows, 0.0)
    hot = decide(make_snap(level="severe"), PolicyState(), p, rows, 0.0)
    assert cool.objective == "min_latency" and hot.objective == "min_energy"
    assert "thermal ceiling severe reached" in hot.choices["smollm2"].why
    assert choice(cool) == "int8-dyn@cpu"  # fastest too, with quality floor 0.5


def test_latency_slo_excludes_slow_variants(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(default="q", extra="""
[profiles.q]
objective = "max_quality"
max_latency_p95_ms = 600
""")
    d = decide(make_snap(), PolicyState(), p, rows, 0.0)
    assert choice(d) == "int8@cpu"   # fp32/fp16 p95 845/915 ms break the SLO
    alt = {a.variant: a for a in d.choices["smollm2"].alternatives}
    assert "SLO" in alt["fp32"].why


def test_denied_and_allowed_devices(pol) -> None:  # type: ignore[no-untyped-def]
    rows = smollm2_rows(npu=True)
    d = decide(make_snap(), PolicyState(), pol(), rows, 0.0)
    assert choice(d) == "int8@npu"
    p = pol('[profiles.balanced]\nobjective = "min_energy"\nmin_quality = 0.99\ndeny_devices = ["npu"]\n')
    assert choice(decide(make_snap(), PolicyState(), p, rows, 0.0)) == "int8@cpu"
    p = pol('[profiles.balanced]\nobjective = "min_energy"\nmin_quality = 0.99\nallow_devices = ["cpu"]\n')
    assert choice(decide(make_snap(), PolicyState(), p, rows, 0.0)) == "int8@cpu"


def test_margin_keeps_a_feasible_current_choice(write_policy, rows) -> None:  # type: ignore[no-untyped-def]
    p = load_policy([write_policy(BASE.replace("energy = 0.0", "energy = 0.5"))])
    st = PolicyState(current={"smollm2": ("fp32", "cpu")})
    d = decide(make_snap(), st, p, rows, 100.0)
    assert choice(d) == "fp32@cpu" and not d.choices["smollm2"].change   # int8 is only 33 % better
    assert "margin" in d.choices["smollm2"].why
    p2 = load_policy([write_policy(BASE.replace("energy = 0.0", "energy = 0.2"), "p2.toml")])
    assert choice(decide(make_snap(), st, p2, rows, 100.0)) == "int8@cpu"


def test_dwell_blocks_a_second_swap_within_min_dwell(write_policy, rows) -> None:  # type: ignore[no-untyped-def]
    p = load_policy([write_policy(BASE.replace("min_dwell_s = 0", "min_dwell_s = 30") + LOW_BATTERY)])
    st = PolicyState(current={"smollm2": ("int8", "cpu")}, last_swap={"smollm2": 0.0})
    d = decide(make_snap(pct=10.0), st, p, rows, 10.0)
    assert choice(d) == "int8@cpu" and "dwell" in d.choices["smollm2"].why
    d = decide(make_snap(pct=10.0), d.state, p, rows, 30.0)
    assert choice(d) == "int8-dyn@cpu" and d.choices["smollm2"].change
    assert d.state.last_swap["smollm2"] == 30.0


def test_pin_wins_over_profile_and_dwell_until_unpinned(write_policy, rows) -> None:  # type: ignore[no-untyped-def]
    p = load_policy([write_policy(BASE.replace("min_dwell_s = 0", "min_dwell_s = 30"))])
    st = PolicyState(current={"smollm2": ("int8", "cpu")},
                     last_swap={"smollm2": 0.0}).with_pin("smollm2", "int4", "cpu")
    d = decide(make_snap(), st, p, rows, 1.0)
    assert choice(d) == "int4@cpu" and "pinned" in d.choices["smollm2"].why
    d = decide(make_snap(), d.state.without_pin("smollm2"), p, rows, 40.0)
    assert choice(d) == "int8@cpu"


def test_pin_to_an_unknown_row_is_ignored_and_said(pol, rows) -> None:  # type: ignore[no-untyped-def]
    st = PolicyState().with_pin("smollm2", "int2", "cpu")
    d = decide(make_snap(), st, pol(), rows, 0.0)
    assert choice(d) == "int8@cpu" and "ignored" in d.choices["smollm2"].why


def test_power_saver_wins_among_holds(pol, rows) -> None:  # type: ignore[no-untyped-def]
    st = PolicyState(holds=(Hold("c1", "performance", "app1", 0.0), Hold("c2", "power-saver", "app2", 5.0)))
    d = decide(make_snap(), st, pol(), rows, 10.0)
    assert d.profile == "power-saver" and d.source == "hold" and d.hold == "c2"


def test_earliest_hold_wins_without_power_saver(pol, rows) -> None:  # type: ignore[no-untyped-def]
    st = PolicyState(holds=(Hold("late", "balanced", "a", 9.0), Hold("early", "performance", "b", 1.0)))
    d = decide(make_snap(), st, pol(), rows, 10.0)
    assert d.profile == "performance" and d.hold == "early"


def test_hold_beats_a_rule_profile_but_rule_tightening_still_binds(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(LOW_BATTERY + """
[[rules]]
name = "floor"
when = 'true'
[rules.tighten]
min_quality = 0.999
""")
    st = PolicyState(holds=(Hold("c", "performance", "app", 0.0),))
    d = decide(make_snap(pct=10.0), st, p, rows, 1.0)
    assert d.profile == "performance" and d.source == "hold" and d.rule is None
    assert d.constraints.min_quality == 0.999 and choice(d) == "fp32@cpu"


def test_unknown_reading_does_not_fire_and_is_reported(pol, rows) -> None:  # type: ignore[no-untyped-def]
    d = decide(make_snap(pct=None, on_ac=None), PolicyState(), pol(LOW_BATTERY.replace(
        "power.on_ac == false && ", "!power.on_ac && ")), rows, 0.0)
    assert d.rule is None and d.errors == () and d.unknown and "low-battery" in d.unknown[0]
    assert "power.on_ac" in d.unknown[0] and "unknown" in d.log_fields()["unknown"]


def test_nothing_feasible_keeps_the_current_variant(pol, rows) -> None:  # type: ignore[no-untyped-def]
    st = PolicyState(current={"smollm2": ("int8", "cpu")})
    d = decide(make_snap(avail_mb=100.0), st, pol(), rows, 0.0)
    assert choice(d) == "int8@cpu" and "no variant meets" in d.choices["smollm2"].why


def test_rows_lacking_energy_are_skipped_by_min_energy_but_usable_by_max_quality(pol) -> None:  # type: ignore[no-untyped-def]
    rows = [replace(r, energy_j=None) if r.variant == "fp32" else r for r in smollm2_rows()]
    rows.append(VariantRow("smollm2", "fp64", "cpu", "CPU", "fp32", 1.001, None, None, None, None))
    d = decide(make_snap(), PolicyState(), pol('[profiles.q]\nobjective = "max_quality"\n', "q"), rows, 0.0)
    assert choice(d) == "fp64@cpu"
    d = decide(make_snap(), PolicyState(), pol(), rows, 0.0)
    alt = {a.variant: a for a in d.choices["smollm2"].alternatives}
    assert "no measured energy_j" in alt["fp64"].why


def test_decide_is_pure_and_deterministic(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol(LOW_BATTERY)
    st = PolicyState(current={"smollm2": ("fp32", "cpu")})
    before = repr(st)
    a = decide(make_snap(pct=10.0), st, p, rows, 5.0)
    b = decide(make_snap(pct=10.0), st, p, rows, 5.0)
    assert a == b and repr(st) == before


def test_every_model_in_the_table_gets_a_choice(pol) -> None:  # type: ignore[no-untyped-def]
    rows = smollm2_rows("a") + smollm2_rows("b")
    st = PolicyState().with_pin("b", "fp16", "cpu")
    d = decide(make_snap(), st, pol(), rows, 0.0)
    assert choice(d, "a") == "int8@cpu" and choice(d, "b") == "fp16@cpu"


def test_log_fields_is_one_flat_row_of_scalars(rows) -> None:  # type: ignore[no-untyped-def]
    p = load_policy([REPO / "policies" / "balanced.toml"])
    d = decide(make_snap(pct=10.0), PolicyState(current={"smollm2": ("fp32", "cpu")}), p, rows, 100.0)
    f = d.log_fields()
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in f.values())
    assert f["changes"] == "smollm2:fp32@cpu->int8@cpu" and f["profile"] == "balanced"
    assert f["r.battery.percent"] == 10.0 and "why.smollm2" in f


def test_alternatives_say_why_each_lost(pol, rows) -> None:  # type: ignore[no-untyped-def]
    d = decide(make_snap(), PolicyState(), pol(), rows, 0.0)
    alt = {a.variant: a for a in d.choices["smollm2"].alternatives}
    assert set(alt) == {"fp32", "fp16", "int4", "int8-dyn"}
    assert alt["fp32"].verdict == "worse" and "energy_j" in alt["fp32"].why
    assert alt["int4"].verdict == "violates" and "quality" in alt["int4"].why


def test_shrinks_to_a_smaller_variant_when_the_loaded_one_breaks_the_headroom(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol("""
[[rules]]
name = "pressure"
when = 'memory.psi_some_avg10 > 10.0'
[rules.tighten]
memory_headroom_mb = 768
min_quality = 0.5
""")
    st = PolicyState(current={"smollm2": ("fp32", "cpu")})
    d = decide(make_snap(avail_mb=700.0, psi=30.0), st, p, rows, 100.0)
    # fp32 (600 MB) leaves 700 < 768 MB; int8 needs 330 MB at the peak and 498 MB after fp32 is unloaded.
    # (tighten never lowers a floor: balanced's 0.99 stays, so int8-dyn is out)
    assert d.constraints.min_quality == 0.99
    assert choice(d) == "int8@cpu" and d.choices["smollm2"].change
    alt = {a.variant: a for a in d.choices["smollm2"].alternatives}
    assert alt["fp32"].verdict == "violates" and "headroom" in alt["fp32"].why


def test_a_variant_larger_than_free_memory_is_never_loaded(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol('[profiles.balanced]\nobjective = "max_quality"\nmemory_headroom_mb = 0\n')
    st = PolicyState(current={"smollm2": ("int8-dyn", "cpu")})
    d = decide(make_snap(avail_mb=500.0), st, p, rows, 100.0)
    # fp32 (600 MB) would free 200 MB later but does not fit next to int8-dyn now; int8 (330 MB) does
    assert choice(d) == "int8@cpu"


def test_exit_debounce_keeps_a_rule_through_a_saw_tooth(pol, rows) -> None:  # type: ignore[no-untyped-def]
    p = pol("""
[[rules]]
name = "hot"
when = 'thermal.level >= "severe"'
exit_when = 'thermal.level <= "moderate"'
exit_debounce_s = 60
[rules.tighten]
deny_devices = ["npu"]
""")
    st = PolicyState()
    active = {}
    # severe for 10 s, then a saw-tooth: 40 s light / 10 s severe, then cool for good from t=200
    for t in range(0, 300, 5):
        lvl = "severe" if t < 10 or (t < 200 and t % 50 >= 40) else "light"
        d = decide(make_snap(level=lvl), st, p, rows, float(t))
        st = d.state
        active[t] = "hot" in d.rules_active
    assert all(active[t] for t in range(0, 250, 5))   # light spells of 40 s < 60 s never end it
    assert not active[295]                             # 60 s of cool after t=190 ends it

