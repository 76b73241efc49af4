"""Split variants: a real model cut into parts on their own EP devices, measured, served, and chosen by the policy.

On this machine ONNX Runtime lists one EP device (the CPU EP; the OpenVINO plugin registers but
enumerates no device on a non-Intel CPU), so the parts go to ``cpu`` and ``cpu``; where OpenVINO lists
one, a second test puts part 1 on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.errors import InvalidParams, ManifestError, NotFound
from agent.ipc import protocol as P
from agent.policy.decide import decide
from agent.policy.model import Constraints, Policy, Profile
from agent.policy.state import PolicyState
from agent.policy.table import table_from_manifests
from agent.runtime import devices as D
from agent.runtime.manager import Runtime
from agent.sensors.snapshot import Snapshot
from agent.zoo.build.split import build_split, cut_candidates
from agent.zoo.manifest import load_manifest, load_zoo, save_manifest


def _infer(rt: Runtime, x: np.ndarray):  # type: ignore[no-untyped-def]
    descs, bufs = P.tensor_descs({"x": x})
    return rt.infer("mlp", descs, memoryview(b"".join(bytes(b) for b in bufs)))


@pytest.fixture
def split_zoo(tensor_zoo: Path) -> Path:
    build_split(tensor_zoo, "mlp", at=[["h1"]], devices=["cpu", "cpu"], rounds=5, runs=5)
    return tensor_zoo


def test_cut_points_are_the_single_tensors_between_layers(tensor_zoo):
    assert cut_candidates(tensor_zoo / "mlp" / "fp32.onnx") == ["h0", "h1", "h2", "y0"]


def test_split_variant_is_measured_and_recorded_with_its_parts_and_placement(split_zoo):
    m = load_manifest(split_zoo / "mlp")
    v = m.variant("fp32-split")
    assert [p.device for p in v.parts] == ["cpu", "cpu"] and v.placement == "split"
    meas = v.measurement("split")
    assert meas is not None and meas.latency_ms_p50 and meas.latency_ms_p95 and meas.energy_j and meas.peak_rss_bytes
    assert v.build["max_abs_diff"] <= 1e-4 and v.build["ratio_p50_vs_baseline"] > 0
    assert [p["providers"] for p in v.build["placement"]] == [["CPUExecutionProvider"]] * 2
    # the parts really are halves of the graph
    p0 = ort.InferenceSession(str(m.folder / v.parts[0].file), providers=["CPUExecutionProvider"])
    p1 = ort.InferenceSession(str(m.folder / v.parts[1].file), providers=["CPUExecutionProvider"])
    assert [o.name for o in p0.get_outputs()] == ["h1"] and [i.name for i in p1.get_inputs()] == ["h1"]
    # the zoo table shows its measured latency
    from agent.zoo.cli import table

    line = next(ln for ln in table(m).splitlines() if ln.startswith("fp32-split"))
    assert f"{meas.latency_ms_p50:.3f}" in line
    rows = [r for r in table_from_manifests({"mlp": m}) if r.variant == "fp32-split"]
    assert len(rows) == 1 and rows[0].device == "split" and rows[0].latency_ms_p50 == meas.latency_ms_p50


def test_split_served_by_the_runtime_matches_the_unsplit_model_and_reports_each_part(split_zoo):
    models, errors = load_zoo(split_zoo)
    assert not errors
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((3, 256)).astype(np.float32) for _ in range(5)]
    ref = ort.InferenceSession(str(split_zoo / "mlp" / "fp32.onnx"), providers=["CPUExecutionProvider"])

    async def go() -> None:
        rt = Runtime(models, spare_workers=0)
        try:
            res = await rt.swap("mlp", "fp32-split", "split")
            assert res["providers"] == ["CPUExecutionProvider"]
            for x in xs:
                r = await _infer(rt, x)
                y = np.frombuffer(bytes(r.data), np.float32).reshape(3, 64)
                np.testing.assert_allclose(y, ref.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
                assert r.variant == "fp32-split" and r.device == "split" and r.providers == ["CPUExecutionProvider"]
            st = rt.status()["mlp"]["active"]
            assert [p["device"]["label"] for p in st["parts"]] == ["cpu:CPUExecutionProvider"] * 2
            assert all(p["assignment"]["CPUExecutionProvider"] > 0 for p in st["parts"])
            with pytest.raises(NotFound, match="runs on 'split'"):
                await rt.swap("mlp", "fp32-split", "cpu")
        finally:
            await rt.close()

    asyncio.run(go())


def test_the_policy_can_choose_the_split_row(split_zoo):
    m = load_manifest(split_zoo / "mlp")
    table = table_from_manifests({"mlp": m})
    only_split = Profile("offload-cpu", "min_latency", Constraints(allow_devices=frozenset({"split"})))
    pol = Policy(profiles={"offload-cpu": only_split}, default="offload-cpu")
    d = decide(Snapshot(mono_s=0.0, wall_s=0.0), PolicyState(), pol, table, 0.0)
    assert (d.choices["mlp"].variant, d.choices["mlp"].device) == ("fp32-split", "split")


def test_bad_cuts_and_devices_are_refused_with_what_exists(tensor_zoo):
    with pytest.raises(InvalidParams, match="single-tensor cut points: h0, h1, h2, y0"):
        build_split(tensor_zoo, "mlp", at=[["nope"]], devices=["cpu", "cpu"])
    with pytest.raises(InvalidParams, match="make 2 parts; --devices names 3"):
        build_split(tensor_zoo, "mlp", at=[["h1"]], devices=["cpu", "cpu", "cpu"])
    with pytest.raises(NotFound, match="available: cpu:CPUExecutionProvider"):
        build_split(tensor_zoo, "mlp", at=[["h1"]], devices=["cpu", "gpu"])
    assert "fp32-split" not in load_manifest(tensor_zoo / "mlp").variant_ids()
    assert not [p for p in (tensor_zoo / "mlp").iterdir() if "split" in p.name]


def test_a_three_part_split_also_reproduces_the_model(tensor_zoo):
    m = build_split(tensor_zoo, "mlp", at=[["h0"], ["h2"]], devices=["cpu", "cpu", "cpu"], variant_id="three",
                    rounds=5, runs=3)
    assert len(m.variant("three").parts) == 3 and m.variant("three").build["max_abs_diff"] <= 1e-4


def test_manifest_rejects_a_one_part_split_and_a_split_remote(split_zoo):
    m = load_manifest(split_zoo / "mlp")
    v = m.variant("fp32-split")
    text = (split_zoo / "mlp" / "manifest.toml").read_text()
    save_manifest(replace(m, variants=tuple(replace(x, parts=x.parts[:1]) if x.id == v.id else x
                                            for x in m.variants)))
    with pytest.raises(ManifestError, match="at least two parts"):
        load_manifest(split_zoo / "mlp")
    (split_zoo / "mlp" / "manifest.toml").write_text(text + '\n[variants.remote]\nendpoint = "http://h:1"\n'
                                                            'model = "mlp"\n')
    with pytest.raises(ManifestError):
        load_manifest(split_zoo / "mlp")


def test_split_across_cpu_and_openvino_where_openvino_lists_a_device(tensor_zoo):
    ov = [d for d in D.available() if d.provider == "OpenVINOExecutionProvider"]
    if not ov:
        pytest.skip("the OpenVINO plugin EP lists no device here "
                    f"(CPU vendor {D.available()[0].vendor}); the split ran on cpu+cpu instead")
    m = build_split(tensor_zoo, "mlp", at=[["h1"]], devices=["cpu", "OpenVINOExecutionProvider"], rounds=5, runs=5)
    v = m.variant("fp32-split")
    assert [p["providers"] for p in v.build["placement"]] == [["CPUExecutionProvider"], ["OpenVINOExecutionProvider"]]


def test_zoo_split_cli_reports_bad_input_with_exit_codes(tensor_zoo, capsys):
    from agent.zoo.cli import main

    assert main(["zoo", "split", "mlp", "--zoo", str(tensor_zoo)]) == 2
    assert "--at and --devices are required" in capsys.readouterr().err
    assert main(["zoo", "split", "mlp", "--zoo", str(tensor_zoo), "--at", "h1", "--devices", "cpu,foo"]) == 1
    assert "no device matches 'foo'; available: cpu:CPUExecutionProvider" in capsys.readouterr().err
    assert main(["zoo", "split", "mlp", "--zoo", str(tensor_zoo), "--list-cuts"]) == 0
    assert capsys.readouterr().out.split() == ["h0", "h1", "h2", "y0"]
