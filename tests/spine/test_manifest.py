from pathlib import Path

import pytest

from agent.errors import ManifestError
from agent.zoo.manifest import MANIFEST, load_manifest, load_zoo


def _edit(zoo: Path, old: str, new: str) -> Path:
    p = zoo / "mlp" / MANIFEST
    text = p.read_text()
    assert old in text
    p.write_text(text.replace(old, new, 1))
    return p


def _line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def test_valid_manifest_loads_with_both_variants(tensor_zoo):
    m = load_manifest(tensor_zoo / "mlp")
    assert m.variant_ids() == ["fp32", "int8"]
    assert m.inputs[0].shape == ("batch", 256)


def test_unknown_key_names_file_line_and_key(tensor_zoo):
    p = _edit(tensor_zoo, 'precision = "int8"', 'precision = "int8"\ncolour = "blue"')
    with pytest.raises(ManifestError) as e:
        load_manifest(tensor_zoo / "mlp")
    assert f"{p}:{_line_of(p, 'colour')}: variants.1.colour: unknown key" in str(e.value)


def test_missing_variant_file_is_an_error(tensor_zoo):
    (tensor_zoo / "mlp" / "int8.onnx").unlink()
    with pytest.raises(ManifestError, match=r"variants\.1\.file: expected an existing file"):
        load_manifest(tensor_zoo / "mlp")


def test_variant_file_outside_the_model_folder_is_refused(tensor_zoo):
    _edit(tensor_zoo, 'file = "int8.onnx"', 'file = "../../etc/passwd"')
    with pytest.raises(ManifestError, match="inside"):
        load_manifest(tensor_zoo / "mlp")


def test_variant_with_a_different_signature_is_refused_with_its_line(tensor_zoo):
    p = _edit(tensor_zoo, 'precision = "int8"',
              'precision = "int8"\ninputs = [{name = "x", dtype = "float16", shape = ["batch", 256]}]')
    with pytest.raises(ManifestError) as e:
        load_manifest(tensor_zoo / "mlp")
    assert f":{_line_of(p, 'float16')}: variants.1.inputs: expected the model's signature" in str(e.value)


@pytest.mark.parametrize("old,new,msg", [
    ('kind = "tensor"', 'kind = "video"', "kind: expected one of tensor, causal-lm"),
    ('reference = "fp32"', 'reference = "fp64"', "reference: expected one of the variant ids"),
    ('schema = 1', 'schema = "one"', "schema: expected an integer"),
    ('dtype = "float32"', 'dtype = "float33"', "dtype: expected one of"),
    ('name = "mlp"', 'name = "other"', "expected the folder's name"),
    ('id = "int8"', 'id = "fp32"', "duplicate variant id"),
    ('size_bytes = ', 'size_bytes = -', "size_bytes: expected a number in 0"),
])
def test_malformed_values_are_located_errors(tensor_zoo, old, new, msg):
    _edit(tensor_zoo, old, new)
    with pytest.raises(ManifestError, match=msg):
        load_manifest(tensor_zoo / "mlp")


def test_invalid_toml_reports_its_line(tensor_zoo):
    p = tensor_zoo / "mlp" / MANIFEST
    p.write_text(p.read_text() + "\n[[variants]\n")
    with pytest.raises(ManifestError, match=r"manifest.toml:\d+: invalid TOML"):
        load_manifest(tensor_zoo / "mlp")


def test_a_bad_model_does_not_hide_the_good_ones(tensor_zoo):
    bad = tensor_zoo / "broken"
    bad.mkdir()
    (bad / MANIFEST).write_bytes(b"\xff\xfe not utf8")
    models, errors = load_zoo(tensor_zoo)
    assert list(models) == ["mlp"]
    assert "UTF-8" in errors["broken"]
