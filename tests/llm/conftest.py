from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import Tiny, make_tiny_gguf


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return make_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_build(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32/fp16/int8/int4 decoders, tokenizer.json and llm.json of the tiny model."""
    from agent.llm.convert import export_variant, llm_table, write_tokenizer
    from agent.llm.gguf_source import GGUFModel

    out = tmp_path_factory.mktemp("tiny_build")
    g = GGUFModel(tiny.path)
    paths = {p: export_variant(tiny.cfg, tiny.weights, p, out / f"{p}.onnx") for p in ("fp32", "fp16", "int8", "int4")}
    paths["tokenizer"] = write_tokenizer(g, out / "tokenizer.json")
    table = llm_table(g)
    table["eos_token_ids"] = []  # a random model: never stop early, so runs are comparable
    (out / "llm.json").write_text(json.dumps(table))
    paths["llm"] = out / "llm.json"
    return paths


@pytest.fixture()
def engine(tiny_build: dict[str, Path]):  # type: ignore[no-untyped-def]
    from agent.llm.engine import LLMEngine

    table = json.loads(tiny_build["llm"].read_text())
    e = LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], table, threads=1, prefix_cache_bytes=1 << 20)
    yield e
    e.close()
