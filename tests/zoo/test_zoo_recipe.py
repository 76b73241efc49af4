"""Recipe parsing: every mistake is one RecipeError naming recipe.toml:line: key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from zoo_helpers import write_recipe

from agent.errors import RecipeError
from agent.zoo.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]


def _bad(tmp_path: Path, mlp_file: Path, **kw: str) -> str:
    p = write_recipe(tmp_path / "r", mlp_file, **kw)
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(p)), msg
    return msg


def test_shipped_recipes_parse() -> None:
    sil = load_recipe(ROOT / "model_zoo" / "silero_vad")
    assert [v.id for v in sil.variants] == ["fp32", "int8", "int8-qdq", "fp16"]
    assert sil.source.pypi == "silero-vad==6.2.3" and sil.source.wheel_sha256
    lm = load_recipe(ROOT / "model_zoo" / "smollm2")
    assert lm.speculative == {"k": 4, "drafts": {"fp32": "int4"}}
    tpl = load_recipe(ROOT / "model_zoo" / "template" / "recipe.toml")
    assert tpl.reference == "fp32" and len(tpl.variants) >= 6


def test_defaults_fill_params_and_parent(tmp_path: Path, mlp_file: Path) -> None:
    r = load_recipe(write_recipe(tmp_path / "r", mlp_file))
    int4 = r.variant("int4")
    assert int4.derived_from == "fp32" and int4.params["bits"] == 4 and int4.params["accuracy_level"] == 4
    assert r.variant("fp32").derived_from == "source"


def test_unknown_key_names_its_line(tmp_path: Path, mlp_file: Path) -> None:
    msg = _bad(tmp_path, mlp_file, extra="colour = 'red'\n")
    assert re.search(r"recipe\.toml:\d+: measure\.colour: unknown key; expected one of cpu_watts", msg), msg
    line = int(msg.split("recipe.toml:")[1].split(":")[0])
    assert (tmp_path / "r" / "recipe.toml").read_text().splitlines()[line - 1].startswith("colour")


def test_unknown_top_level_key_is_rejected(tmp_path: Path, mlp_file: Path) -> None:
    p = write_recipe(tmp_path / "r", mlp_file)
    p.write_text("flavour = 1\n" + p.read_text())
    with pytest.raises(RecipeError, match=r"recipe\.toml:1: flavour: unknown key"):
        load_recipe(p)


def test_unknown_builder_param_is_rejected(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "q"\nmethod = "int8-dynamic"\n' \
        '[variants.params]\nper_chanel = true\n'
    msg = _bad(tmp_path, mlp_file, variants=v)
    assert "variants.1.params.per_chanel: unknown key" in msg and "per_channel" in msg


def test_param_of_wrong_type_says_expected_and_got(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "q"\nmethod = "matmul-nbits"\n' \
        '[variants.params]\nbits = "four"\n'
    assert "bits: expected an integer, got string 'four'" in _bad(tmp_path, mlp_file, variants=v)


def test_unknown_method_lists_registered_ones(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "teleport"\n'
    msg = _bad(tmp_path, mlp_file, variants=v)
    assert "method: expected a registered method" in msg and "int8-dynamic" in msg and "'teleport'" in msg


def test_malformed_toml_names_the_line(tmp_path: Path, mlp_file: Path) -> None:
    p = write_recipe(tmp_path / "r", mlp_file)
    p.write_text(p.read_text() + "\n[eval\nbroken = \n")
    # the line comes first, as in every other config error (Python 3.11 hides it in the message)
    with pytest.raises(RecipeError, match=r"recipe\.toml:\d+: invalid TOML: "):
        load_recipe(p)


def test_derived_from_must_name_a_variant_above(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "fp32"\nmethod = "copy"\n[[variants]]\nid = "q"\nmethod = "fp16"\n' \
        'derived_from = "int8"\n'
    assert "derived_from: expected 'source' or a variant defined above" in _bad(tmp_path, mlp_file, variants=v)


def test_reference_must_come_from_source(tmp_path: Path, mlp_file: Path) -> None:
    v = '[[variants]]\nid = "a"\nmethod = "copy"\nderived_from = "source"\n' \
        '[[variants]]\nid = "fp32"\nmethod = "fp16"\nderived_from = "a"\n'
    assert "reference variant to derive from 'source'" in _bad(tmp_path, mlp_file, variants=v)


def test_local_source_needs_a_valid_sha256(tmp_path: Path, mlp_file: Path) -> None:
    assert "sha256: expected 64 lowercase hex digits" in _bad(tmp_path, mlp_file, sha="abc")


def test_pypi_source_must_be_pinned_with_wheel_sha(tmp_path: Path) -> None:
    base = (ROOT / "model_zoo" / "silero_vad" / "recipe.toml").read_text()
    p = tmp_path / "recipe.toml"
    p.write_text(base.replace('pypi = "silero-vad==6.2.3"', 'pypi = "silero-vad>=6"'))
    with pytest.raises(RecipeError, match=r"pypi: expected a pinned requirement"):
        load_recipe(p)
    p.write_text(re.sub(r'wheel_sha256 = "[0-9a-f]+"\n', "", base))
    with pytest.raises(RecipeError, match=r"wheel_sha256: missing required key"):
        load_recipe(p)


def test_eval_table_is_checked_by_the_kind_plugin(tmp_path: Path, mlp_file: Path) -> None:
    p = write_recipe(tmp_path / "r", mlp_file)
    p.write_text(p.read_text().replace('metric = "top1"', 'metric = "vibes"'))
    with pytest.raises(RecipeError, match=r"eval\.metric: expected one of threshold, top1, cosine"):
        load_recipe(p)


def test_gguf_source_refuses_an_onnx_only_method(tmp_path: Path, mlp_file: Path) -> None:
    p = write_recipe(tmp_path / "r", mlp_file)
    p.write_text(p.read_text().replace('format = "onnx"', 'format = "gguf"'))
    with pytest.raises(RecipeError, match=r"method 'copy' takes onnx input, got gguf"):
        load_recipe(p)
