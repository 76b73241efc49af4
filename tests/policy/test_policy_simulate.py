from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from policy_helpers import REPO, make_snap

from agent.errors import ConfigError, InvalidParams
from agent.policy.cli import main, zoo_table
from agent.policy.loader import load_policy
from agent.policy.simulate import SimConfig, format_report, simulate
from agent.policy.synthetic import SCENARIOS, scenario, smollm2_rows, write_scenario
from agent.policy.table import VariantRow, table_from_manifests
from agent.policy.trace import load_trace, write_trace
from agent.policy.workload import parse_workload
from agent.zoo.manifest import (
    Manifest,
    Measurement,
    Quality,
    TensorSpec,
    Variant,
    load_manifest,
    save_manifest,
)

BALANCED = REPO / "policies" / "balanced.toml"


def write_zoo(root: Path, rows: list[VariantRow]) -> Path:
    """Manifests (via save_manifest) carrying the rows' figures, one model folder per model."""
    by_model: dict[str, dict[str, list[VariantRow]]] = {}
    for r in rows:
        by_model.setdefault(r.model, {}).setdefault(r.variant, []).append(r)
    for model, variants in by_model.items():
        vs = []
        for vid, rs in sorted(variants.items()):
            r0 = rs[0]
            vs.append(Variant(
                id=vid, file=f"{vid}.onnx", precision=r0.precision,
                quality=Quality("perplexity-ratio", r0.quality_rel or 0.0, r0.quality_rel or 0.0),
                measurements=tuple(Measurement(device=r.device, provider=r.provider, latency_ms_p50=r.latency_ms_p50,
                                               latency_ms_p95=r.latency_ms_p95, energy_j=r.energy_j,
                                               peak_rss_bytes=r.memory_bytes, load_ms=r.load_ms, meter="model")
                                   for r in rs)))
        spec = (TensorSpec("input_ids", "int64", ("batch", "seq")),)
        save_manifest(Manifest(name=model, kind="tensor", reference="fp32", inputs=spec, outputs=spec,
                               variants=tuple(vs), folder=root / model))
    return root


def test_table_from_manifests_has_a_row_per_variant_and_measured_device(tmp_path: Path) -> None:
    rows = smollm2_rows(npu=True)
    write_zoo(tmp_path / "zoo", rows)
    m = load_manifest(tmp_path / "zoo" / "smollm2", check_files=False)
    assert table_from_manifests({"smollm2": m}) == rows


def test_unmeasured_variant_has_no_row_and_reference_quality_defaults_to_one(tmp_path: Path) -> None:
    spec = (TensorSpec("x", "float32", (1,)),)
    m = Manifest("m", "tensor", "fp32", spec, spec, (
        Variant("fp32", "a.onnx", "fp32", measurements=(Measurement("cpu", "CPU", energy_j=1.0),)),
        Variant("int8", "b.onnx", "int8", quality=Quality("top1", 0.7, 0.98)),
    ), tmp_path)
    rows = table_from_manifests({"m": m})
    assert [(r.variant, r.device, r.quality_rel) for r in rows] == [("fp32", "cpu", 1.0)]


@pytest.mark.parametrize("name", SCENARIOS)
def test_default_policy_meets_the_acceptance_targets_on_fixture_traces(name: str) -> None:
    rep = simulate(scenario(name, duration_s=900), load_policy([BALANCED]), smollm2_rows(),
                   parse_workload("rate=1/s"))
    acc = rep.acceptance()
    assert acc["energy_saving_vs_best_quality"] >= 0.30
    assert acc["quality_loss_vs_best_quality"] <= 0.01
    assert acc["energy_gap_to_oracle"] <= 0.02
    assert rep.methods["oracle"].energy_j <= rep.policy.energy_j + 1e-6


@pytest.mark.parametrize("name", ["laptop_workday", "thermal_sustained_load", "memory_pressure_bursts"])
def test_default_policy_meets_the_acceptance_targets_on_shipped_sensor_traces(name: str) -> None:
    from agent.sensors.trace import shipped

    tr = load_trace(shipped(name))
    assert tr.samples and tr.header["format"] == "ondevice-agent-sensor-trace"
    rep = simulate(tr, load_policy([BALANCED]), smollm2_rows(), parse_workload("rate=0.5/s"))
    acc = rep.acceptance()
    assert acc["pass"], format_report(rep)


def test_heat_guard_moves_off_the_gpu_on_the_shipped_thermal_trace() -> None:
    from agent.sensors.trace import shipped

    rep = simulate(load_trace(shipped("thermal_sustained_load")), load_policy([BALANCED]),
                   smollm2_rows(gpu=True), parse_workload("rate=0.5/s"))
    assert rep.policy.time_in.get("smollm2:int8@cpu", 0) > 0 and rep.policy.violating_requests == 0
    assert rep.methods["static-best-quality"].violating_requests > 0   # stays on the GPU while "severe"
    swaps = [iv.t0 for iv, d in zip(rep.intervals, rep.decisions, strict=False)
             if d.choices["smollm2"].change and d.choices["smollm2"].previous]
    assert all(b - a >= 30 for a, b in itertools.pairwise(swaps))


def test_baselines_are_what_they_claim() -> None:
    rep = simulate(scenario("discharge", 600), load_policy([BALANCED]), smollm2_rows(npu=True),
                   parse_workload("rate=2/s"))
    tl = {name: m.timeline[0]["smollm2"] for name, m in rep.methods.items()}
    assert tl["static-best-quality"] == "fp16@npu"      # quality 1.0, least energy among the 1.0s
    assert tl["static-most-efficient"] == "int8@npu"
    assert tl["ort-device-policy"] == "fp16@npu"        # best-quality variant on the NPU, chosen once
    assert rep.methods["static-best-quality"].swaps == 0
    assert rep.policy.requests == pytest.approx(1200.0)


def test_oracle_swaps_less_when_swaps_cost_more() -> None:
    policy = load_policy([REPO / "tests" / "policy" / "fixtures" / "reactive.toml"])
    tr = scenario("flappy-charger", 900)
    cheap = simulate(tr, policy, smollm2_rows(npu=True), parse_workload("rate=1/s"), config=SimConfig(swap_power_w=0.0))
    dear = simulate(tr, policy, smollm2_rows(npu=True), parse_workload("rate=1/s"),
                    config=SimConfig(swap_power_w=10_000.0))
    assert cheap.methods["oracle"].swaps > dear.methods["oracle"].swaps
    assert cheap.methods["oracle"].swap_energy_j == 0


def test_policy_held_by_dwell_is_counted_as_serving_off_constraints() -> None:
    # the reactive policy denies the NPU on AC, but dwell keeps it there for up to 30 s: the report says so,
    # while the oracle (no dwell) never breaks a constraint that some row can meet
    policy = load_policy([REPO / "tests" / "policy" / "fixtures" / "reactive.toml"])
    rep = simulate(scenario("flappy-charger", 900), policy, smollm2_rows(npu=True), parse_workload("rate=1/s"))
    assert rep.policy.swaps > 0 and rep.policy.violating_requests > 0
    assert rep.methods["oracle"].violating_requests == 0


def test_time_in_each_variant_adds_up_to_the_trace_duration() -> None:
    rep = simulate(scenario("memory-pressure", 600), load_policy([BALANCED]), smollm2_rows(),
                   parse_workload("rate=1/s"))
    for m in rep.methods.values():
        assert sum(m.time_in.values()) == pytest.approx(rep.duration_s)
    assert "policy" in format_report(rep) and "oracle" in format_report(rep)


def test_workload_file_counts_requests_per_interval(tmp_path: Path) -> None:
    f = tmp_path / "w.txt"
    f.write_text("# times\n0.5\n1.0\n7.5\n\n700\n")
    w = parse_workload(f"file={f}")
    assert w.count(0, 5) == 2 and w.count(5, 10) == 1 and w.count(10, 600) == 0


@pytest.mark.parametrize("spec", ["rate=0/s", "rate=two/s", "speed=2/s", "rate=2/day", "file=/nonexistent/x"])
def test_bad_workload_specs_are_refused(spec: str) -> None:
    with pytest.raises(InvalidParams, match=r"workload|cannot read"):
        parse_workload(spec)


def test_workload_file_with_garbage_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "w.txt"
    f.write_text("1.0\nsoon\n")
    with pytest.raises(InvalidParams, match=r"w.txt:2: expected a time in seconds, got 'soon'"):
        parse_workload(f"file={f}")


def test_trace_round_trips_through_the_jsonl_format(tmp_path: Path) -> None:
    snaps = [(0.0, make_snap(0, 50.0, False, "severe", 1000.0, 3.0)), (5.0, make_snap(5, None, None, None, None, None))]
    tr = load_trace(write_trace(tmp_path / "t.jsonl", {"name": "x", "interval_s": 5}, snaps))
    assert tr.name == "x" and [s.t for s in tr.samples] == [0.0, 5.0]
    assert tr.samples[0].snapshot.thermal.level == "severe" and tr.samples[1].snapshot.battery.percent is None


H = '{"format": "ondevice-agent-sensor-trace", "version": 1, "interval_s": 1}\n'


def test_the_simulator_reads_the_one_sensor_trace_format(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text(H + '{"t": 1, "battery": {"percent": 40}}\n')
    s = load_trace(p).samples[0]
    assert s.t == 1.0 and s.snapshot.battery.percent == 40.0


@pytest.mark.parametrize("body,line,frag", [
    ('{"t": 0}\n', 1, "header with format"),
    ('{"name": "old lenient format", "format": "ondevice-agent-trace"}\n{"t": 0, "snapshot": {}}\n', 1, "format"),
    (H + 'not json\n', 2, "not JSON"),
    (H + '[1, 2]\n', 2, "expected a JSON object"),
    (H + '{"battery": {}}\n', 2, "non-negative number"),
    (H + '{"t": 5}\n{"t": 3}\n', 3, "t goes backwards"),
    (H + '{"t": 0, "battery": {"percent": "full"}}\n', 2, "percent"),
    (H, 1, "no samples"),
])
def test_malformed_traces_name_file_and_line(tmp_path: Path, body: str, line: int | None, frag: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(body)
    with pytest.raises(ConfigError) as ei:
        load_trace(p)
    assert ei.value.file == str(p) and ei.value.line == line and frag in str(ei.value)


def test_simulate_cli_prints_a_report_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo = write_zoo(tmp_path / "zoo", smollm2_rows())
    tr = write_scenario("thermal-soak", tmp_path / "t.jsonl", 600)
    assert main(["simulate", "--trace", str(tr), "--policy", str(BALANCED), "--zoo", str(zoo)]) == 0
    out = capsys.readouterr().out
    assert "static-best-quality" in out and "acceptance" in out
    assert main(["simulate", "--trace", str(tr), "--policy", str(BALANCED), "--zoo", str(zoo),
                 "--workload", "rate=30/min", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["methods"]) == {"policy", "static-best-quality", "static-most-efficient", "ort-device-policy",
                                   "oracle"} | {f"static:{r.label}" for r in smollm2_rows()}
    for name in ("policy", "static:fp32@cpu"):
        assert {"energy_per_request_j", "mean_quality", "slo_attainment", "swaps"} <= set(doc["methods"][name])
    assert doc["pareto"]["static:fp32@cpu"]["verdict"] in ("dominates", "equal", "dominated", "trade-off")
    assert doc["methods"]["policy"]["requests"] == pytest.approx(300.0)


def test_simulate_cli_reports_bad_inputs_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zoo = write_zoo(tmp_path / "zoo", smollm2_rows())
    tr = write_scenario("discharge", tmp_path / "t.jsonl", 60)
    bad = tmp_path / "bad.toml"
    bad.write_text("oops = 1\n")
    assert main(["simulate", "--trace", str(tr), "--policy", str(bad), "--zoo", str(zoo)]) == 2
    assert f"{bad}:1: oops" in capsys.readouterr().err
    assert main(["simulate", "--trace", str(tr), "--policy", str(BALANCED), "--zoo", str(tmp_path / "none")]) == 2
    assert "expected measured variants" in capsys.readouterr().err
    assert main(["simulate", "--trace", str(tr), "--policy", str(BALANCED), "--zoo", str(zoo),
                 "--workload", "lots"]) == 2


def test_zoo_with_a_broken_manifest_skips_it_and_says_so(tmp_path: Path) -> None:
    zoo = write_zoo(tmp_path / "zoo", smollm2_rows())
    (zoo / "broken").mkdir()
    (zoo / "broken" / "manifest.toml").write_text("schema = 2\n")
    rows, errors = zoo_table(zoo)
    assert rows and "broken" in errors and "manifest.toml:1: schema" in errors["broken"]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    zoo = write_zoo(tmp_path / "zoo", smollm2_rows())
    tr = write_scenario("memory-pressure", tmp_path / "t.jsonl", 300)
    out = tmp_path / "p.png"
    assert main(["simulate", "--trace", str(tr), "--policy", str(BALANCED), "--zoo", str(zoo), "--plot", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_policy_check_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", *[str(p) for p in sorted((REPO / "policies").glob("*.toml"))]]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[profiles.x]\nobjective = "min_energy"\nmin_quality = 7\n')
    assert main(["policy", "check", str(BALANCED), str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"{bad}:3: profiles.x.min_quality: expected a number in 0..1, got 7"


def test_plot_without_matplotlib_says_so_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # makes `import matplotlib` raise ImportError
    zoo = write_zoo(tmp_path / "zoo", smollm2_rows())
    tr = write_scenario("discharge", tmp_path / "t.jsonl", 60)
    rc = main(["simulate", "--trace", str(tr), "--policy", str(BALANCED), "--zoo", str(zoo),
               "--plot", str(tmp_path / "p.png")])
    captured = capsys.readouterr()
    assert rc == 2 and "policy" in captured.out
    assert "--plot needs matplotlib, which is not installed" in captured.err
    assert not (tmp_path / "p.png").exists()
