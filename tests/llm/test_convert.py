"""GGUF reading, ONNX conversion and variants, checked against the numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.errors import BuildError
from agent.llm.convert import cross_check, export_variant
from agent.llm.gguf_source import GGUFModel
from agent.llm.reference import ReferenceLlama


def test_reader_restores_hf_layout_of_permuted_qk_and_dequantizes_q8_embedding(tiny):
    g = GGUFModel(tiny.path)
    assert g.config.num_layers == tiny.cfg.num_layers and g.config.num_kv_heads == tiny.cfg.num_kv_heads
    w = g.weights()
    np.testing.assert_array_equal(w.layers[1].wq, tiny.weights.layers[1].wq)
    np.testing.assert_array_equal(w.layers[2].wk, tiny.weights.layers[2].wk)
    np.testing.assert_allclose(w.embed, tiny.weights.embed, atol=1e-6)
    assert w.lm_head is w.embed  # tied: no output.weight in the file


def test_fp32_decoder_logits_match_numpy_reference_through_prefill_and_kv_cache(tiny, tiny_build):
    diff = cross_check(tiny_build["fp32"], tiny.cfg, tiny.weights, [5, 40, 41, 7, 100, 3, 260, 9])
    assert diff < 1e-4


def test_fp16_decoder_stays_within_fp16_rounding_of_reference(tiny, tiny_build):
    ids = [5, 40, 41, 7, 100]
    scale = np.abs(ReferenceLlama(tiny.cfg, tiny.weights).forward(ids)).max()
    assert cross_check(tiny_build["fp16"], tiny.cfg, tiny.weights, ids) < 1e-2 * scale


def test_all_variants_share_one_io_signature_with_float32_logits_and_kv(tiny_build):
    sigs = []
    for p in ("fp32", "fp16", "int8", "int4"):
        s = ort.InferenceSession(str(tiny_build[p]), providers=["CPUExecutionProvider"])
        sigs.append(([(i.name, i.type) for i in s.get_inputs()], [(o.name, o.type) for o in s.get_outputs()]))
    assert all(sig == sigs[0] for sig in sigs)
    outs = dict(sigs[0][1])
    assert outs["logits"] == "tensor(float)" and outs["present.0.key"] == "tensor(float)"


def test_weight_only_variants_use_matmulnbits_with_accuracy_level_4(tiny_build):
    import onnx

    for p, bits in (("int8", 8), ("int4", 4)):
        m = onnx.load(str(tiny_build[p]))
        nb = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
        assert nb, p
        attrs = {a.name: a.i for a in nb[0].attribute}
        assert attrs["bits"] == bits and attrs["accuracy_level"] == 4
        head = next(n for n in nb if n.output[0] == "logits")
        assert {a.name: a.i for a in head.attribute}["bits"] == 8  # the head stays 8-bit in int4 too


def test_int8_is_closer_to_fp32_than_int4_and_both_mostly_agree(tiny, tiny_build):
    import json

    from agent.llm.engine import LLMEngine

    table = json.loads(tiny_build["llm"].read_text())
    ids = list(range(3, 60))
    r = LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], table, threads=1)
    ref = r.forward(ids, 0, r.empty_kv())[0]
    err, agree = {}, {}
    for p in ("int8", "int4"):
        e = LLMEngine(tiny_build[p], tiny_build["tokenizer"], table, threads=1)
        logits = e.forward(ids, 0, e.empty_kv())[0]
        err[p] = np.abs(logits - ref).max() / np.abs(ref).max()
        agree[p] = (logits.argmax(-1) == ref.argmax(-1)).mean()
    assert 0 < err["int8"] < err["int4"] and err["int8"] < 0.2
    assert agree["int8"] > 0.75 and agree["int4"] > 0.4


def test_layer_pruned_decoder_matches_reference_without_those_layers(tiny, tmp_path):
    path = export_variant(tiny.cfg, tiny.weights, "fp32", tmp_path / "pruned.onnx", keep_layers=[0, 2])
    assert cross_check(path, tiny.cfg, tiny.weights, [5, 6, 7, 8, 9], keep_layers=[0, 2]) < 1e-4
    full = ReferenceLlama(tiny.cfg, tiny.weights).forward([5, 6, 7])
    pruned = ReferenceLlama(tiny.cfg, tiny.weights, [0, 2]).forward([5, 6, 7])
    assert np.abs(full - pruned).max() > 1e-2  # dropping a layer really changes the model


def test_wrong_magic_is_a_clear_build_error(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(BuildError, match="not a GGUF file"):
        GGUFModel(bad)


def test_truncated_gguf_is_a_clear_build_error(tiny, tmp_path):
    data = tiny.path.read_bytes()
    for cut in (len(data) // 2, 40):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(BuildError, match=r"truncated|corrupt"):
            GGUFModel(bad)


def test_missing_gguf_is_a_clear_build_error(tmp_path):
    with pytest.raises(BuildError, match="not found"):
        GGUFModel(tmp_path / "absent.gguf")


def test_non_llama_architecture_is_refused(tmp_path):
    import gguf

    p = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(p), "gpt2")
    w.add_block_count(1)
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(BuildError, match="llama"):
        GGUFModel(p)


def test_unknown_precision_is_refused(tiny, tmp_path):
    with pytest.raises(BuildError, match="precision"):
        export_variant(tiny.cfg, tiny.weights, "int3", tmp_path / "x.onnx")
    assert not any(Path(tmp_path).iterdir())
