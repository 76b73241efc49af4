from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from policy_helpers import REPO, make_snap

from agent.errors import InvalidParams, NotFound, PolicyError
from agent.policy.engine import PolicyEngine
from agent.policy.synthetic import smollm2_rows


@pytest.fixture
def engine(tmp_path: Path) -> PolicyEngine:
    p = tmp_path / "balanced.toml"
    shutil.copy(REPO / "policies" / "balanced.toml", p)
    return PolicyEngine.from_files([p])


def test_step_keeps_state_between_samples(engine: PolicyEngine) -> None:
    rows = smollm2_rows()
    d1 = engine.step(make_snap(), rows, 0.0)
    d2 = engine.step(make_snap(), rows, 5.0)
    assert d1.choices["smollm2"].change and not d2.choices["smollm2"].change
    assert engine.status()["current"] == {"smollm2": "int8@cpu"}


def test_hold_selects_the_profile_and_release_ends_it(engine: PolicyEngine) -> None:
    rows = smollm2_rows()
    engine.hold("c1", "performance", "peer-1")
    assert engine.step(make_snap(), rows, 0.0).profile == "performance"
    assert engine.release("c1") is True and engine.release("c1") is False
    assert engine.step(make_snap(), rows, 1.0).profile == "balanced"


def test_holds_end_when_their_owner_disconnects(engine: PolicyEngine) -> None:
    engine.hold("a", "performance", "peer-1")
    engine.hold("b", "power-saver", "peer-1")
    engine.hold("c", "performance", "peer-2")
    assert sorted(engine.release_owner("peer-1")) == ["a", "b"]
    assert [h["cookie"] for h in engine.status()["holds"]] == ["c"]


def test_hold_of_unknown_profile_is_refused(engine: PolicyEngine) -> None:
    with pytest.raises(InvalidParams, match="got 'turbo'"):
        engine.hold("c", "turbo", "peer")


def test_pin_of_unknown_variant_is_refused_once_a_table_is_known(engine: PolicyEngine) -> None:
    engine.step(make_snap(), smollm2_rows(), 0.0)
    with pytest.raises(NotFound):
        engine.pin("smollm2", "int2", "cpu")
    engine.pin("smollm2", "fp32", "cpu")
    assert engine.step(make_snap(), smollm2_rows(), 1.0).choices["smollm2"].label == "fp32@cpu"
    assert engine.unpin("smollm2") is True


def test_pin_is_validated_before_the_first_step_too(engine: PolicyEngine) -> None:
    with pytest.raises(NotFound, match="no table"):
        engine.pin("smollm2", "fp32", "cpu")      # nothing measured is known yet: not taken on trust
    with pytest.raises(NotFound):
        engine.pin("nope", "int2", "cpu")
    with pytest.raises(InvalidParams, match="variant"):
        engine.pin("smollm2", "", "cpu")
    assert engine.status()["pins"] == {}
    engine.step(make_snap(), smollm2_rows(), 0.0)
    with pytest.raises(NotFound, match="fp32@cpu"):
        engine.pin("smollm2", "int2", "cpu")
    engine.pin("smollm2", "fp32", "cpu")


def test_reload_with_a_broken_file_keeps_the_old_policy_and_shows_the_error(engine: PolicyEngine) -> None:
    path = Path(engine.paths[0])
    old = engine.policy
    path.write_text(path.read_text() + "\n[profiles.broken]\nobjective = 3\n")
    with pytest.raises(PolicyError):
        engine.reload()
    assert engine.policy is old
    err = engine.status()["last_error"]
    assert err.startswith(f"{path}:") and "profiles.broken.objective" in err
    assert engine.step(make_snap(), smollm2_rows(), 0.0).profile == "balanced"


def test_reload_with_a_good_file_swaps_and_clears_the_error(engine: PolicyEngine, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n")
    with pytest.raises(PolicyError):
        engine.reload([bad])
    engine.reload([REPO / "policies" / "performance.toml"])
    st = engine.status()
    assert st["last_error"] is None and st["default_profile"] == "performance"
    assert engine.step(make_snap(on_ac=True), smollm2_rows(), 0.0).profile == "performance"


def test_status_reports_profile_rule_and_holds(engine: PolicyEngine) -> None:
    rows = smollm2_rows()
    for t in range(0, 12, 2):   # balanced.toml debounces rules for 5 s
        engine.step(make_snap(pct=10.0, on_ac=False), rows, float(t))
    st = engine.status()
    assert st["profile"] == "power-saver" and st["rule"] == "low-battery" and st["source"] == "rule"
