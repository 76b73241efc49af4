"""The quota sweep's causal-lm cost point (agent.zoo.build.cost_worker), in its own process, on the tiny
builder graphs: timed on the serving path, with the draft the manifest gives a variant when it has one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import BuildError
from agent.zoo.build.tensor_kind import run_worker

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def llm_table(tiny) -> dict:  # type: ignore[no-untyped-def]
    from agent.llm.convert import llm_table
    from agent.llm.gguf_source import GGUFModel

    t = llm_table(GGUFModel(tiny.path))
    t["eos_token_ids"] = []   # a random model: never stop early
    return json.loads(json.dumps(t))


def _req(table: dict, prec: str, **kw: object) -> dict:  # type: ignore[type-arg]
    d = DATA / f"tiny_builder_{prec}"
    return {"kind": "causal-lm", "model": str(d / "model.onnx"), "tokenizer": str(d / "tokenizer.json"),
            "llm": table, "requests": 2, "tokens": 8, "threads": 1, **kw}


def test_a_plain_variant_is_timed_per_token_with_its_first_token_apart(llm_table):
    r = run_worker(_req(llm_table, "int4"), timeout=120, module="agent.zoo.build.cost_worker")
    assert r["n"] == 2 and 0 < r["p50"] <= r["p95"] and r["ttft_ms"] > 0 and r["cpu_ms"] > 0
    assert "acceptance" not in r


def test_a_variant_served_with_a_draft_is_timed_with_it(llm_table):
    draft = {"variant": "int4", "path": str(DATA / "tiny_builder_int4" / "model.onnx"), "k": 3}
    r = run_worker(_req(llm_table, "fp32", draft=draft), timeout=120, module="agent.zoo.build.cost_worker")
    assert r["n"] == 2 and r["p50"] > 0 and 0 <= r["acceptance"] <= 1


def test_a_missing_draft_file_is_one_error_line(llm_table, tmp_path):
    draft = {"variant": "int4", "path": str(tmp_path / "nope.onnx"), "k": 3}
    with pytest.raises(BuildError) as e:
        run_worker(_req(llm_table, "fp32", draft=draft), timeout=120, module="agent.zoo.build.cost_worker")
    assert "\n" not in str(e.value) and "nope.onnx" in str(e.value)
