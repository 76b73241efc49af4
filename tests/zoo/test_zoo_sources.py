"""Several source files in one ladder: [[sources]] tables, variants that start from them, and `method =
"import"` taking a file as is (precision from its graph, signature matched by name, measured like the rest)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from zoo_helpers import make_mlp, sha256, write_recipe

from agent.errors import BuildError, RecipeError
from agent.policy.table import table_from_manifests
from agent.zoo.build.runner import build_recipe
from agent.zoo.manifest import load_manifest
from agent.zoo.precision import detect
from agent.zoo.recipe import load_recipe


def _int8_file(fp32: Path, out: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8)
    return out


def _fp16_file(fp32: Path, out: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))
    return out


def _renamed_file(fp32: Path, out: Path) -> Path:
    """The same network from a producer that names its tensors input_0 / output_0."""
    m = onnx.load(str(fp32))
    ren = {"x": "input_0", "y": "output_0"}
    for vi in (*m.graph.input, *m.graph.output):
        vi.name = ren.get(vi.name, vi.name)
    for n in m.graph.node:
        n.input[:] = [ren.get(x, x) for x in n.input]
        n.output[:] = [ren.get(x, x) for x in n.output]
    m.producer_name = "someone-else"
    onnx.save(m, str(out))
    return out


def _sources(**files: Path) -> str:
    return "".join(f'\n[[sources]]\nid = "{sid}"\npath = "{p}"\nsha256 = "{sha256(p)}"\n' for sid, p in files.items())


def _recipe(folder: Path, fp32: Path, variants: str, **files: Path) -> Path:
    # [[sources]] must come before [[variants]] only for reading; TOML allows any order, so append it
    p = write_recipe(folder, fp32, variants=variants)
    p.write_text(p.read_text() + _sources(**files))
    return p


LADDER = """
[[variants]]
id = "fp32"
method = "copy"

[[variants]]
id = "ort-int8"
method = "import"
source = "int8-file"

[[variants]]
id = "vendor-fp16"
method = "import"
source = "fp16-file"

[[variants]]
id = "renamed"
method = "import"
source = "renamed-file"
[variants.params]
map = ["input_0=x", "output_0=y"]

[[variants]]
id = "int8-of-renamed"
method = "int8-dynamic"
derived_from = "renamed"

[[variants]]
id = "impostor"
method = "import"
source = "other-net"
"""


@pytest.fixture(scope="module")
def ladder(tmp_path_factory: pytest.TempPathFactory, mlp_file: Path):
    d = tmp_path_factory.mktemp("sources")
    files = {"int8-file": _int8_file(mlp_file, d / "q8.onnx"), "fp16-file": _fp16_file(mlp_file, d / "h.onnx"),
             "renamed-file": _renamed_file(mlp_file, d / "renamed.onnx"),
             "other-net": make_mlp(d / "other.onnx", seed=7)}
    recipe = load_recipe(_recipe(d / "r", mlp_file, LADDER, **files))
    manifest, reports = build_recipe(recipe, d / "zoo")
    return recipe, manifest, reports, d / "zoo", files


def test_a_ladder_with_several_source_files_builds_and_measures_every_variant(ladder) -> None:
    recipe, _, reports, zoo, files = ladder
    assert [r.action for r in reports] == ["built"] * 6
    m = load_manifest(zoo / "mlp")
    for v in m.variants:
        assert v.measurements and v.measurements[0].latency_ms_p50 and v.quality is not None, v.id
    q8 = m.variant("ort-int8")
    assert (q8.method, q8.derived_from, q8.build["source_id"]) == ("import", "source", "int8-file")
    assert q8.build["source_sha256"] == sha256(files["int8-file"]) == q8.sha256      # taken as is
    assert m.variant("fp32").build["source_sha256"] == sha256(recipe.source.path)
    assert "source_id" not in m.variant("fp32").build
    assert 0.5 < q8.quality.relative <= 1.0 and q8.unfit is None
    rows = {r.variant for r in table_from_manifests({"mlp": m})}
    assert {"fp32", "ort-int8", "vendor-fp16", "renamed", "int8-of-renamed"} <= rows


def test_precision_of_an_imported_file_is_read_from_its_graph(ladder) -> None:
    _, m, _, _, _ = ladder
    prec = {v.id: v.precision for v in m.variants}
    assert prec["ort-int8"] == "int8" and prec["vendor-fp16"] == "fp16" and prec["renamed"] == "fp32"
    assert prec["int8-of-renamed"] == "int8"
    assert "float16" in m.variant("vendor-fp16").build["info"]["precision_evidence"]
    assert detect(m.path_of(m.variant("vendor-fp16"))).label == "fp16"


def test_a_file_with_other_tensor_names_is_fitted_by_the_map_and_its_children_follow(ladder) -> None:
    _, m, _, _, files = ladder
    r = m.variant("renamed")
    assert [t.name for t in r.inputs] == ["x"] and [t.name for t in r.outputs] == ["y"]
    assert "renamed input_0->x, output_0->y" in r.build["info"]["fitted"][0]
    assert r.quality.relative == pytest.approx(1.0)                    # the same network
    assert m.variant("int8-of-renamed").build["source_id"] == "renamed-file"
    assert sha256(files["renamed-file"]) == m.variant("int8-of-renamed").build["source_sha256"]


def test_an_imported_file_of_another_network_is_unfit_by_the_default_floor(ladder) -> None:
    _, m, _, _, _ = ladder
    v = m.variant("impostor")
    assert v.quality.relative < 0.5 and (v.unfit or "").startswith("quality_rel ")
    assert "impostor" not in {r.variant for r in table_from_manifests({"mlp": m})}


def test_a_second_build_skips_every_variant(ladder) -> None:
    recipe, _, _, zoo, _ = ladder
    _, reports = build_recipe(recipe, zoo)
    assert {r.action for r in reports} == {"skipped"}


def _one_import(source: str = "int8-file", extra: str = "") -> str:
    return ('[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "imp"\nmethod = "import"\n'
            f'source = "{source}"\n{extra}')


def test_a_bad_source_id_names_its_line(tmp_path: Path, mlp_file: Path) -> None:
    q = _int8_file(mlp_file, tmp_path / "q8.onnx")
    p = _recipe(tmp_path / "r", mlp_file, _one_import("int-8"), **{"int8-file": q})
    with pytest.raises(RecipeError, match=r"recipe\.toml:\d+: variants\.1\.source: expected the \[\[sources\]\] "
                                          r"ids \['int8-file'\], got 'int-8'"):
        load_recipe(p)
    p = write_recipe(tmp_path / "r2", mlp_file, variants=_one_import())
    with pytest.raises(RecipeError, match=r"variants\.1\.source: expected the id of a \[\[sources\]\] table "
                                          r"\(it has none\)"):
        load_recipe(p)


@pytest.mark.parametrize(("extra", "sources", "needle"), [
    ('precision = "int8"\n', "", r"variants\.1\.precision: method 'import' reads the precision from the file"),
    ('derived_from = "fp32"\n', "", r"variants\.1\.derived_from: a variant with source = 'int8-file' starts "),
    ("", '\n[[sources]]\nid = "int8-file"\npath = "x.onnx"\nsha256 = "' + "0" * 64 + '"\n',
     r"sources\.1\.id: duplicate source id 'int8-file'"),
    ("", '\n[[sources]]\nid = "source"\npath = "x.onnx"\nsha256 = "' + "0" * 64 + '"\n',
     r"sources\.1\.id: expected letters, digits, '_', '-', '.' \(not 'source'\)"),
    ("", '\n[[sources]]\nid = "two"\npath = "x.onnx"\npypi = "a==1"\n', r"sources\.1: expected exactly one of "
                                                                         r"sources\.path"),
    ("", '\n[[sources]]\nid = "nosha"\npath = "x.onnx"\n', r"sources\.1: sha256: missing required key"),
])
def test_recipe_mistakes_about_sources_name_their_line(tmp_path: Path, mlp_file: Path, extra: str, sources: str,
                                                       needle: str) -> None:
    q = _int8_file(mlp_file, tmp_path / "q8.onnx")
    p = _recipe(tmp_path / "r", mlp_file, _one_import(extra=extra), **{"int8-file": q})
    p.write_text(p.read_text() + sources)
    with pytest.raises(RecipeError, match=r"recipe\.toml:\d+: " + needle):
        load_recipe(p)


def test_import_without_source_takes_the_main_source_as_is(tmp_path: Path, mlp_file: Path) -> None:
    q = _int8_file(mlp_file, tmp_path / "q8.onnx")
    v = '[[variants]]\nid = "int8"\nmethod = "import"\n'
    p = write_recipe(tmp_path / "r", q, variants=v)
    p.write_text(p.read_text().replace('reference = "fp32"', 'reference = "int8"'))
    m, _ = build_recipe(load_recipe(p), tmp_path / "zoo")
    assert m.variant("int8").precision == "int8" and m.variant("int8").sha256 == sha256(q)


def test_a_missing_or_changed_source_file_fails_before_any_work(tmp_path: Path, mlp_file: Path) -> None:
    q = _int8_file(mlp_file, tmp_path / "q8.onnx")
    p = _recipe(tmp_path / "r", mlp_file, _one_import(), **{"int8-file": q})
    q.rename(tmp_path / "gone.onnx")
    with pytest.raises(BuildError, match=rf"^{p}: sources\.int8-file: expected a file at {q}, got none$"):
        build_recipe(load_recipe(p), tmp_path / "zoo")
    assert not (tmp_path / "zoo" / "mlp").exists()
    (tmp_path / "gone.onnx").rename(q)
    q.write_bytes(q.read_bytes() + b"\0")
    with pytest.raises(BuildError, match=rf"{p}: sources\.int8-file: q8\.onnx has sha256 [0-9a-f]+, expected "):
        build_recipe(load_recipe(p), tmp_path / "zoo")


def test_a_source_file_whose_signature_differs_fails_with_the_reason(tmp_path: Path, mlp_file: Path) -> None:
    narrow = make_mlp(tmp_path / "narrow.onnx", d_in=128)
    p = _recipe(tmp_path / "r", mlp_file, _one_import("narrow"), narrow=narrow)
    with pytest.raises(BuildError, match=r"imp: import failed: narrow\.onnx: inputs do not match the reference's: "
                                         r"x: dim 1 is 128, expected 256; params map"):
        build_recipe(load_recipe(p), tmp_path / "zoo")
    assert load_manifest(tmp_path / "zoo" / "mlp").variant_ids() == ["fp32"]
    renamed = _renamed_file(mlp_file, tmp_path / "renamed.onnx")
    p = _recipe(tmp_path / "r2", mlp_file, _one_import("ren"), ren=renamed)
    with pytest.raises(BuildError, match=r"inputs do not match the reference's: tensors missing \['x'\], "
                                         r"extra \['input_0'\]"):
        build_recipe(load_recipe(p), tmp_path / "zoo2")
    p = _recipe(tmp_path / "r3", mlp_file, _one_import("ren", '[variants.params]\nmap = ["input_0"]\n'), ren=renamed)
    with pytest.raises(BuildError, match=r"import failed: params\.map: expected GRAPH_NAME=MODEL_NAME, got 'input_0'"):
        build_recipe(load_recipe(p), tmp_path / "zoo3")
