"""Continuous batching on a real model: 8 concurrent greedy streams of every builder-graph variant of a built
zoo give each stream its single-stream greedy text. Slow, and it needs a built zoo: ``AGENT_LLM_ZOO=DIR``
(one or more, separated by ``:``), as in test_greedy_cache_real.py."""

from __future__ import annotations

import pytest

from tests.llm.test_greedy_cache_real import _variants
from tests.llm.test_llm_batching import together

pytestmark = pytest.mark.slow

PROMPTS = ["The history of the Roman Empire begins", "In a small village by the sea, there lived",
           "The main parts of a computer are", "Photosynthesis is the process by which",
           "Once upon a time, a young fox", "The best way to learn a new language is",
           "Water boils at a temperature of", "The three laws of motion state that"]


@pytest.mark.parametrize("folder,variant", _variants() or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="set AGENT_LLM_ZOO to a built zoo with a causal-lm model"))])
def test_eight_batched_greedy_streams_equal_their_single_stream_output(folder, variant):
    from agent.llm.engine import LLMEngine
    from agent.zoo.manifest import load_manifest

    m = load_manifest(folder)
    path = m.folder / m.variant(variant).file
    tok = path.parent / m.llm["tokenizer"]
    plain = LLMEngine(path, tok, dict(m.llm), threads=2, prefix_cache_bytes=0)
    jobs = [(p, {"max_tokens": 32}) for p in PROMPTS]
    want = [[ev.token_id for ev in plain.generate(p, kw) if ev.token_id is not None] for p, kw in jobs]
    plain.close()
    e = LLMEngine(path, tok, dict(m.llm), threads=2, prefix_cache_bytes=0, max_batch=8)
    try:
        if e.batcher is None:
            pytest.skip(f"{variant}: not a builder graph (legacy graphs are not batched)")
        got = together(e, jobs)
        assert [g[0] for g in got] == want
        assert e.stats()["batching"]["max_active"] > 1
    finally:
        e.close()
