"""Issue 18 on a real model: a zoo's every LLM variant gives the same greedy text cold and on a prefix-cache
hit. Slow, and it needs a built zoo: ``AGENT_LLM_ZOO=DIR`` (e.g. the demo's ``~/.local/share/ondevice-agent/zoo``
after ``scripts/demo``, or a ``agentctl zoo build`` output); one or more, separated by ``:``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.llm.test_greedy_cache_determinism import assert_cold_equals_cached

pytestmark = pytest.mark.slow


def _variants() -> list[tuple[Path, str]]:
    from agent.zoo.manifest import load_manifest

    out = []
    for zoo in filter(None, os.environ.get("AGENT_LLM_ZOO", "").split(":")):
        for mf in sorted(Path(zoo).glob("*/manifest.toml")):
            m = load_manifest(mf.parent, check_files=False)
            if m.kind == "causal-lm":
                out += [(mf.parent, v.id) for v in m.variants if v.remote is None]
    return out


@pytest.mark.parametrize("folder,variant", _variants() or [pytest.param(None, None, marks=pytest.mark.skip(
    reason="set AGENT_LLM_ZOO to a built zoo with a causal-lm model"))])
def test_every_real_variant_gives_the_same_greedy_text_cold_and_on_a_cache_hit(folder, variant):
    from agent.llm.engine import LLMEngine
    from agent.zoo.manifest import load_manifest

    m = load_manifest(folder)
    path = m.folder / m.variant(variant).file
    e = LLMEngine(path, path.parent / m.llm["tokenizer"], dict(m.llm), threads=2, prefix_cache_bytes=64 << 20)
    try:
        assert_cold_equals_cached(e)
    finally:
        e.close()
