"""Speculative decoding on a real model: every variant a built zoo serves with a draft (``[llm.speculative]``)
gives, on the whole shipped chat prompt set (agent/llm/data/chat_prompts.jsonl, 64 tokens each), exactly
its own plain greedy tokens, with the draft taking the served variant's KV. Slow, and it needs a built zoo:
``AGENT_LLM_ZOO=DIR`` (one or more, separated by ``:``), as in test_greedy_cache_real.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.llm.test_greedy_cache_real import _variants

pytestmark = pytest.mark.slow


def _pairs() -> list[tuple[Path, str]]:
    from agent.llm.speculative import draft_for
    from agent.zoo.manifest import load_manifest

    out = []
    for folder, variant in _variants():
        m = load_manifest(folder, check_files=False)
        if draft_for(m.llm, variant, set(m.variant_ids())) is not None:
            out.append((folder, variant))
    return out


@pytest.mark.parametrize("folder,variant", _pairs() or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="set AGENT_LLM_ZOO to a built zoo whose manifest has [llm.speculative]"))])
def test_a_drafted_variant_gives_its_own_greedy_tokens_on_the_shipped_prompt_set(folder, variant):
    from agent.llm.engine import LLMEngine
    from agent.llm.quality import load_prompts
    from agent.llm.speculative import SESSION_CONFIG, draft_for
    from agent.zoo.manifest import load_manifest

    m = load_manifest(folder)
    plan = draft_for(m.llm, variant, set(m.variant_ids()))
    assert plan is not None

    def engine(vid: str) -> LLMEngine:
        path = m.path_of(m.variant(vid))
        return LLMEngine(path, path.parent / m.llm["tokenizer"], dict(m.llm), threads=2, prefix_cache_bytes=0,
                         session_options=SESSION_CONFIG)

    plain, spec = engine(variant), engine(variant)
    spec.set_draft(engine(plan.variant), plan.k, plan.min_p, plan.share_kv)
    prompts = load_prompts()
    assert len(prompts) >= 50
    differ = []
    try:
        for p in prompts:
            msgs = [dict(x) for x in p.messages]
            want = [ev.token_id for ev in plain.generate(msgs, {"max_tokens": 64}) if ev.token_id is not None]
            got = [ev.token_id for ev in spec.generate(msgs, {"max_tokens": 64}) if ev.token_id is not None]
            if got != want:
                differ.append(p.id)
        st = spec.stats()["speculative"]
        assert not differ, f"{variant} with draft {plan.variant}: output differs on {differ}"
        assert st["share_kv"] is plan.share_kv and st["rounds"] > 0 and st["acceptance"] > 0.5
    finally:
        plain.close()
        spec.close()
