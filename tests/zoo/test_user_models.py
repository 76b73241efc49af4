"""A user's own models: signatures matched by name, files from other producers fitted, imports measured so
the policy can choose them, variants removed, the reference replaced."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from zoo_helpers import make_mlp, write_recipe

from agent.errors import InvalidParams
from agent.policy.loader import load_policy
from agent.policy.simulate import simulate
from agent.policy.synthetic import scenario
from agent.policy.table import table_from_manifests
from agent.policy.workload import parse_workload
from agent.zoo.importer import import_variant, remove_variant
from agent.zoo.manifest import load_manifest
from agent.zoo.measure import measure_variants

BALANCED = Path(__file__).resolve().parents[2] / "policies" / "balanced.toml"


def two_input_model(path: Path, order=("a", "b"), names=None, extra_out=False, unused_in=False) -> Path:
    """y = a @ W + b; inputs declared in ``order``; optionally renamed, an extra output, an unused input."""
    names = names or {}
    n = lambda x: names.get(x, x)  # noqa: E731
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    decl = {"a": helper.make_tensor_value_info(n("a"), TensorProto.FLOAT, ["batch", 16]),
            "b": helper.make_tensor_value_info(n("b"), TensorProto.FLOAT, ["batch", 8])}
    inputs = [decl[k] for k in order]
    if unused_in:
        inputs.append(helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1]))
    nodes = [helper.make_node("MatMul", [n("a"), "w"], ["m"]), helper.make_node("Add", ["m", n("b")], [n("y")])]
    outputs = [helper.make_tensor_value_info(n("y"), TensorProto.FLOAT, ["batch", 8])]
    if extra_out:
        outputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, ["batch", 8]))
    g = helper.make_graph(nodes, "two", inputs, outputs, [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_inputs_in_another_order_are_the_same_signature(zoo: Path, tmp_path: Path) -> None:
    import_variant(zoo, "two", "ref", two_input_model(tmp_path / "ab.onnx"))
    m = import_variant(zoo, "two", "other", two_input_model(tmp_path / "ba.onnx", order=("b", "a")))
    assert m.variant_ids() == ["ref", "other"]
    assert load_manifest(zoo / "two").variant("other").build.get("fitted") is None   # no rewrite was needed


def test_a_file_with_other_tensor_names_is_fitted_with_a_map(zoo: Path, tmp_path: Path) -> None:
    import_variant(zoo, "two", "ref", two_input_model(tmp_path / "ab.onnx"))
    src = two_input_model(tmp_path / "named.onnx", names={"a": "input_0", "b": "input_1", "y": "output_0"})
    before = src.read_bytes()
    with pytest.raises(InvalidParams, match="do not match model 'two'"):
        import_variant(zoo, "two", "producer2", src)
    m = import_variant(zoo, "two", "producer2", src, rename={"input_0": "a", "input_1": "b", "output_0": "y"})
    v = m.variant("producer2")
    assert "renamed input_0->a" in v.build["fitted"][0] and src.read_bytes() == before   # the source untouched
    feeds = {"a": np.ones((2, 16), np.float32), "b": np.ones((2, 8), np.float32)}
    ref = load_manifest(zoo / "two")
    assert np.array_equal(run(m.path_of(v), feeds)[0], run(ref.path_of(ref.variant("ref")), feeds)[0])
    with pytest.raises(InvalidParams, match="has no input or output 'nope'"):
        import_variant(zoo, "two", "p3", src, rename={"nope": "a"})


def test_extra_outputs_are_dropped_on_request_and_unused_inputs_always(zoo: Path, tmp_path: Path) -> None:
    import_variant(zoo, "two", "ref", two_input_model(tmp_path / "ab.onnx"))
    extra = two_input_model(tmp_path / "extra.onnx", extra_out=True, unused_in=True)
    with pytest.raises(InvalidParams, match="--ignore-extra-outputs drops outputs"):
        import_variant(zoo, "two", "extra", extra)
    m = import_variant(zoo, "two", "extra", extra, drop_extra_outputs=True)
    v = m.variant("extra")
    assert [s.name for s in v.outputs] == ["y"] and [s.name for s in v.inputs] == ["a", "b"]
    assert any("dropped unused inputs ['unused']" in f for f in v.build["fitted"])


def test_an_imported_variant_is_measured_and_gets_a_policy_row(zoo: Path, mlp_file: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    recipe = write_recipe(tmp_path / "r", mlp_file, variants='[[variants]]\nid = "fp32"\nmethod = "copy"\n')
    import_variant(zoo, "mlp", "fp32", mlp_file)
    q = tmp_path / "q8.onnx"
    quantize_dynamic(str(mlp_file), str(q), weight_type=QuantType.QInt8)
    import_variant(zoo, "mlp", "int8-other-producer", q)
    assert table_from_manifests({"mlp": load_manifest(zoo / "mlp")}) == []      # nothing measured: no row
    with pytest.raises(InvalidParams, match="pass --recipe RECIPE"):
        measure_variants(zoo, "mlp")
    m, done = measure_variants(zoo, "mlp", recipe=recipe)
    assert done == ["fp32", "int8-other-producer"]
    rows = table_from_manifests({"mlp": m})
    row = next(r for r in rows if r.variant == "int8-other-producer")
    assert row.latency_ms_p50 and row.latency_ms_p50 > 0 and row.energy_j is not None
    assert row.precision == "int8" and 0.5 < row.quality_rel <= 1.0
    assert m.variant("int8-other-producer").unfit is None          # above the default floor
    # the simulator (the same decide() the daemon runs) can choose it: it has its own static baseline, and
    # with the reference gone from the table the policy serves the whole trace with it
    rep = simulate(scenario("discharge", 300), load_policy([BALANCED]), rows, parse_workload("rate=1/s"))
    methods = rep.to_dict()["methods"]
    assert "static:int8-other-producer@cpu" in methods
    only = [r for r in rows if r.variant == "int8-other-producer"]
    alone = simulate(scenario("discharge", 300), load_policy([BALANCED]), only, parse_workload("rate=1/s"))
    assert set(alone.to_dict()["methods"]["policy"]["time_in_s"]) == {"mlp:int8-other-producer@cpu"}


def test_a_different_model_with_a_matching_signature_measures_low_quality(zoo: Path, mlp_file: Path,
                                                                          tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", mlp_file, variants='[[variants]]\nid = "fp32"\nmethod = "copy"\n')
    import_variant(zoo, "mlp", "fp32", mlp_file)
    import_variant(zoo, "mlp", "impostor", make_mlp(tmp_path / "other.onnx", seed=7))
    m, _ = measure_variants(zoo, "mlp", ["impostor"], recipe=recipe)
    assert m.variant("impostor").quality.relative < 0.5    # another network: its answers disagree
    # below the default floor for a variant no recipe lists: unfit, with the figure, and out of the table
    assert re.fullmatch(r"quality_rel 0\.\d+ < floor 0\.9", m.variant("impostor").unfit or "")
    assert "impostor" not in {r.variant for r in table_from_manifests({"mlp": m})}
    m, _ = measure_variants(zoo, "mlp", ["impostor"], recipe=recipe, floors={"quality_rel": 0.0})
    assert m.variant("impostor").unfit is None             # the user's own floor wins


def test_zoo_remove_a_variant_the_reference_and_the_model(zoo: Path, tmp_path: Path) -> None:
    import_variant(zoo, "two", "ref", two_input_model(tmp_path / "ab.onnx"))
    import_variant(zoo, "two", "b", two_input_model(tmp_path / "ba.onnx", order=("b", "a")))
    folder = load_manifest(zoo / "two").path_of(load_manifest(zoo / "two").variant("b")).parent
    with pytest.raises(InvalidParams, match="is the reference"):
        remove_variant(zoo, "two", "ref")
    left = remove_variant(zoo, "two", "b")
    assert left is not None and left.variant_ids() == ["ref"] and not folder.exists()
    assert remove_variant(zoo, "two") is None and not (zoo / "two").exists()
    with pytest.raises(InvalidParams, match="no model 'two'"):
        remove_variant(zoo, "two")


def test_replacing_the_reference_needs_its_signature_and_marks_quality_stale(zoo: Path, mlp_file: Path,
                                                                             tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", mlp_file, variants='[[variants]]\nid = "fp32"\nmethod = "copy"\n')
    import_variant(zoo, "mlp", "fp32", mlp_file)
    import_variant(zoo, "mlp", "b", make_mlp(tmp_path / "b.onnx", seed=3))
    measure_variants(zoo, "mlp", recipe=recipe)
    with pytest.raises(InvalidParams, match="dim 1 is 128"):
        import_variant(zoo, "mlp", "fp32", make_mlp(tmp_path / "narrow.onnx", d_in=128), replace_existing=True)
    m = import_variant(zoo, "mlp", "fp32", make_mlp(tmp_path / "new.onnx", seed=3), replace_existing=True)
    assert m.reference == "fp32" and m.variant("b").quality is None                # stale until re-measured
    m, _ = measure_variants(zoo, "mlp", recipe=recipe)
    assert m.variant("b").quality.relative == pytest.approx(1.0)                   # same weights as the new ref


def test_zoo_cli_measure_remove_and_bad_map(zoo: Path, mlp_file: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r", mlp_file, variants='[[variants]]\nid = "fp32"\nmethod = "copy"\n')

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "zoo", *args, "--zoo", str(zoo)],
                              capture_output=True, text=True, timeout=300)

    p = ctl("import", "mlp", "fp32", str(mlp_file), "--recipe", str(recipe))
    assert p.returncode == 0 and "fp32" in p.stdout and "ms" in p.stdout.lower(), p.stderr
    assert load_manifest(zoo / "mlp").variant("fp32").measurements          # import measured it
    p = ctl("import", "mlp", "x", str(mlp_file), "--map", "novalue")
    assert p.returncode == 2 and "expected GRAPH_NAME=MODEL_NAME" in p.stderr
    for bad, msg in (("quality", "expected NAME=MIN"), ("speed=2", "NAME one of quality_rel"),
                     ("quality_rel=high", "expected a number, got 'high'"), ("quality_rel=nan", "finite")):
        p = ctl("measure", "mlp", "--recipe", str(recipe), "--floor", bad)
        assert p.returncode == 2 and msg in p.stderr, (bad, p.stderr)
    p = ctl("measure", "mlp", "nope", "--recipe", str(recipe))
    assert p.returncode == 1 and "no variant 'nope'" in p.stderr
    p = ctl("remove", "mlp")
    assert p.returncode == 0 and not (zoo / "mlp").exists()
