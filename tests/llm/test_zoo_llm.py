"""The causal-lm zoo plug-ins end to end on the tiny GGUF: recipe -> build -> measured manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.errors import BuildError, RecipeError
from agent.zoo.build.runner import build_recipe
from agent.zoo.manifest import load_manifest, sha256_file
from agent.zoo.recipe import load_recipe

TEXT = ("The quick brown fox jumps over the lazy dog. In 1999 there were 42 foxes in the theory of everything. "
        "She sells sea shells by the sea shore; the shells she sells are surely sea shells. ") * 20


def write_recipe(d: Path, gguf: Path, variants: str, eval_extra: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(gguf, d / "tiny.gguf")
    (d / "eval.txt").write_text(TEXT)
    (d / "calib.txt").write_text(TEXT[::-1] + TEXT)
    r = d / "recipe.toml"
    r.write_text(f"""schema = 1
name = "tinylm"
kind = "causal-lm"
reference = "fp32"

[source]
format = "gguf"
path = "tiny.gguf"
sha256 = "{sha256_file(d / 'tiny.gguf')}"

{variants}

[eval]
text = "eval.txt"
tokens = 256
window = 64
calibration = "calib.txt"
calibration_tokens = 512
prompt = "hello"
decode_tokens = 8
{eval_extra}
[measure]
threads = 1
""")
    return r


LADDER = """
[[variants]]
id = "fp32"
method = "gguf-onnx"

[[variants]]
id = "int8"
method = "gguf-onnx"
derived_from = "source"
precision = "int8"

[[variants]]
id = "pruned1"
method = "gguf-layer-prune"
derived_from = "source"
precision = "fp32"
[variants.params]
drop = 1
rank_tokens = 64
"""


def test_builds_a_measured_causal_lm_ladder_with_llm_table(tiny, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "recipe", tiny.path, LADDER))
    zoo = tmp_path / "zoo"
    m, _reports = build_recipe(recipe, zoo)
    m = load_manifest(zoo / "tinylm")
    assert m.kind == "causal-lm" and set(m.variant_ids()) == {"fp32", "int8", "pruned1"}
    assert m.llm is not None and m.llm["num_kv_heads"] == 2 and m.llm["chat_template"] == "chatml"
    for v in m.variants:
        meas = v.measurements[0]
        assert meas.tokens_per_s and meas.tokens_per_s > 0 and meas.ttft_ms and meas.ttft_ms > 0
        assert v.quality is not None and v.quality.metric == "perplexity" and v.quality.value > 1
        assert (m.path_of(v).parent / "tokenizer.json").is_file()
        assert [s.name for s in v.inputs] == [s.name for s in m.inputs]
    assert m.variant("fp32").quality.relative == 1.0
    assert 0 <= m.variant("int8").build["eval"]["top1_agreement"] <= 1
    info = m.variant("pruned1").build["info"]
    assert len(info["dropped_layers"]) == 1 and info["dropped_layers"][0] != 0
    assert m.variant("fp32").build["info"]["max_abs_logit_diff_vs_numpy"] < 1e-3
    # resumable: nothing is rebuilt the second time
    _, again = build_recipe(recipe, zoo)
    assert {r.action for r in again} == {"skipped"}


def test_distilled_pruned_variant_builds_and_records_training(tiny, tmp_path):
    pytest.importorskip("torch")
    variants = """
[[variants]]
id = "fp32"
method = "gguf-onnx"

[[variants]]
id = "kd"
method = "gguf-layer-prune"
derived_from = "source"
precision = "fp32"
[variants.params]
drop = 1
rank_tokens = 64
distill = true
distill_minutes = 0.2
distill_tokens = 512
"""
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny.path, variants))
    m, _ = build_recipe(recipe, tmp_path / "zoo")
    d = m.variant("kd").build["info"]["distill"]
    assert d["trained_layers"] and all(v["nmse_after"] <= v["nmse_before"] + 1e-6 for v in d["layers"].values())


def test_truncated_gguf_source_fails_in_one_line_and_leaves_nothing(tiny, tmp_path):
    d = tmp_path / "r"
    path = write_recipe(d, tiny.path, LADDER.split("[[variants]]\nid = \"int8\"")[0])
    data = (d / "tiny.gguf").read_bytes()
    (d / "tiny.gguf").write_bytes(data[: len(data) // 2])
    text = path.read_text().replace(sha256_file(tiny.path), sha256_file(d / "tiny.gguf"))
    path.write_text(text)
    zoo = tmp_path / "zoo"
    with pytest.raises(BuildError) as e:
        build_recipe(load_recipe(path), zoo)
    msg = str(e.value)
    assert "\n" not in msg and "recipe.toml" in msg and "fp32" in msg and "truncated" in msg
    assert not (zoo / "tinylm" / "manifest.toml").exists()
    folder = zoo / "tinylm"
    assert not folder.exists() or not [p for p in folder.iterdir() if p.name.startswith(".tmp")]


def test_unknown_eval_key_is_a_recipe_error_with_line(tiny, tmp_path):
    path = write_recipe(tmp_path / "r", tiny.path, LADDER, eval_extra="perplexity_of = 3\n")
    with pytest.raises(RecipeError, match=r"recipe.toml:\d+: .*perplexity_of"):
        load_recipe(path)


def test_unsupported_precision_for_gguf_onnx_fails_cleanly(tiny, tmp_path):
    variants = '[[variants]]\nid = "fp32"\nmethod = "gguf-onnx"\nprecision = "bf16"\n'
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny.path, variants))
    with pytest.raises(BuildError, match="precision"):
        build_recipe(recipe, tmp_path / "zoo")


def test_llm_sidecar_matches_manifest_table(tiny, tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r", tiny.path, LADDER.split("[[variants]]\nid = \"int8\"")[0]))
    m, _ = build_recipe(recipe, tmp_path / "zoo")
    side = json.loads((m.path_of(m.variant("fp32")).parent / "llm.json").read_text())
    assert side == m.llm
