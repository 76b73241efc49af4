"""agentctl zoo import: signature read by onnxruntime, atomic copy, clear errors, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
from zoo_helpers import make_custom_op_model, make_mlp, sha256

from agent.errors import InvalidParams, LoadError
from agent.zoo.cli import main
from agent.zoo.importer import import_variant
from agent.zoo.manifest import MANIFEST, load_manifest


def _files(zoo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(zoo)): p.read_bytes() for p in sorted(zoo.rglob("*")) if p.is_file()} \
        if zoo.exists() else {}


def test_import_creates_a_model_whose_reference_is_the_file(zoo: Path, mlp_file: Path) -> None:
    m = import_variant(zoo, "mlp", "fp32", mlp_file)
    again = load_manifest(zoo / "mlp")
    assert again.reference == "fp32" and again.kind == "tensor"
    v = again.variant("fp32")
    assert v.sha256 == sha256(mlp_file) and v.size_bytes == mlp_file.stat().st_size
    assert v.precision == "fp32" and v.method == "import"
    assert [(s.name, s.dtype, s.shape) for s in again.inputs] == [("x", "float32", ("batch", 256))]
    assert again.path_of(v).read_bytes() == mlp_file.read_bytes()
    assert m.folder == zoo / "mlp"


def test_import_adds_a_matching_variant_and_guesses_precision(zoo: Path, mlp_file: Path, tmp_path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import_variant(zoo, "mlp", "fp32", mlp_file)
    half = tmp_path / "half.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(mlp_file)), keep_io_types=True), str(half))
    import_variant(zoo, "mlp", "fp16", half)
    m = load_manifest(zoo / "mlp")
    assert m.variant_ids() == ["fp32", "fp16"] and m.variant("fp16").precision == "fp16"
    assert m.reference == "fp32"


def test_signature_mismatch_is_a_clear_error_and_writes_nothing(zoo: Path, mlp_file: Path, tmp_path: Path) -> None:
    import_variant(zoo, "mlp", "fp32", mlp_file)
    other = make_mlp(tmp_path / "wide.onnx", d_in=128)
    before = _files(zoo)
    with pytest.raises(InvalidParams, match=r"inputs do not match model 'mlp': x: dim 1 is 128, expected 256"):
        import_variant(zoo, "mlp", "narrow", other)
    assert _files(zoo) == before


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all\x00\x01", None], ids=["empty", "junk", "truncated"])
def test_corrupt_file_is_a_clear_error_and_writes_nothing(zoo: Path, mlp_file: Path, tmp_path: Path,
                                                          content: bytes | None) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(mlp_file.read_bytes()[:5000] if content is None else content)
    with pytest.raises(LoadError, match=r"bad\.onnx: not a model onnxruntime can load"):
        import_variant(zoo, "mlp", "fp32", bad)
    assert not zoo.exists() or not any(zoo.iterdir())


def test_unloadable_op_is_refused(zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="FrobnicateXYZ"):
        import_variant(zoo, "custom", "fp32", make_custom_op_model(tmp_path / "c.onnx"))
    assert not (zoo / "custom").exists()


def test_existing_variant_needs_replace(zoo: Path, mlp_file: Path, tmp_path: Path) -> None:
    import_variant(zoo, "mlp", "fp32", mlp_file)
    import_variant(zoo, "mlp", "b", mlp_file)
    with pytest.raises(InvalidParams, match="already has variant 'b'"):
        import_variant(zoo, "mlp", "b", mlp_file)
    other = make_mlp(tmp_path / "other.onnx", seed=3)
    import_variant(zoo, "mlp", "b", other, replace_existing=True)
    m = load_manifest(zoo / "mlp")
    assert m.variant("b").sha256 == sha256(other)
    assert len([d for d in (zoo / "mlp").iterdir() if d.is_dir()]) == 2   # the old copy of b is gone


def test_bad_names_and_precision_are_rejected(zoo: Path, mlp_file: Path) -> None:
    with pytest.raises(InvalidParams, match="model name"):
        import_variant(zoo, "../evil", "fp32", mlp_file)
    with pytest.raises(InvalidParams, match="--precision: expected one of"):
        import_variant(zoo, "mlp", "fp32", mlp_file, precision="int3")
    assert not zoo.exists()


def test_cli_import_then_show(zoo: Path, mlp_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "import", "mlp", "fp32", str(mlp_file), "--zoo", str(zoo), "--precision", "fp32"]) == 0
    assert "imported mlp/fp32" in capsys.readouterr().out
    assert main(["zoo", "show", "mlp", "--zoo", str(zoo)]) == 0
    assert "fp32 *" in capsys.readouterr().out
    assert (zoo / "mlp" / MANIFEST).exists()


def test_cli_import_of_a_missing_file_is_one_line_and_status_1(zoo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "import", "mlp", "fp32", "/nonexistent/model.onnx", "--zoo", str(zoo)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "LoadError" in err and "no such file" in err
