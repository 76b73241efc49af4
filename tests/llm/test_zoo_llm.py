"""The causal-lm zoo plug-ins end to end on the tiny GGUF: recipe -> build -> measured manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.errors import BuildError, RecipeError
from agent.llm.evaluate import outputs_path
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
    (d / "prompts.jsonl").write_text("".join(
        json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": t}]}) + "\n"
        for i, t in enumerate(["hello there", "the fox", "sea shells", "in 1999"])))
    (d / "questions.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "question": q, "answers": a}) + "\n"
        for i, (q, a) in enumerate([("What jumps?", ["fox"]), ("How many foxes?", ["42"]), ("Who sells?", ["she"])])))
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
prompts = "prompts.jsonl"
questions = "questions.jsonl"
agreement_tokens = 8
answer_tokens = 6
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
        q = v.quality
        assert q is not None and q.metric == "answers" and q.perplexity is not None and q.perplexity > 1
        assert 0 <= q.agreement <= 1 and 0 <= q.mean_prefix <= 8 and 0 <= q.exact_match <= 1
        assert q.relative == q.value == pytest.approx((q.agreement + q.exact_match_rel) / 2, abs=1e-3)
        assert outputs_path(m.path_of(v)).is_file()
        assert (m.path_of(v).parent / "tokenizer.json").is_file()
        assert [s.name for s in v.inputs] == [s.name for s in m.inputs]
    ref = m.variant("fp32").quality
    assert ref.relative == 1.0 and ref.agreement == 1.0 and ref.mean_prefix == 8 and ref.perplexity_rel == 1.0
    assert m.variant("int8").build["eval"]["reference_outputs_cached"] is True   # fp32's outputs were reused
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


FLOORED = """
[[variants]]
id = "fp32"
method = "gguf-onnx"

[[variants]]
id = "int8"
method = "gguf-onnx"
derived_from = "source"
precision = "int8"
[variants.floors]
mean_prefix = 100.0
agreement = 0.0
"""


def test_a_variant_below_its_floor_is_built_measured_marked_unfit_and_left_out_of_the_policy_table(tiny, tmp_path):
    from agent.policy.table import table_from_manifests
    from agent.zoo.manifest import load_zoo

    path = write_recipe(tmp_path / "r", tiny.path, FLOORED)
    zoo = tmp_path / "zoo"
    m, _ = build_recipe(load_recipe(path), zoo)
    v = m.variant("int8")
    assert v.measurements and v.quality is not None and (m.path_of(v)).is_file()     # built and measured
    assert v.unfit is not None and "mean_prefix" in v.unfit and "< floor 100" in v.unfit
    assert f"{v.quality.mean_prefix:.4g}" in v.unfit and "agreement" not in v.unfit  # only the failed floor
    assert m.variant("fp32").unfit is None
    models, errors = load_zoo(zoo)
    assert not errors and models["tinylm"].variant("int8").unfit == v.unfit            # it survives the manifest
    assert [r.variant for r in table_from_manifests(models)] == ["fp32"]
    # lowering the floor needs no re-measurement: the stored figures are checked again
    path.write_text(path.read_text().replace("mean_prefix = 100.0", "mean_prefix = 0.0"))
    m2, reports = build_recipe(load_recipe(path), zoo)
    assert {r.action for r in reports} == {"skipped"} and m2.variant("int8").unfit is None
    assert [r.variant for r in table_from_manifests(load_zoo(zoo)[0])] == ["fp32", "int8"]


@pytest.mark.parametrize("floors, msg", [
    ("[variants.floors]\nbleu = 0.5\n", r"recipe.toml:\d+: variants.1.floors.bleu: unknown key"),
    ("[variants.floors]\nagreement = -1\n", r"recipe.toml:\d+: .*agreement"),
    ("[variants.floors]\nagreement = \"high\"\n", r"recipe.toml:\d+: .*agreement: expected a number"),
])
def test_bad_floors_are_recipe_errors_with_line(tiny, tmp_path, floors, msg):
    path = write_recipe(tmp_path / "r", tiny.path,
                        LADDER.replace('precision = "int8"\n', 'precision = "int8"\n' + floors, 1))
    with pytest.raises(RecipeError, match=msg):
        load_recipe(path)


def test_a_floor_on_the_reference_is_a_recipe_error(tiny, tmp_path):
    path = write_recipe(tmp_path / "r", tiny.path, LADDER.replace('method = "gguf-onnx"\n', 'method = "gguf-onnx"\n'
                                                                  '[variants.floors]\nagreement = 0.9\n', 1))
    with pytest.raises(RecipeError, match="the reference is what floors are measured against"):
        load_recipe(path)


def test_a_malformed_question_file_fails_the_recipe_naming_both_files(tiny, tmp_path):
    path = write_recipe(tmp_path / "r", tiny.path, LADDER)
    (tmp_path / "r" / "questions.jsonl").write_text('{"id": "q1", "question": "Why?", "answers": ["because"]}\n'
                                                   '{"id": "q2", "question": "What?"}\n')
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "recipe.toml" in str(e.value) and "eval.questions" in str(e.value)
    assert "questions.jsonl:2: answers: expected a non-empty list of strings" in str(e.value)


def test_the_recipes_speculative_table_reaches_the_manifest_for_the_pairs_built(tiny, tmp_path):
    from agent.llm.speculative import draft_for

    two = LADDER.split("[[variants]]\nid = \"pruned1\"")[0]
    path = write_recipe(tmp_path / "r", tiny.path, two + '\n[speculative]\nk = 3\ndrafts = { fp32 = "int8" }\n')
    recipe = load_recipe(path)
    assert recipe.speculative == {"k": 3, "drafts": {"fp32": "int8"}}
    zoo = tmp_path / "zoo"
    build_recipe(recipe, zoo, only=["fp32"])
    m = load_manifest(zoo / "tinylm")
    assert "speculative" not in m.llm   # its draft is not built: fp32 must still load
    build_recipe(recipe, zoo)
    m = load_manifest(zoo / "tinylm")
    assert m.llm["speculative"] == {"k": 3, "drafts": {"fp32": "int8"}}
    assert draft_for(m.llm, "fp32", set(m.variant_ids())) == ("int8", 3, 0.0, True)
    # a changed table reaches a built zoo without a rebuild
    path.write_text(path.read_text().replace("k = 3", "k = 2"))
    _, again = build_recipe(load_recipe(path), zoo)
    assert {r.action for r in again} == {"skipped"}
    assert load_manifest(zoo / "tinylm").llm["speculative"]["k"] == 2
    from agent.zoo.cli import table

    assert "~ fp32 is served with draft int8 (speculative, k 2, share_kv" in table(load_manifest(zoo / "tinylm"))


@pytest.mark.parametrize("table,msg", [
    ('drafts = { fp32 = "int4" }', "another variant"),
    ('drafts = { int4 = "fp32" }', "not a variant of this recipe"),
    ('k = 0\ndrafts = { fp32 = "int8" }', "k: expected an integer"),
    ('share_kv = "yes"\ndrafts = { fp32 = "int8" }', "share_kv"),
    ('k = 2', "non-empty 'drafts'"),
])
def test_a_bad_speculative_table_is_a_recipe_error(tiny, tmp_path, table, msg):
    two = LADDER.split("[[variants]]\nid = \"pruned1\"")[0]
    path = write_recipe(tmp_path / "r", tiny.path, two + f"\n[speculative]\n{table}\n")
    with pytest.raises(RecipeError, match=rf"recipe.toml:\d+: speculative: .*{msg}"):
        load_recipe(path)
