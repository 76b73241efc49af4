"""`agentctl demo` end to end on a tiny causal-lm zoo: build, agentd on a trace, chat, live lines, summary, PNG."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from tiny_llm import write_tiny_recipe

HERE = Path(__file__).parent
POLICY = HERE / "policy_charger.toml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_trace(path: Path, *, hours: float = 1.0, plug: tuple[float, float] = (0.3, 0.6)) -> Path:
    """A laptop trace: discharging from 80 %, on the charger between the ``plug`` fractions of the run."""
    n = int(hours * 60) + 1
    lines = [json.dumps({"format": "ondevice-agent-sensor-trace", "version": 1, "interval_s": 60.0,
                         "source": "synthesized", "note": "demo test trace"})]
    pct = 80.0
    for i in range(n):
        on_ac = plug[0] <= i / (n - 1) < plug[1]
        pct = min(100.0, pct + 1.0) if on_ac else max(1.0, pct - 1.0)
        lines.append(json.dumps({
            "t": i * 60.0,
            "battery": {"present": True, "percent": pct, "status": "Charging" if on_ac else "Discharging",
                        "power_w": 6.0, "count": 1},
            "power": {"on_ac": on_ac, "adapters": ["AC"]},
            "thermal": {"level": "light" if i % 20 > 14 else "none", "max_c": 45.0 + (i % 20)},
            "memory": {"total_bytes": 8 << 30, "available_bytes": (5 << 30) - (i % 7) * (100 << 20)},
        }))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def agentctl(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # the tensor model (Silero VAD) is built and served by the slow fresh-clone test; here only the LLM
    return subprocess.run([sys.executable, "-m", "agent.cli", "demo", "--no-tensor-model", *args],
                          capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_recipe(tmp_path_factory.mktemp("tinylm") / "recipe")


def pin_the_other_variant(sock: Path, stop: threading.Event, done: dict[str, str]) -> None:
    """Once agentd answers, pin whichever variant is not active (a swap the demo must report)."""
    from agent.client import Client
    from agent.errors import AgentError

    while not stop.is_set():
        if sock.exists():
            try:
                with Client(sock, timeout=30) as c:
                    if c.status()["models"]["tinylm"]["active"] is None:
                        raise AgentError("loading")
                    time.sleep(4)   # let the workload run on the first variant for a while
                    for _ in range(4):   # the policy may swap in between: pin until it changes something
                        act = c.status()["models"]["tinylm"]["active"]
                        target = "int8" if act["variant"] == "fp32" else "fp32"
                        if c.pin("tinylm", target).get("changed"):
                            done["pinned"] = target
                            return
            except AgentError:
                pass
        time.sleep(0.3)


@pytest.mark.integration
def test_demo_builds_the_zoo_replays_a_trace_chats_and_writes_summary_and_timeline(
        tiny_recipe: Path, tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"          # an empty sysfs: no battery, so the demo must pick the trace
    sysfs.mkdir()
    trace = write_trace(tmp_path / "day.jsonl")
    sock = Path(tempfile.mkdtemp(prefix="dmo", dir="/tmp")) / "a.sock"
    out, zoo = tmp_path / "out", tmp_path / "zoo"
    stop, done = threading.Event(), {}
    pinner = threading.Thread(target=pin_the_other_variant, args=(sock, stop, done), daemon=True)
    pinner.start()
    try:
        r = agentctl("--recipe", str(tiny_recipe), "--variants", "fp32", "int8", "--zoo", str(zoo),
                     "--state-dir", str(tmp_path / "state"), "--out", str(out), "--policy", str(POLICY),
                     "--trace", str(trace), "--sysfs-root", str(sysfs), "--socket", str(sock),
                     "--duration", "20", "--max-tokens", "16")
    finally:
        stop.set()
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    # built the zoo it lacked, with progress lines (not a TTY)
    assert "zoo: building tinylm fp32, int8" in text
    assert re.search(r"\[\d/\d\] int8 \(gguf-onnx\)", text), text
    assert (zoo / "tinylm" / "manifest.toml").is_file()
    # said that it replays a trace, and how fast
    assert "No battery on this machine: replaying the trace 'day'" in text
    # plain refreshed lines with every field, no terminal escapes
    assert "\x1b[" not in r.stdout
    status = [ln for ln in r.stdout.splitlines() if "| trace " in ln and "battery" in ln]
    assert len(status) >= 3, r.stdout
    assert re.search(r"battery \d+ % (on AC|on battery) \| \d+ °C \((none|light)\) \| [\d.]+ GiB free \| "
                     r"(fp32|int8)@cpu \| [\d.]+ tok/s \| [\d.]+ J/token", r.stdout), r.stdout
    # the policy change when the trace plugs in, and the pinned swap, each with its reason
    assert "policy → profile plugged (rule plugged-in)" in r.stdout
    assert done.get("pinned"), "the test could not pin a variant"
    assert re.search(rf"swap (fp32|int8) → {done['pinned']}@cpu in \d+ ms: pinned by pid \d+", r.stdout), r.stdout
    # the summary table has both variants, and the files are where it says
    assert re.search(r"^fp32@cpu\s+[\d.]+\s+\d+\s+\d+", r.stdout, re.MULTILINE), r.stdout
    assert re.search(r"^int8@cpu\s+[\d.]+\s+\d+\s+\d+", r.stdout, re.MULTILINE), r.stdout
    assert f"timeline: {out / 'timeline.png'}" in r.stdout
    png = (out / "timeline.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000
    summary = json.loads((out / "summary.json").read_text())
    gens = summary["generations"]
    assert len(gens) >= 3
    assert {g["variant"] for g in gens} == {"fp32", "int8"}
    assert all(g["tokens"] > 0 and g["tokens_per_s"] > 0 for g in gens)
    assert any(s["to_variant"] == done["pinned"] for s in summary["swaps"])
    traced = [s["trace_t"] for s in summary["samples"]]
    assert traced == sorted(traced) and traced[-1] > traced[0] + 1800   # the trace ran fast
    by_variant = {v["variant"]: v for v in summary["variants"]}
    assert sum(v["tokens"] for v in by_variant.values()) == sum(g["tokens"] for g in gens)
    assert by_variant[done["pinned"]]["active_s"] > 1.0
    assert (out / "agentd.log").is_file() and (out / "telemetry.db").is_file()


@pytest.mark.parametrize("args, message", [
    (["--duration", "-5"], "--duration: expected a positive float"),
    (["--duration", "soon"], "--duration: expected a positive float"),
    (["--speed", "0"], "--speed: expected a positive float"),
    (["--cores", "0"], "--cores: expected a positive int"),
    (["--max-tokens", "1.5"], "--max-tokens: expected a positive int"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_exit_2_with_the_reason(args: list[str], message: str) -> None:
    r = agentctl(*args, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr


def test_bad_files_exit_2_before_anything_starts(tiny_recipe: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\ndefault = "balanced"\n[[rules]]\nname = "x"\nwhen = "battery.percent <"\n'
                   'profile = "balanced"\n')
    cases = [
        (["--policy", str(tmp_path / "missing.toml")], "no such file"),
        (["--policy", str(bad)], "bad.toml:"),
        (["--recipe", str(tmp_path / "nope.toml")], "no such file"),
        (["--recipe", str(tiny_recipe), "--variants", "fp32", "int9"], "no variant 'int9'"),
        (["--recipe", str(tiny_recipe), "--sensors", "trace:/nonexistent.jsonl,speed=fast"], "speed"),
    ]
    for args, message in cases:
        r = agentctl(*args, "--zoo", str(tmp_path / "zoo"), "--state-dir", str(tmp_path / "st"), timeout=60)
        assert r.returncode == 2, (args, r.stdout + r.stderr)
        assert message in r.stderr, (args, r.stderr)
    assert not (tmp_path / "zoo").exists()


def test_no_build_with_an_empty_zoo_fails_and_says_how_to_fix(tiny_recipe: Path, tmp_path: Path) -> None:
    r = agentctl("--recipe", str(tiny_recipe), "--zoo", str(tmp_path / "zoo"), "--no-build",
                 "--state-dir", str(tmp_path / "st"), "--out", str(tmp_path / "out"), timeout=60)
    assert r.returncode == 1
    assert "lacks tinylm variants fp32, int8, int4" in r.stderr and "without --no-build" in r.stderr


def test_summary_splits_time_tokens_and_energy_by_variant() -> None:
    from agent.demo.record import Generation, Recorder

    clock = iter([0.0] + [float(i) for i in range(100)])
    rec = Recorder("m", clock=lambda: next(clock))
    for i, v in enumerate(["fp32", "fp32", "fp32", "int8", "int8"]):
        rec.add_status({"sensors": {"mono_s": i * 60.0}, "models": {"m": {"active": {"variant": v, "device": "cpu"}}}})
    rec.add_generation(Generation(0.0, 2.0, "fp32", "cpu", 20, 12.0, 50.0, 4.0, "model", "a", "length"))
    rec.add_generation(Generation(2.0, 3.0, "int8", "cpu", 30, 40.0, 20.0, None, None, "b", "length"))
    rows = {r.variant: r for r in rec.summary()}
    assert rows["fp32"].active_s == 3.0 and rows["int8"].active_s == 1.0
    assert rows["fp32"].tokens == 20 and rows["fp32"].tokens_per_s == 10.0
    assert rows["fp32"].joules_per_token == pytest.approx(0.2)
    assert rows["int8"].joules is None and rows["int8"].joules_per_token is None


def test_swap_reasons_read_as_one_line() -> None:
    from agent.demo.record import describe_reason

    assert describe_reason({"why": "policy", "profile": "power-saver", "rule": "low-battery",
                            "explanation": "int4 uses 40 % less energy", "readings": {"x": 1}}) == \
        "policy: rule low-battery, profile power-saver (int4 uses 40 % less energy)"
    assert describe_reason({"why": "pin", "pid": 42, "uid": 0}) == "pinned by pid 42"
    assert describe_reason({"why": "startup fallback", "error": "boom"}) == "startup fallback {'error': 'boom'}"


@pytest.mark.slow
def test_demo_on_the_real_smollm2_zoo(tmp_path: Path) -> None:
    """The README's demo as shipped (SmolLM2 fp32/int8/int4, balanced policy, workday trace on a machine
    without a battery): builds into AGENT_DEMO_ZOO when given (to reuse a build), else into tmp."""
    zoo = Path(os.environ.get("AGENT_DEMO_ZOO") or tmp_path / "zoo")
    r = agentctl("--zoo", str(zoo), "--state-dir", str(tmp_path / "st"), "--out", str(tmp_path / "out"),
                 "--duration", "60", timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["generations"] and all(g["tokens"] > 0 for g in summary["generations"])
    assert (tmp_path / "out" / "timeline.png").read_bytes().startswith(PNG_MAGIC)


def _args(*argv: str):  # type: ignore[no-untyped-def]
    import argparse

    from agent.demo.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_uses_the_live_sensors_when_the_machine_has_a_battery(tmp_path: Path) -> None:
    from agent.demo.cli import choose_sensors

    bat = tmp_path / "sys" / "class" / "power_supply" / "BAT0"
    bat.mkdir(parents=True)
    for k, v in {"type": "Battery", "present": 1, "status": "Discharging", "energy_now": 30_000_000,
                 "energy_full": 60_000_000, "power_now": 9_000_000}.items():
        (bat / k).write_text(f"{v}\n")
    spec, note, is_trace = choose_sensors(_args("--sysfs-root", str(tmp_path / "sys")))
    assert (spec, is_trace) == ("live", False)
    assert "own battery" in note


def test_without_a_battery_replays_the_workday_so_it_fits_the_duration(tmp_path: Path) -> None:
    from agent.demo.cli import choose_sensors
    from agent.sensors.trace import load_trace, shipped

    (tmp_path / "sys").mkdir()
    day = load_trace(shipped("laptop_workday")).duration_s
    spec, note, is_trace = choose_sensors(_args("--sysfs-root", str(tmp_path / "sys"), "--duration", "60"))
    assert is_trace and spec == f"trace:{shipped('laptop_workday')},speed={day / 60:g}"
    assert f"at {day / 60:.0f}x" in note and "No battery on this machine" in note
    spec, _, _ = choose_sensors(_args("--sysfs-root", str(tmp_path / "sys"), "--speed", "30"))
    assert spec.endswith(",speed=30")


def test_swap_labels_get_lanes_that_never_overlap():
    from agent.demo.plot import label_lanes

    lanes = label_lanes([0.0, 0.01, 0.02, 0.5, 0.51, 2.0], min_gap=0.1)
    assert lanes == [0, 1, 2, 0, 1, 0]
    for lane in set(lanes):
        xs = [x for x, k in zip([0.0, 0.01, 0.02, 0.5, 0.51, 2.0], lanes, strict=True) if k == lane]
        assert all(b - a >= 0.1 for a, b in itertools.pairwise(xs))


def test_swaps_are_placed_at_the_decision_not_at_the_event_arrival():
    from agent.demo.record import Recorder

    t = [0.0]
    rec = Recorder("m", clock=lambda: t[0])
    rec.add_status({"sensors": {"mono_s": 5000.0}, "models": {"m": {"active": {"variant": "int8"}}}})
    t[0] = 3.0
    sw = rec.add_event({"event": "swap", "model": "m", "from": "int8", "to": "fp32", "device": "cpu",
                        "reason": {"why": "policy", "profile": "performance", "decided_t": 4200.0}})
    assert sw.decided_trace_t == 4200.0 and sw.trace_t == 5000.0   # decided at 4200 s, seen at 5000 s
    pc = rec.add_event({"event": "decision", "profile": "performance", "rule": "on-ac", "changes": "x", "t": 4190.0})
    assert pc.trace_t == 4190.0


def test_a_variant_without_replies_says_why_in_the_summary():
    from agent.demo.record import Recorder, Sample
    from agent.demo.view import summary_table

    rec = Recorder("m")
    for i, v in enumerate(["int8", "int4", "int8"]):
        rec.samples.append(Sample(i * 0.5, None, None, None, None, None, None, v, "cpu"))
    table = summary_table(rec.summary(), [])
    row = next(line for line in table.splitlines() if line.startswith("int4@cpu"))
    assert "no reply finished in its 0.5 s active" in row
