"""The engine on onnxruntime-genai model-builder graphs (GroupQueryAttention, shared in-place KV buffers).

The graphs are the tiny random llama of ``tiny.py`` converted by the builder (``make_tiny_builder.py``,
committed under ``data/``), so these tests need onnxruntime only.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.errors import LoadError, WorkerError
from agent.llm.engine import LLMEngine
from agent.llm.reference import ReferenceLlama

DATA = Path(__file__).parent / "data"
PROMPTS = ["the 12 apples in the tree", "hello there", "in 1999 the", "a b c d e f", "the theory of the",
           "1 1 1 1", "tiny"]


def collect(events):  # type: ignore[no-untyped-def]
    evs = list(events)
    return [e.token_id for e in evs if e.token_id is not None], "".join(e.text for e in evs), evs[-1]


@pytest.fixture(scope="module")
def table(tiny) -> dict:  # type: ignore[no-untyped-def]
    from agent.llm.convert import llm_table
    from agent.llm.gguf_source import GGUFModel

    t = llm_table(GGUFModel(tiny.path))
    t["eos_token_ids"] = []  # a random model: never stop early
    return t


def open_engine(prec: str, table: dict, **kw) -> LLMEngine:  # type: ignore[no-untyped-def,type-arg]
    d = DATA / f"tiny_builder_{prec}"
    return LLMEngine(d / "model.onnx", d / "tokenizer.json", table, threads=1, **kw)


@pytest.fixture()
def fp32(table):  # type: ignore[no-untyped-def]
    e = open_engine("fp32", table, prefix_cache_bytes=1 << 20)
    yield e
    e.close()


def full_recompute_greedy(e: LLMEngine, ids: list[int], n: int) -> list[int]:
    seq, out = list(ids), []
    for _ in range(n):
        logits, _ = e.forward(seq, 0, e.empty_kv())
        t = int(np.argmax(logits[-1]))
        out.append(t)
        seq.append(t)
    return out


def test_builder_graph_is_detected_and_legacy_graphs_still_load(fp32, engine):
    assert fp32.family == "builder" and engine.family == "legacy"


def test_greedy_tokens_equal_a_full_recompute_and_the_numpy_reference(fp32, tiny):
    for prompt in PROMPTS[:3]:
        ids = fp32.encode(prompt)
        toks, _, last = collect(fp32.generate(prompt, {"max_tokens": 12}))
        fp32.prefix_cache.clear()
        assert toks == full_recompute_greedy(fp32, ids, 12)
        assert toks == ReferenceLlama(tiny.cfg, tiny.weights).greedy(ids, 12)
        assert last.finish_reason == "length"


def test_decode_writes_the_kv_in_place_in_one_preallocated_buffer(fp32):
    dec = fp32.decoder
    ids = fp32.encode("hello there")
    st = dec.new_state(len(ids) + 4)
    buf = st.kv[0]
    dec.run(st, ids)
    dec.run(st, [5])
    assert st.kv[0] is buf and buf.shape[2] == len(ids) + 4
    assert np.abs(buf[:, :, : len(ids) + 1]).sum(axis=(0, 1, 3)).min() > 0  # every valid position written
    assert not buf[:, :, len(ids) + 1:].any()                                # nothing past the length
    _, present = dec.forward([*ids, 5], 0, dec.empty_kv())
    np.testing.assert_allclose(buf[:, :, : len(ids) + 1], present[0], atol=1e-5)
    with pytest.raises(WorkerError, match="cannot hold"):
        dec.run(st, [1, 2, 3, 4])


def test_prefix_cache_hit_gives_identical_tokens(fp32):
    sys_msg = {"role": "system", "content": "You are a terse helper for the theory of everything in the end."}
    cold = collect(fp32.generate([sys_msg, {"role": "user", "content": "first"}], {"max_tokens": 6}))
    msgs = [sys_msg, {"role": "user", "content": "second one"}]
    warm = collect(fp32.generate(msgs, {"max_tokens": 8}))
    assert warm[2].usage.cached_tokens > 10 and cold[2].usage.cached_tokens == 0
    fp32.prefix_cache.clear()
    assert collect(fp32.generate(msgs, {"max_tokens": 8}))[0] == warm[0]


def test_cancel_mid_stream_frees_kv_and_caches_nothing(fp32):
    stop = threading.Event()
    events = []
    for ev in fp32.generate("the theory", {"max_tokens": 50}, cancel=stop):
        events.append(ev)
        if len(events) == 2:
            assert fp32.stats()["live_kv_bytes"] > 0
            stop.set()
    assert events[-1].finish_reason == "cancelled"
    st = fp32.stats()
    assert st["live_kv_bytes"] == 0 and st["active_generations"] == 0 and st["prefix_cache"]["entries"] == 0


def test_speculative_output_is_token_identical_to_plain_greedy(table):
    target = open_engine("fp32", table, prefix_cache_bytes=0)
    plain = {p: collect(target.generate(p, {"max_tokens": 20}))[0] for p in PROMPTS}
    target.set_draft(open_engine("int4", table, prefix_cache_bytes=0), k=3)
    for p in PROMPTS:
        assert collect(target.generate(p, {"max_tokens": 20}))[0] == plain[p], p
    s = target.stats()["speculative"]
    assert s["rounds"] > 0 and 0 < s["accepted"] <= s["drafted"]
    assert 1.0 <= s["tokens_per_round"] <= 4.0
    assert target.stats()["live_kv_bytes"] == 0


def _fed(engine: LLMEngine) -> list[int]:
    """Records how many tokens each run of ``engine``'s decoder is fed (the run itself is the real one)."""
    sizes: list[int] = []
    run = engine.decoder.run

    def counted(st, tokens, keep=1):  # type: ignore[no-untyped-def]
        sizes.append(len(tokens))
        return run(st, tokens, keep)

    engine.decoder.run = counted  # type: ignore[method-assign]
    return sizes


def test_a_draft_that_takes_the_served_variants_kv_never_prefills_and_keeps_the_output(table):
    target = open_engine("fp32", table, prefix_cache_bytes=0)
    plain = {p: collect(target.generate(p, {"max_tokens": 20}))[0] for p in PROMPTS}
    runs = {}
    for share in (True, False):
        draft = open_engine("int4", table, prefix_cache_bytes=0)
        runs[share] = _fed(draft)
        target.set_draft(draft, k=4, share_kv=share)
        assert target.stats()["speculative"]["share_kv"] is share
        for p in PROMPTS:
            assert collect(target.generate(p, {"max_tokens": 20}))[0] == plain[p], (share, p)
        assert target.stats()["live_kv_bytes"] == 0
    # sharing: the draft runs one token at a time (no prefill of the prompt, no catch-up of an accepted
    # proposal); not sharing: it prefills every prompt and catches up
    assert runs[True] and set(runs[True]) == {1}
    assert max(runs[False]) >= min(len(target.encode(p)) for p in PROMPTS)
    assert sum(runs[True]) < sum(runs[False])


def test_a_draft_of_another_graph_family_prefills_itself(table, tiny_build):
    target = open_engine("fp32", table, prefix_cache_bytes=0)
    plain = {p: collect(target.generate(p, {"max_tokens": 12}))[0] for p in PROMPTS[:3]}
    legacy = LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], table, threads=1, prefix_cache_bytes=0)
    assert legacy.family == "legacy"
    target.set_draft(legacy, k=3)   # share_kv asked for, but a Concat-grown KV cannot take the buffers
    assert target.stats()["speculative"]["share_kv"] is False
    for p in plain:
        assert collect(target.generate(p, {"max_tokens": 12}))[0] == plain[p], p


def test_a_confidence_floor_drafts_fewer_tokens_and_keeps_the_output(table):
    target = open_engine("fp32", table, prefix_cache_bytes=0)
    plain = {p: collect(target.generate(p, {"max_tokens": 20}))[0] for p in PROMPTS}
    target.set_draft(open_engine("int4", table, prefix_cache_bytes=0), k=4, min_p=0.5)
    for p in PROMPTS:
        assert collect(target.generate(p, {"max_tokens": 20}))[0] == plain[p], p
    s = target.stats()["speculative"]
    assert s["drafted"] < 4 * s["rounds"] and s["min_p"] == 0.5


def test_speculative_with_the_model_as_its_own_draft_accepts_every_token(table):
    target = open_engine("fp32", table, prefix_cache_bytes=0)
    plain = collect(target.generate("hello there", {"max_tokens": 17}))[0]
    target.set_draft(open_engine("fp32", table, prefix_cache_bytes=0), k=4)
    assert collect(target.generate("hello there", {"max_tokens": 17}))[0] == plain
    s = target.stats()["speculative"]
    assert s["accepted"] == s["drafted"] and s["tokens_per_round"] == 5.0


def test_sampling_requests_bypass_the_draft(table):
    target = open_engine("fp32", table, prefix_cache_bytes=0)
    target.set_draft(open_engine("int4", table, prefix_cache_bytes=0), k=2)
    a = collect(target.generate("hello", {"max_tokens": 8, "temperature": 1.0, "seed": 3}))[0]
    assert len(a) == 8 and target.stats()["speculative"]["rounds"] == 0


def test_a_draft_of_another_vocabulary_is_a_load_error(table, tiny_build):
    target = open_engine("fp32", table, prefix_cache_bytes=0)
    other = json.loads(tiny_build["llm"].read_text())
    draft = LLMEngine(tiny_build["fp32"], DATA / "tiny_builder_fp32" / "tokenizer.json", other, threads=1)
    draft.tokenizer.add_tokens(["<extra-token>"])
    with pytest.raises(LoadError, match="vocabulary"):
        target.set_draft(draft, k=2)
    with pytest.raises(LoadError, match="k"):
        target.set_draft(open_engine("int4", table), k=0)


def test_logits_to_keep_edit_gives_the_same_tokens_and_only_the_last_rows(table, tmp_path):
    import shutil

    from agent.llm.graph_edit import add_logits_to_keep

    d = tmp_path / "ltk"
    shutil.copytree(DATA / "tiny_builder_fp32", d)
    assert add_logits_to_keep(d / "model.onnx") and not add_logits_to_keep(d / "model.onnx")
    plain = open_engine("fp32", table, prefix_cache_bytes=0)
    edited = LLMEngine(d / "model.onnx", d / "tokenizer.json", table, threads=1, prefix_cache_bytes=0)
    assert edited.decoder.has_logits_to_keep and not plain.decoder.has_logits_to_keep
    for p in PROMPTS[:3]:
        assert collect(edited.generate(p, {"max_tokens": 10}))[0] == collect(plain.generate(p, {"max_tokens": 10}))[0]
    ids = plain.encode("hello there")
    full, _ = plain.forward(ids, 0, plain.empty_kv())
    np.testing.assert_allclose(edited.forward(ids, 0, edited.empty_kv())[0], full, atol=1e-5)  # all rows
    st = edited.decoder.new_state(len(ids))
    rows = edited.decoder.run(st, ids, keep=2)
    assert rows.shape == (2, full.shape[1])
    np.testing.assert_allclose(rows, full[-2:], atol=1e-5)
