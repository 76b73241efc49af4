"""The generation engine on a real onnxruntime session of the tiny converted model."""

from __future__ import annotations

import json
import threading

import pytest

from agent.errors import InvalidParams, LoadError
from agent.llm.engine import LLMEngine
from agent.llm.reference import ReferenceLlama


def collect(events):  # type: ignore[no-untyped-def]
    evs = list(events)
    return [e.token_id for e in evs if e.token_id is not None], "".join(e.text for e in evs), evs[-1]


def test_greedy_tokens_equal_the_numpy_reference(engine, tiny):
    prompt = "the 12 apples in the tree"
    ids = engine.encode(prompt)
    toks, _, last = collect(engine.generate(prompt, {"max_tokens": 12}))
    assert toks == ReferenceLlama(tiny.cfg, tiny.weights).greedy(ids, 12)
    assert last.finish_reason == "length" and last.usage.completion_tokens == 12


def test_generation_is_deterministic_across_runs(engine):
    a = collect(engine.generate("hello there", {"max_tokens": 10}))[0]
    engine.prefix_cache.clear()
    b = collect(engine.generate("hello there", {"max_tokens": 10}))[0]
    assert a == b


def test_prefix_cache_hit_reuses_kv_and_gives_identical_tokens(engine):
    msgs = [{"role": "system", "content": "You answer in a few words about the theory of everything."},
            {"role": "user", "content": "the 1st question"}]
    cold = collect(engine.generate(msgs, {"max_tokens": 8}))
    assert engine.stats()["prefix_cache"]["misses"] == 1
    warm = collect(engine.generate(msgs, {"max_tokens": 8}))
    st = engine.stats()["prefix_cache"]
    assert st["hits"] == 1 and st["entries"] >= 1 and st["bytes"] > 0
    assert warm[0] == cold[0]
    assert warm[2].usage.cached_tokens == len(engine.encode(msgs)) - engine.prefix_cache.min_compute


def test_prefix_cache_serves_the_shared_system_prompt_of_a_different_question(engine, tiny):
    sys_msg = {"role": "system", "content": "You are a terse helper for the theory of everything in the end."}
    collect(engine.generate([sys_msg, {"role": "user", "content": "first"}], {"max_tokens": 4}))
    msgs = [sys_msg, {"role": "user", "content": "second one"}]
    toks, _, last = collect(engine.generate(msgs, {"max_tokens": 6}))
    assert last.usage.cached_tokens > 10
    assert toks == ReferenceLlama(tiny.cfg, tiny.weights).greedy(engine.encode(msgs), 6)


def test_cancel_mid_stream_frees_kv_and_caches_nothing(engine):
    stop = threading.Event()
    events = []
    for ev in engine.generate("the theory", {"max_tokens": 50}, cancel=stop):
        events.append(ev)
        if len(events) == 2:
            assert engine.stats()["live_kv_bytes"] > 0
            stop.set()
    assert events[-1].finish_reason == "cancelled"
    assert len(events) == 3
    st = engine.stats()
    assert st["live_kv_bytes"] == 0 and st["active_generations"] == 0
    assert st["prefix_cache"]["entries"] == 0 and st["cancelled"] == 1


def test_abandoned_stream_frees_kv_like_a_disconnected_client(engine):
    gen = engine.generate("the theory", {"max_tokens": 50})
    next(gen)
    next(gen)
    assert engine.stats()["active_generations"] == 1 and engine.stats()["live_kv_bytes"] > 0
    gen.close()
    assert engine.stats()["active_generations"] == 0 and engine.stats()["live_kv_bytes"] == 0


def test_cancel_callable_before_start_generates_nothing(engine):
    evs = list(engine.generate("x", {"max_tokens": 5}, cancel=lambda: True))
    assert len(evs) == 1 and evs[0].finish_reason == "cancelled"


def test_stop_sequence_ends_the_text_before_it(engine):
    _, text, _ = collect(engine.generate("in the", {"max_tokens": 40}))
    assert len(text) > 12
    stop = text[6:9]
    engine.prefix_cache.clear()
    _, cut, last = collect(engine.generate("in the", {"max_tokens": 40, "stop": [stop]}))
    assert cut == text[: text.index(stop)]
    assert last.finish_reason == "stop"


def test_streamed_pieces_concatenate_to_the_decoded_tokens(engine):
    toks, text, _ = collect(engine.generate("a b c", {"max_tokens": 30}))
    assert text == engine.decode(toks)


def test_sampling_with_a_seed_is_reproducible_and_seeds_differ(engine):
    p = {"max_tokens": 16, "temperature": 1.0, "top_p": 0.95, "top_k": 50}
    a = collect(engine.generate("hello", {**p, "seed": 7}))[0]
    b = collect(engine.generate("hello", {**p, "seed": 7}))[0]
    c = collect(engine.generate("hello", {**p, "seed": 8}))[0]
    assert a == b and a != c


def test_top_k_1_sampling_equals_greedy(engine):
    greedy = collect(engine.generate("hello", {"max_tokens": 8}))[0]
    engine.prefix_cache.clear()
    k1 = collect(engine.generate("hello", {"max_tokens": 8, "temperature": 0.8, "top_k": 1, "seed": 3}))[0]
    assert k1 == greedy


def test_eos_token_ends_generation_with_stop(tiny_build):
    table = json.loads(tiny_build["llm"].read_text())
    probe = LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], table, threads=1)
    toks = collect(probe.generate("hello", {"max_tokens": 6}))[0]
    table["eos_token_ids"] = [toks[3]]
    e = LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], table, threads=1)
    got, _, last = collect(e.generate("hello", {"max_tokens": 6}))
    assert got == toks[: toks.index(toks[3])] and last.finish_reason == "stop"


def test_text_held_back_for_a_possible_stop_is_released_at_eos(tiny_build):
    table = json.loads(tiny_build["llm"].read_text())
    probe = LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], table, threads=1)
    toks, _text, _ = collect(probe.generate("hello", {"max_tokens": 8}))
    k = toks.index(toks[5])
    before = probe.decode(toks[:k])
    assert before
    table["eos_token_ids"] = [toks[5]]
    e = LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], table, threads=1)
    _, got, last = collect(e.generate("hello", {"max_tokens": 8, "stop": [before[-1] + "\u2603never"]}))
    assert got == before and last.finish_reason == "stop"


@pytest.mark.parametrize("params", [
    {"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"seed": "x"}, {"stop": [""]},
    {"max_tokens": 5, "bogus": 1}, {"stop": ["a"] * 9}, "not a dict",
])
def test_bad_generation_params_are_invalid_params(engine, params):
    with pytest.raises(InvalidParams):
        engine.generate("hi", params)


@pytest.mark.parametrize("msgs", [[], [{"role": "wizard", "content": "x"}], [{"role": "user"}], ["text"]])
def test_malformed_chat_messages_are_invalid_params(engine, msgs):
    with pytest.raises(InvalidParams):
        engine.generate(msgs)


def test_prompt_longer_than_context_is_refused(engine):
    with pytest.raises(InvalidParams, match="context"):
        engine.generate("a " * 400)


def test_kv_layout_mismatch_with_the_manifest_is_a_load_error(tiny_build):
    table = json.loads(tiny_build["llm"].read_text())
    table["num_kv_heads"] = 7
    with pytest.raises(LoadError, match="num_kv_heads"):
        LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], table)


def test_corrupt_model_file_is_a_load_error(tiny_build, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(LoadError):
        LLMEngine(bad, tiny_build["tokenizer"], {})


def test_every_weight_only_variant_streams(tiny_build):
    table = json.loads(tiny_build["llm"].read_text())
    for p in ("fp16", "int8", "int4"):
        e = LLMEngine(tiny_build[p], tiny_build["tokenizer"], table, threads=1)
        toks, _, last = collect(e.generate([{"role": "user", "content": "hi"}], {"max_tokens": 5}))
        assert len(toks) == 5 and last.finish_reason == "length"


def test_null_params_mean_defaults(engine):
    from agent.llm.sampling import GenerationParams

    p = GenerationParams.from_dict({"max_tokens": None, "stop": None, "seed": None, "temperature": 0})
    assert p == GenerationParams(temperature=0)
    assert GenerationParams.from_dict({"stop": "END"}).stop == ("END",)


def test_concurrent_generations_on_one_engine_do_not_mix_tokens(engine):
    prompts = ["the tree", "in 1999 the", "a b c d", "hello there"]
    solo = {p: collect(engine.generate(p, {"max_tokens": 10}))[0] for p in prompts}
    engine.prefix_cache.clear()
    got: dict[str, list[int]] = {}

    def run(p: str) -> None:
        got[p] = collect(engine.generate(p, {"max_tokens": 10}))[0]

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts * 1]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == solo
    assert engine.stats()["active_generations"] == 0 and engine.stats()["live_kv_bytes"] == 0
