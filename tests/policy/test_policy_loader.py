from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import REPO

from agent.errors import PolicyError
from agent.policy.loader import check_files, load_policy

GOOD_RULE = """
[[rules]]
name = "low"
when = 'battery.percent < 20.0'
profile = "power-saver"
"""


def error_of(path: Path) -> PolicyError:
    with pytest.raises(PolicyError) as ei:
        load_policy([path])
    return ei.value


def assert_located(e: PolicyError, path: Path, line: int, key: str | None, *fragments: str) -> None:
    assert e.file == str(path)
    assert e.line == line, str(e)
    assert e.key == key, str(e)
    assert str(e).startswith(f"{path}:{line}: " + (f"{key}: " if key else ""))
    for f in fragments:
        assert f in str(e), str(e)


def test_shipped_policies_all_pass_check() -> None:
    files = sorted((REPO / "policies").glob("*.toml"))
    names = {f.name for f in files}
    assert {"balanced.toml", "power-saver.toml", "performance.toml", "thermal-guard.toml",
            "example-annotated.toml"} <= names
    assert check_files(files) == []


def test_balanced_is_the_default_profile_of_the_default_policy() -> None:
    assert load_policy([REPO / "policies" / "balanced.toml"]).default == "balanced"


def test_invalid_toml_names_the_line(write_policy: Callable[..., Path]) -> None:
    p = write_policy('default = "balanced"\n[profiles.x\nobjective = "min_energy"\n')
    e = error_of(p)
    # Python 3.11's tomllib puts the position only in the message (agent/tomlfile.py reads e.lineno, 3.14+)
    assert "invalid TOML" in str(e) and (e.line == 2 or "line 2" in str(e))


def test_unknown_top_level_key(write_policy: Callable[..., Path]) -> None:
    p = write_policy('default = "balanced"\ncolour = "blue"\n')
    assert_located(error_of(p), p, 2, "colour", "unknown key", "expected one of")


def test_unknown_profile_key(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.x]\nobjective = "min_energy"\nmin_qualty = 0.9\n')
    assert_located(error_of(p), p, 3, "profiles.x.min_qualty", "unknown key")


def test_wrong_type(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.x]\nobjective = "min_energy"\nmin_quality = "high"\n')
    assert_located(error_of(p), p, 3, "profiles.x.min_quality", "expected a number, got string 'high'")


@pytest.mark.parametrize("line,key,got", [
    ("min_quality = 1.5", "profiles.x.min_quality", "got 1.5"),
    ("max_latency_p95_ms = 0", "profiles.x.max_latency_p95_ms", "got 0"),
    ("memory_headroom_mb = -1", "profiles.x.memory_headroom_mb", "got -1"),
])
def test_out_of_range_numbers(write_policy: Callable[..., Path], line: str, key: str, got: str) -> None:
    p = write_policy(f'[profiles.x]\nobjective = "min_energy"\n{line}\n')
    assert_located(error_of(p), p, 3, key, "expected a number", got)


def test_out_of_range_switching(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[switching]\nmin_dwell_s = -5\n")
    assert_located(error_of(p), p, 2, "switching.min_dwell_s", "expected a number in 0..3600, got -5")


def test_margin_out_of_range(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[switching.margins]\nenergy = 2\n")
    assert_located(error_of(p), p, 2, "switching.margins.energy", "got 2")


def test_unknown_objective(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.x]\nobjective = "max_speed"\n')
    assert_located(error_of(p), p, 2, "profiles.x.objective", "expected one of min_energy", "got 'max_speed'")


def test_missing_objective(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[profiles.x]\nmin_quality = 0.9\n")
    assert_located(error_of(p), p, 1, "profiles.x", "objective", "got none")


def test_unknown_device(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.x]\nobjective = "min_energy"\ndeny_devices = ["tpu"]\n')
    assert_located(error_of(p), p, 3, "profiles.x.deny_devices", "got 'tpu'")


def test_allow_minus_deny_leaves_no_device(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.x]\nobjective = "min_energy"\nallow_devices = ["gpu"]\ndeny_devices = ["gpu"]\n')
    assert_located(error_of(p), p, 4, "profiles.x.deny_devices", "at least one allowed device")


def test_unknown_thermal_ceiling(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.x]\nobjective = "min_energy"\nthermal_ceiling = "toasty"\n')
    assert_located(error_of(p), p, 3, "profiles.x.thermal_ceiling", "got 'toasty'")


def test_unknown_default_profile(write_policy: Callable[..., Path]) -> None:
    p = write_policy('default = "turbo"\n')
    assert_located(error_of(p), p, 1, "default", "expected a known profile", "got 'turbo'")


def test_unknown_profile_in_rule(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'battery.percent < 20.0'\nprofile = \"turbo\"\n")
    assert_located(error_of(p), p, 4, "rules.0.profile", "got 'turbo'")


def test_unknown_included_profile(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.x]\ninclude = "nope"\n')
    assert_located(error_of(p), p, 2, "profiles.x.include", "expected a known profile", "got 'nope'")


def test_include_cycle(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.a]\ninclude = "b"\n\n[profiles.b]\ninclude = "c"\n\n[profiles.c]\ninclude = "a"\n')
    e = error_of(p)
    assert e.key is not None and e.key.endswith(".include")
    assert "without cycles, got a -> b -> c -> a" in str(e)
    assert_located(e, p, 8, "profiles.c.include")


def test_self_include_is_a_cycle(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.a]\ninclude = "a"\n')
    assert_located(error_of(p), p, 2, "profiles.a.include", "without cycles", "a -> a")


def test_include_inherits_and_overrides(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.base]\nobjective = "min_latency"\nmin_quality = 0.9\nmax_latency_p95_ms = 100\n'
                     '[profiles.child]\ninclude = "base"\nmin_quality = 0.95\n')
    child = load_policy([p]).profiles["child"]
    assert child.objective == "min_latency"
    assert child.constraints.min_quality == 0.95 and child.constraints.max_latency_p95_ms == 100


def test_profile_can_include_a_builtin(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.quiet]\ninclude = "power-saver"\ndeny_devices = ["gpu"]\n')
    q = load_policy([p]).profiles["quiet"]
    assert q.objective == "min_energy" and q.constraints.min_quality == 0.97 and "gpu" in q.constraints.deny_devices


def test_cel_syntax_error(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'battery.percent <'\nprofile = \"power-saver\"\n")
    assert_located(error_of(p), p, 3, "rules.0.when", "expected a CEL expression, got a syntax error")


def test_cel_type_error(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'battery.percent < \"low\"'\nprofile = \"power-saver\"\n")
    assert_located(error_of(p), p, 3, "rules.0.when", "expected a condition over the Snapshot")


def test_cel_unknown_field(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'battery.charge < 20.0'\nprofile = \"power-saver\"\n")
    assert_located(error_of(p), p, 3, "rules.0.when", "no such field")


def test_cel_non_boolean(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'battery.percent'\nprofile = \"power-saver\"\n")
    assert_located(error_of(p), p, 3, "rules.0.when", "expected a boolean condition, got float")


def test_cel_error_in_exit_when(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'battery.percent < 20.0'\nexit_when = '1 +'\n"
                     "profile = \"power-saver\"\n")
    assert_located(error_of(p), p, 4, "rules.0.exit_when", "syntax error")


def test_cel_unknown_thermal_level(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'thermal.level >= \"hot\"'\nprofile = \"power-saver\"\n")
    assert_located(error_of(p), p, 3, "rules.0.when", "expected a thermal level", "got 'hot'")


def test_duplicate_rule_name(write_policy: Callable[..., Path]) -> None:
    p = write_policy(GOOD_RULE + GOOD_RULE)
    assert_located(error_of(p), p, 7, "rules.1.name", "duplicate 'low'")


def test_rule_without_effect(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'battery.percent < 20.0'\n")
    assert_located(error_of(p), p, 1, "rules.0", "got neither")


def test_rule_missing_when(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[[rules]]\nname = "r"\nprofile = "power-saver"\n')
    e = error_of(p)
    assert e.key == "rules.0" and "when: missing required key" in str(e)


def test_unknown_key_in_tighten(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'battery.percent < 20.0'\n[rules.tighten]\n"
                     "objective = \"min_energy\"\n")
    assert_located(error_of(p), p, 5, "rules.0.tighten.objective", "unknown key")


def test_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    e = error_of(tmp_path / "missing.toml")
    assert "cannot read" in str(e) and e.file == str(tmp_path / "missing.toml")


def test_check_files_reports_each_bad_file_and_passes_good_ones(write_policy: Callable[..., Path]) -> None:
    good = write_policy('default = "performance"\n', "good.toml")
    bad1 = write_policy("bogus = 1\n", "bad1.toml")
    bad2 = write_policy('[profiles.x]\nobjective = "fast"\n', "bad2.toml")
    errs = check_files([good, bad1, bad2])
    assert len(errs) == 2
    assert errs[0].startswith(f"{bad1}:1: bogus:") and errs[1].startswith(f"{bad2}:2: profiles.x.objective:")


def test_later_files_override_profiles_and_append_rules(write_policy: Callable[..., Path]) -> None:
    a = write_policy('default = "balanced"\n[profiles.x]\nobjective = "min_energy"\n' + GOOD_RULE, "a.toml")
    b = write_policy('default = "x"\n[profiles.x]\nobjective = "max_quality"\n'
                     "[[rules]]\nname = \"hot\"\nwhen = 'thermal.level >= \"severe\"'\nprofile = \"x\"\n", "b.toml")
    pol = load_policy([a, b])
    assert pol.default == "x" and pol.profiles["x"].objective == "max_quality"
    assert [r.name for r in pol.rules] == ["low", "hot"]


def test_nan_is_out_of_range(write_policy: Callable[..., Path]) -> None:
    p = write_policy('[profiles.x]\nobjective = "min_energy"\nmin_quality = nan\n')
    assert_located(error_of(p), p, 3, "profiles.x.min_quality", "got nan")


def test_empty_condition_is_refused(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = '  '\nprofile = \"power-saver\"\n")
    assert_located(error_of(p), p, 3, "rules.0.when", "got an empty string")


def test_profiles_must_be_a_table(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[profiles]]\nobjective = \"min_energy\"\n")
    assert_located(error_of(p), p, 1, "profiles", "expected a table, got array")


def test_wrong_schema(write_policy: Callable[..., Path]) -> None:
    p = write_policy("schema = 2\n")
    assert_located(error_of(p), p, 1, "schema", "expected 1, got 2")


def test_exit_debounce_out_of_range(write_policy: Callable[..., Path]) -> None:
    p = write_policy("[[rules]]\nname = \"r\"\nwhen = 'true'\nexit_debounce_s = 7200\nprofile = \"balanced\"\n")
    assert_located(error_of(p), p, 4, "rules.0.exit_debounce_s", "expected a number in 0..3600, got 7200")
