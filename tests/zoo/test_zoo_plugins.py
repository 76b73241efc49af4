"""The plug-in contract the LLM builders use: a registered method on a GGUF source, errors mapped."""

from __future__ import annotations

from pathlib import Path

import pytest
from zoo_helpers import make_mlp, sha256, write_recipe

from agent.errors import BuildError
from agent.zoo.build.registry import BuildContext, BuildResult, Param, builders, register_builder
from agent.zoo.build.runner import build_recipe
from agent.zoo.manifest import load_manifest
from agent.zoo.recipe import load_recipe

SEEN: dict[str, object] = {}


@register_builder("test-fake-convert", precision="fp32", accepts=("gguf",), tools=("numpy",),
                  params={"width": Param(int, 256, lo=1)})
def _fake_convert(ctx: BuildContext) -> BuildResult:
    """Stands in for gguf-convert: reads the 'GGUF' source, writes an ONNX model."""
    SEEN["input"] = ctx.input_path.read_bytes()
    SEEN["reference_path"] = ctx.reference_path
    make_mlp(ctx.out_dir / "decoder.onnx", d_in=ctx.params["width"])
    (ctx.out_dir / "sidecar.json").write_text("{}")
    ctx.log("converted")
    return BuildResult("decoder.onnx", info={"layers": 3}, llm={"context_length": 8})


@register_builder("test-explode", precision="fp32")
def _explode(ctx: BuildContext) -> BuildResult:
    """Fails the way a third-party tool does."""
    SEEN["explode_reference"] = ctx.reference_path
    raise ValueError("tool broke\n  with a traceback-ish second line")


@register_builder("test-long-error", precision="fp32")
def _long_error(ctx: BuildContext) -> BuildResult:
    """ORT's style: a long message whose cause is at the very end."""
    raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model from /x/model.onnx failed: " + "x" * 900 +
                       " [ShapeInferenceError] Unrecognized attribute: axis for operator DequantizeLinear")


@register_builder("test-noop-int8", precision="int8")
def _noop_int8(ctx: BuildContext) -> BuildResult:
    """Claims int8 and writes its float input unchanged: the runner must notice."""
    import shutil

    shutil.copyfile(ctx.input_path, ctx.out_dir / "model.onnx")
    return BuildResult("model.onnx")


def test_a_long_tool_error_keeps_its_cause_at_the_end(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "q"\nmethod = "test-long-error"\n'
    p = write_recipe(tmp_path / "r", mlp_file, variants=v)
    with pytest.raises(BuildError) as e:
        build_recipe(load_recipe(p), tmp_path / "zoo")
    assert "Unrecognized attribute: axis for operator DequantizeLinear (full cause: " in str(e.value)
    assert len(str(e.value)) < 900


def test_a_quantizing_build_that_changes_nothing_fails(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "int8"\nmethod = "test-noop-int8"\n'
    p = write_recipe(tmp_path / "r", mlp_file, variants=v)
    with pytest.raises(BuildError, match="int8: test-noop-int8: the build changed nothing: declared int8"):
        build_recipe(load_recipe(p), tmp_path / "zoo")
    assert load_manifest(tmp_path / "zoo" / "mlp").variant_ids() == ["fp32"]


def test_registered_methods_include_the_builtin_ladder() -> None:
    assert {"copy", "fp16", "int8-dynamic", "int8-static", "matmul-nbits", "mixed",
            "magnitude-prune"} <= set(builders())


def test_gguf_source_is_dispatched_to_the_registered_converter(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00 not really")
    v = '[[variants]]\nid = "fp32"\nmethod = "test-fake-convert"\n' \
        '[[variants]]\nid = "int8"\nmethod = "int8-dynamic"\n'
    p = write_recipe(tmp_path / "r", gguf, variants=v)
    p.write_text(p.read_text().replace('format = "onnx"', 'format = "gguf"'))
    m, _ = build_recipe(load_recipe(p), tmp_path / "zoo")
    assert SEEN["input"] == gguf.read_bytes() and SEEN["reference_path"] is None
    m = load_manifest(tmp_path / "zoo" / "mlp")
    fp32 = m.variant("fp32")
    assert fp32.file.endswith("/decoder.onnx") and (m.path_of(fp32).parent / "sidecar.json").exists()
    assert fp32.build["info"] == {"layers": 3} and fp32.build["source_sha256"] == sha256(gguf)
    assert m.llm == {"context_length": 8}
    assert m.variant("int8").quality is not None


def test_a_tool_exception_becomes_one_line_naming_recipe_and_variant(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "boom"\nmethod = "test-explode"\n'
    p = write_recipe(tmp_path / "r", mlp_file, variants=v)
    with pytest.raises(BuildError) as e:
        build_recipe(load_recipe(p), tmp_path / "zoo")
    log = tmp_path / "zoo" / "mlp" / ".build-logs" / "boom.log"
    assert str(e.value) == (f"{p}: boom: test-explode failed: ValueError: tool broke with a traceback-ish "
                            f"second line (full cause: {log})")
    assert "Traceback" in log.read_text() and "ValueError: tool broke" in log.read_text()
    assert SEEN["explode_reference"] is not None   # non-reference builders get the reference's file
    assert load_manifest(tmp_path / "zoo" / "mlp").variant_ids() == ["fp32"]
