"""What a new user meets first: quiet logs, clear start-up errors, help that matches, output for people."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent import cli_format as F
from tests.conftest import ctl, start_daemon

pytestmark = pytest.mark.integration


def agentd(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "agent.daemon", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_agentd_log_has_no_third_party_info_lines_under_traffic(tensor_zoo, tmp_path):
    d = start_daemon(tensor_zoo, tmp_path, "--sample-interval", "0.1")
    try:
        with d.client() as c:
            for _ in range(20):
                c.infer("mlp", {"x": np.ones((1, 256), np.float32)})
            time.sleep(1.5)   # ~15 sampler ticks: apscheduler logged two INFO lines for each
            c.pin("mlp", "int8")
    finally:
        assert d.stop() == 0
    lines = [json.loads(x) for x in d.log_text().splitlines() if x.startswith("{")]
    assert lines, d.log_text()
    foreign_info = [x for x in lines if not x["logger"].startswith("agent") and x["level"] in ("info", "debug")]
    assert foreign_info == []
    assert any(x["msg"] == "ready" for x in lines)          # our own INFO lines still come through


def test_library_log_level_brings_third_party_lines_back(tensor_zoo, tmp_path):
    d = start_daemon(tensor_zoo, tmp_path, "--sample-interval", "0.1", "--library-log-level", "info")
    time.sleep(1.0)
    d.stop()
    assert '"logger":"apscheduler' in d.log_text()


def test_second_agentd_on_a_taken_socket_fails_before_loading_anything(daemon, tmp_path):
    t = time.monotonic()
    p = agentd("--zoo", str(daemon.zoo), "--socket", str(daemon.socket), "--state-dir", str(tmp_path / "s2"))
    elapsed = time.monotonic() - t
    assert p.returncode == 1
    assert "another agent is already listening" in p.stderr
    assert "swap" not in p.stderr and "initial load" not in p.stderr   # nothing was loaded first
    assert elapsed < 30
    with daemon.client() as c:                                        # the first one still serves
        assert c.infer("mlp", {"x": np.ones((1, 256), np.float32)}).variant == "fp32"


@pytest.mark.parametrize("kind", ["missing", "recipes", "empty"])
def test_a_zoo_without_models_warns_with_a_hint_and_require_models_makes_it_an_error(tmp_path, kind):
    zoo = tmp_path / "zoo"
    if kind == "recipes":
        (zoo / "smollm2").mkdir(parents=True)
        (zoo / "smollm2" / "recipe.toml").write_text("schema = 1\n")
    elif kind == "empty":
        zoo.mkdir()
    hint = {"missing": "does not exist", "recipes": "holds build recipes", "empty": "has no model folder"}[kind]
    d = start_daemon(zoo, tmp_path)
    d.stop()
    warn = [json.loads(x) for x in d.log_text().splitlines() if '"no loadable model' in x]
    assert warn and warn[0]["level"] == "warning" and hint in warn[0]["hint"]
    p = agentd("--zoo", str(zoo), "--socket", str(tmp_path / "b.sock"), "--state-dir", str(tmp_path / "s"),
               "--require-models")
    assert p.returncode == 1 and "no loadable model" in p.stderr and hint in p.stderr


def test_agentd_help_states_the_real_defaults_and_refuses_abbreviations(tmp_path):
    from agent.paths import default_socket

    h = agentd("--help").stdout
    assert str(default_socket()) in h and "--require-models" in h and "(default: 1.0)" in h
    p = agentd("--zo", str(tmp_path))
    assert p.returncode == 2 and "unrecognized arguments: --zo" in p.stderr


@pytest.mark.parametrize("args", [["status", "--jso"], ["generate", "m", "hi", "--max-token", "3"],
                                  ["zoo", "build", "x", "--onl", "a"], ["--sock", "/x", "status"]])
def test_agentctl_refuses_abbreviated_options_everywhere(args):
    p = subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, timeout=60)
    # refused at parse time: an unknown option, or (at top level) '/x' then taken as the command
    assert p.returncode == 2 and ("unrecognized arguments" in p.stderr or "invalid choice: '/x'" in p.stderr)


def test_human_output_has_units_and_no_raw_dicts(shared_daemon):
    d = shared_daemon
    st = ctl(d, "status").stdout
    assert "{" not in st and "'" not in st
    assert "policy" in st and "sensors" in st and " MB RSS" in st
    models = ctl(d, "models").stdout
    assert " MB" in models and "{" not in models
    pin = ctl(d, "pin", "mlp", "int8").stdout
    assert pin.startswith("mlp: pinned to int8@cpu; swapped in ") and " ms" in pin
    unpin = ctl(d, "unpin", "mlp").stdout
    assert unpin.startswith("mlp: unpinned int8@cpu; it stays active until the policy")
    assert "{" not in ctl(d, "reload").stdout
    hist = ctl(d, "history", "--since", "10m").stdout
    assert "== swaps" in hist and '{"' not in hist
    raw = json.loads(ctl(d, "unpin", "mlp", "--json").stdout)   # --json keeps the whole record
    assert raw["was_pinned"] is None and "policy_acts_in_s" in raw


def test_unpin_reports_the_dwell_the_policy_will_wait(shared_daemon):
    ctl(shared_daemon, "pin", "mlp", "int8")
    raw = json.loads(ctl(shared_daemon, "unpin", "mlp", "--json").stdout)
    assert raw["was_pinned"] == ["int8", "cpu"]
    assert 0 <= raw["policy_acts_in_s"] <= 30      # the default min_dwell_s is 30 s


def test_dwell_remaining_counts_from_the_last_swap():
    from agent.policy.engine import PolicyEngine

    e = PolicyEngine()
    assert e.dwell_remaining(["m"], 5.0) == 0.0                 # never swapped: nothing to wait for
    e.set_current("m", "int8", "cpu", now=100.0)
    assert e.dwell_remaining(["m"], 110.0) == pytest.approx(e.policy.switching.min_dwell_s - 10)
    assert e.dwell_remaining(["m", "other"], 100.0 + e.policy.switching.min_dwell_s + 1) == 0.0


def test_hold_with_a_duration_says_so_and_releases(shared_daemon):
    p = ctl(shared_daemon, "hold", "power-saver", "--duration", "0.5")
    assert "for 0.5 s" in p.stdout and "Ctrl-C to release" not in p.stdout and "released power-saver" in p.stdout


def test_signatures_are_summarised():
    kv = [{"name": f"past_key_values.{i}.{kind}", "dtype": "float32", "shape": [1, 3, "p", 64]}
          for i in range(30) for kind in ("key", "value")]
    sig = F.signature([{"name": "input_ids", "dtype": "int64", "shape": ["b", "s"]}, *kv])
    assert sig.startswith("input_ids:int64['b', 's'], past_key_values.N.key (30), past_key_values.N.value (30)")
    assert "[60 KV-cache tensors]" in sig and len(sig) < 200
    assert F.summarise_names(["a1", "a2", "x"]) == ["a1", "a2", "x"]     # fewer than 3: kept as they are


def test_values_are_rounded_for_people():
    assert F.value(21693710336.0) == "21693710336"
    assert F.value(0.123456) == "0.123"
    assert F.value({"why": "pin", "uid": 0, "x": None}) == "why=pin uid=0"
    assert F.mb(98627584) == "98.6 MB" and F.mb(21.9e9) == "21.9 GB" and F.mb(None) == "-"
    assert F.ms(0.4567) == "0.46 ms" and F.ms(426.3) == "426 ms"


def test_only_a_missing_optional_extra_hides_a_subcommand(tmp_path: Path, monkeypatch):
    import agent.cli as cli

    (tmp_path / "typo_cmds.py").write_text("import nmupy\n")            # a typo: must show, not hide
    (tmp_path / "extra_cmds.py").write_text(                            # needs the 'demo' extra, absent
        "raise ModuleNotFoundError(\"No module named 'rich'\", name='rich')\n")
    (tmp_path / "fine_cmds.py").write_text(
        "def add_parsers(sub):\n    sub.add_parser('fine-cmd')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="nmupy"):
        cli.build_parser(("fine_cmds", "typo_cmds"))
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser(("agent.no_such_module",))
    ap = cli.build_parser(("extra_cmds", "fine_cmds"))
    assert ap.parse_args(["fine-cmd"]) is not None
    assert cli.build_parser() is not None   # the shipped sub-commands all import here


def test_zoo_errors_use_the_one_exit_code_map(tmp_path: Path):
    p = subprocess.run([sys.executable, "-m", "agent.cli", "zoo", "show", "nothing", "--zoo", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.startswith("agentctl: NotFound: ")
