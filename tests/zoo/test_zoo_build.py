"""Building a ladder from a tiny MLP made in the test: real builders, real ORT, real measurements."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from zoo_helpers import make_custom_op_model, make_mlp, sha256, write_recipe

from agent.errors import BuildError
from agent.zoo.build.runner import build_recipe
from agent.zoo.manifest import MANIFEST, load_manifest
from agent.zoo.recipe import load_recipe


def _zoo_state(zoo: Path) -> dict[str, bytes]:
    """Every file under the zoo except the source cache, with its content."""
    return {str(p.relative_to(zoo)): p.read_bytes() for p in sorted(zoo.rglob("*"))
            if p.is_file() and ".cache" not in p.parts}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, mlp_file: Path):
    d = tmp_path_factory.mktemp("ladder")
    recipe = load_recipe(write_recipe(d / "recipe", mlp_file))
    manifest, reports = build_recipe(recipe, d / "zoo")
    return recipe, manifest, reports, d / "zoo"


def test_builds_every_variant_of_the_ladder_with_measured_figures(built) -> None:
    recipe, _, reports, zoo = built
    assert [r.action for r in reports] == ["built"] * len(recipe.variants)
    again = load_manifest(zoo / "mlp")  # the written manifest validates, files and all
    assert sorted(again.variant_ids()) == sorted(v.id for v in recipe.variants)
    assert again.reference == "fp32" and [s.name for s in again.inputs] == ["x"]
    for v in again.variants:
        path = again.path_of(v)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == v.sha256
        assert v.size_bytes == path.stat().st_size
        (meas,) = v.measurements
        assert meas.latency_ms_p50 and meas.latency_ms_p95 and meas.latency_ms_p50 <= meas.latency_ms_p95
        assert meas.load_ms and meas.load_ms > 0 and meas.peak_rss_bytes and meas.peak_rss_bytes > 10_000_000
        assert meas.energy_j is not None and meas.energy_j > 0 and meas.meter == "model"
        assert v.quality is not None and 0.0 <= v.quality.relative <= 1.0 and v.quality.metric == "top1"
        assert v.build["source_sha256"] == sha256(Path(recipe.source.path))
        assert v.build["tools"]["onnx"] and v.build["command"].startswith("agentctl zoo build")
        assert v.outputs and v.outputs[0].dtype == "float32"


def test_ladder_sizes_and_quality_are_ordered_as_expected(built) -> None:
    _, m, _, _ = built
    size = {v.id: v.size_bytes for v in m.variants}
    q = {v.id: v.quality.relative for v in m.variants}
    assert q["fp32"] == 1.0
    assert 0.45 < size["fp16"] / size["fp32"] < 0.55
    assert size["int8"] < size["fp32"] * 0.3 and size["int8-qdq"] < size["fp32"] * 0.3
    assert size["int4"] < size["w8"] < size["fp32"]
    assert size["int4"] <= size["mixed"] < size["w8"]
    assert q["fp16"] >= 0.99 and q["w8"] >= q["int4"]
    fp16 = m.variant("fp16").build["eval"]
    assert fp16["max_abs_diff"] < 0.01  # fp16 is close; int4 moves the outputs far more
    assert m.variant("int4").build["eval"]["mean_abs_diff"] > fp16["mean_abs_diff"]


def test_precision_and_builder_facts_are_recorded(built) -> None:
    _, m, _, _ = built
    assert {v.id: v.precision for v in m.variants} == {
        "fp32": "fp32", "fp16": "fp16", "int8": "int8", "int8-qdq": "int8", "int4": "int4", "w8": "int8",
        "mixed": "mixed", "pruned50": "fp32"}
    info = m.variant("pruned50").build["info"]
    assert abs(info["sparsity"] - 0.5) < 0.01
    assert info["gzip_bytes"] < info["parent_gzip_bytes"] * 0.8
    mixed = m.variant("mixed").build["info"]
    assert mixed["int8_nodes"] and mixed["int4_nodes"] >= 1
    assert m.variant("int8-qdq").build["info"]["calibration_feeds"] == 8


def test_second_build_skips_everything_up_to_date(built) -> None:
    recipe, _, _, zoo = built
    before = (zoo / "mlp" / MANIFEST).read_bytes()
    _, reports = build_recipe(recipe, zoo)
    assert {r.action for r in reports} == {"skipped"}
    assert (zoo / "mlp" / MANIFEST).read_bytes() == before


def test_changed_params_rebuild_only_that_variant(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "int4"\nmethod = "matmul-nbits"\n' \
        '[variants.params]\nblock_size = 32\n[[variants]]\nid = "fp16"\nmethod = "fp16"\n'
    p = write_recipe(tmp_path / "r", mlp_file, variants=v)
    zoo = tmp_path / "zoo"
    m1, _ = build_recipe(load_recipe(p), zoo)
    p.write_text(p.read_text().replace("block_size = 32", "block_size = 64"))
    m2, reports = build_recipe(load_recipe(p), zoo)
    assert {r.variant: r.action for r in reports} == {"fp32": "skipped", "int4": "built", "fp16": "skipped"}
    assert m2.variant("int4").sha256 != m1.variant("int4").sha256
    assert not (zoo / "mlp" / m1.variant("int4").file).exists()   # the old variant dir is gone
    assert len([d for d in (zoo / "mlp").iterdir() if d.is_dir()]) == 3


def test_only_builds_the_variant_and_what_it_needs(tmp_path: Path, mlp_file: Path) -> None:
    p = write_recipe(tmp_path / "r", mlp_file)
    m, reports = build_recipe(load_recipe(p), tmp_path / "zoo", only=["int4"])
    assert [r.variant for r in reports] == ["fp32", "int4"]
    assert sorted(m.variant_ids()) == ["fp32", "int4"]


def _fails_cleanly(recipe_path: Path, zoo: Path, *needles: str) -> str:
    before = _zoo_state(zoo) if zoo.exists() else {}
    with pytest.raises(BuildError) as e:
        build_recipe(load_recipe(recipe_path), zoo)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(recipe_path)), msg
    for n in needles:
        assert n in msg, msg
    assert (_zoo_state(zoo) if zoo.exists() else {}) == before
    assert not list(zoo.glob("*/.tmp-*"))
    return msg


def test_wrong_sha256_fails_before_any_work(tmp_path: Path, mlp_file: Path) -> None:
    p = write_recipe(tmp_path / "r", mlp_file, sha="0" * 64)
    _fails_cleanly(p, tmp_path / "zoo", "source:", "expected " + "0" * 64)
    assert not (tmp_path / "zoo" / "mlp").exists()


def test_truncated_onnx_fails_cleanly(tmp_path: Path, mlp_file: Path) -> None:
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(mlp_file.read_bytes()[: mlp_file.stat().st_size // 2])
    p = write_recipe(tmp_path / "r", bad)
    _fails_cleanly(p, tmp_path / "zoo", "fp32:", "not a readable ONNX model")
    assert not (tmp_path / "zoo" / "mlp").exists()


def test_op_no_provider_supports_fails_cleanly(tmp_path: Path) -> None:
    model = make_custom_op_model(tmp_path / "custom.onnx")
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n'
    p = write_recipe(tmp_path / "r", model, variants=v)
    msg = _fails_cleanly(p, tmp_path / "zoo", "fp32:", "onnxruntime cannot load")
    assert "FrobnicateXYZ" in msg
    assert not (tmp_path / "zoo" / "mlp").exists()


def test_failed_rebuild_keeps_the_previous_manifest_and_files(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "pr"\nmethod = "magnitude-prune"\n'
    p = write_recipe(tmp_path / "r", mlp_file, variants=v)
    zoo = tmp_path / "zoo"
    build_recipe(load_recipe(p), zoo)
    # min_size larger than any weight: the builder finds nothing to prune and fails
    p.write_text(p.read_text().replace('method = "magnitude-prune"\n',
                                       'method = "magnitude-prune"\n[variants.params]\nmin_size = 100000000\n'))
    _fails_cleanly(p, zoo, "pr:", "magnitude-prune failed", "no MatMul/Gemm/Conv weight")
    assert load_manifest(zoo / "mlp").variant_ids() == ["fp32", "pr"]


def test_a_second_concurrent_build_of_the_same_model_is_refused(tmp_path: Path, mlp_file: Path) -> None:
    import fcntl

    p = write_recipe(tmp_path / "r", mlp_file)
    zoo = tmp_path / "zoo"
    (zoo / ".cache" / "locks").mkdir(parents=True)
    with open(zoo / ".cache" / "locks" / "mlp.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BuildError, match="another build of 'mlp'"):
            build_recipe(load_recipe(p), zoo)
    assert not (zoo / "mlp").exists()


def test_changed_measure_settings_remeasure_without_rebuilding(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "w8"\nmethod = "matmul-nbits"\n' \
        '[variants.params]\nbits = 8\n'
    p = write_recipe(tmp_path / "r", mlp_file, variants=v)
    zoo = tmp_path / "zoo"
    m1, _ = build_recipe(load_recipe(p), zoo)
    p.write_text(p.read_text().replace("runs = 20", "runs = 30"))
    m2, reports = build_recipe(load_recipe(p), zoo)
    assert [r.action for r in reports] == ["measured", "measured"]
    w1, w2 = m1.variant("w8"), m2.variant("w8")
    assert (w2.file, w2.sha256, w2.precision) == (w1.file, w1.sha256, "int8")
    assert w2.build["eval"]["runs"] >= 30 and w1.build["eval"]["runs"] < 30
    assert load_manifest(zoo / "mlp").variant("w8").build["measure_key"] != w1.build["measure_key"]


def test_a_corrupted_variant_file_is_rebuilt(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "fp16"\nmethod = "fp16"\n'
    p = write_recipe(tmp_path / "r", mlp_file, variants=v)
    zoo = tmp_path / "zoo"
    m, _ = build_recipe(load_recipe(p), zoo)
    f = m.path_of(m.variant("fp16"))
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF   # same size, different bytes
    f.write_bytes(bytes(data))
    m2, reports = build_recipe(load_recipe(p), zoo)
    assert {r.variant: r.action for r in reports} == {"fp32": "skipped", "fp16": "built"}
    assert m2.path_of(m2.variant("fp16")).read_bytes() != bytes(data)
    assert load_manifest(zoo / "mlp").variant("fp16").sha256 == m.variant("fp16").sha256


def test_the_template_recipe_builds_a_users_model_into_a_ladder(tmp_path: Path, mlp_file: Path) -> None:
    import shutil

    tpl = Path(__file__).resolve().parents[2] / "model_zoo" / "template" / "recipe.toml"
    folder = tmp_path / "mymodel"
    folder.mkdir()
    shutil.copy(mlp_file, folder / "model.onnx")
    text = tpl.read_text().replace("runs = 100", "runs = 20")
    (folder / "recipe.toml").write_text(text)
    zoo = tmp_path / "zoo"
    # as shipped, the placeholder sha256 fails and the message gives the file's real one
    msg = _fails_cleanly(folder / "recipe.toml", zoo, "model.onnx has sha256 " + sha256(mlp_file))
    assert msg.endswith("expected " + "0" * 64)
    (folder / "recipe.toml").write_text(text.replace("0" * 64, sha256(mlp_file)))
    m, _ = build_recipe(load_recipe(folder), zoo)
    assert sorted(m.variant_ids()) == sorted(["fp32", "fp16", "int8", "int8-static", "int4", "mixed", "pruned50"])
    assert all(v.quality and v.quality.metric == "cosine" for v in m.variants)
    assert m.variant("fp16").quality.value > 0.999 and m.variant("int4").quality.value > 0.9


def test_a_new_source_with_another_signature_drops_stale_variants(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "fp16"\nmethod = "fp16"\n'
    p = write_recipe(tmp_path / "r", mlp_file, variants=v)
    zoo = tmp_path / "zoo"
    build_recipe(load_recipe(p), zoo)
    (zoo / "mlp" / "keep-me").mkdir()   # not ours: left alone
    other = make_mlp(tmp_path / "narrow.onnx", d_in=64)
    p2 = write_recipe(tmp_path / "r", other, variants=v)
    m, _ = build_recipe(load_recipe(p2), zoo, only=["fp32"])
    assert m.variant_ids() == ["fp32"] and m.inputs[0].shape == ("batch", 64)
    assert load_manifest(zoo / "mlp").variant_ids() == ["fp32"]
    dirs = sorted(d.name for d in (zoo / "mlp").iterdir() if d.is_dir())
    assert len(dirs) == 2 and "keep-me" in dirs and dirs[0].startswith("fp32-")
