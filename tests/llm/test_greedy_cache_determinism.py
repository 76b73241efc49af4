"""The same greedy request gives the same text with or without a prefix-cache hit, on every variant and
both graph families (issue 18: int8 once gave different text on a cache hit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.llm.engine import LLMEngine

SYSTEM = {"role": "system", "content": "You are a terse helper who answers about the theory of trees in 1999."}
QUESTIONS = ["hello there", "the 12 apples", "a b c d e f", "in 1999 the", "tiny"]
DATA = Path(__file__).parent / "data"


def tokens(e: LLMEngine, q: str) -> list[int]:
    return [ev.token_id for ev in e.generate([SYSTEM, {"role": "user", "content": q}], {"max_tokens": 12})
            if ev.token_id is not None]


def assert_cold_equals_cached(e: LLMEngine) -> None:
    cold = {}
    for q in QUESTIONS:
        e.prefix_cache.clear()
        cold[q] = tokens(e, q)
    e.prefix_cache.clear()
    tokens(e, "warm the cache with the shared system prompt")
    for q in QUESTIONS:
        before = e.stats()["prefix_cache"]["hits"]
        assert tokens(e, q) == cold[q], q
        assert e.stats()["prefix_cache"]["hits"] > before      # the second pass really hit the cache
    for q in QUESTIONS:   # the same prompt again: the cache holds all of it, only its tail is recomputed
        e.prefix_cache.clear()
        assert tokens(e, q) == cold[q], q
        before = e.stats()["prefix_cache"]["hits"]
        assert tokens(e, q) == cold[q], f"{q} (repeated)"
        assert e.stats()["prefix_cache"]["hits"] > before


@pytest.mark.parametrize("prec", ["fp32", "fp16", "int8", "int4"])
def test_hand_written_graphs_give_the_same_greedy_tokens_on_a_cache_hit(tiny_build, prec):
    table = json.loads(tiny_build["llm"].read_text())
    e = LLMEngine(tiny_build[prec], tiny_build["tokenizer"], table, threads=1, prefix_cache_bytes=1 << 20)
    try:
        assert_cold_equals_cached(e)
    finally:
        e.close()


@pytest.mark.parametrize("prec", ["fp32", "int4"])
def test_builder_graphs_give_the_same_greedy_tokens_on_a_cache_hit(tiny, prec):
    from agent.llm.convert import llm_table
    from agent.llm.gguf_source import GGUFModel

    table = llm_table(GGUFModel(tiny.path))
    table["eos_token_ids"] = []
    d = DATA / f"tiny_builder_{prec}"
    e = LLMEngine(d / "model.onnx", d / "tokenizer.json", table, threads=1, prefix_cache_bytes=1 << 20)
    try:
        assert_cold_equals_cached(e)
    finally:
        e.close()
