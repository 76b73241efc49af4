"""agentd serving model-builder graphs, the served variant with a draft (manifest ``[llm.speculative]``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.errors import LoadError
from agent.llm.speculative import draft_for

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "llm" / "data"
MODEL = "tinyb"
PROMPTS: list[Any] = ["The quick brown fox", "1 2 3 4 5", [{"role": "user", "content": "What is the capital?"}]]


def make_builder_zoo(zoo: Path, speculative: dict[str, Any] | None) -> Path:
    """``zoo/tinyb`` with the committed tiny builder graphs (fp32, int4), one folder per variant."""
    from agent.llm.convert import llm_table
    from agent.llm.gguf_source import GGUFModel
    from agent.zoo.manifest import Manifest, TensorSpec, Variant, save_manifest, sha256_file
    from tests.llm.tiny import make_tiny_gguf

    folder = zoo / MODEL
    folder.mkdir(parents=True)
    t = make_tiny_gguf(zoo / ".tiny.gguf")
    table: dict[str, Any] = llm_table(GGUFModel(t.path))
    table["eos_token_ids"] = []
    if speculative is not None:
        table["speculative"] = speculative
    vs = []
    for p in ("fp32", "int4"):
        shutil.copytree(DATA / f"tiny_builder_{p}", folder / p)
        f = folder / p / "model.onnx"
        vs.append(Variant(id=p, file=f"{p}/model.onnx", precision=p, derived_from="source" if p == "fp32" else "fp32",
                          method="onnxruntime_genai.models.builder", sha256=sha256_file(f),
                          size_bytes=f.stat().st_size))
    save_manifest(Manifest(name=MODEL, kind="causal-lm", reference="fp32",
                           inputs=(TensorSpec("input_ids", "int64", ("batch", "seq")),),
                           outputs=(TensorSpec("logits", "float32", ("batch", "seq", t.cfg.vocab_size)),),
                           variants=tuple(vs), folder=folder, description="tiny builder graphs", llm=table))
    return folder


def test_agentd_serves_fp32_with_an_int4_draft_token_identical_to_plain_greedy(tmp_path):
    from agent.llm.engine import LLMEngine
    from tests.conftest import start_daemon
    from tests.serving.tinyzoo import greedy_text, llm_config

    folder = make_builder_zoo(tmp_path / "zoo", {"k": 3, "drafts": {"fp32": "int4"}})
    ref = LLMEngine(folder / "fp32" / "model.onnx", folder / "fp32" / "tokenizer.json", llm_config(folder), threads=1)
    want = [greedy_text(ref, p, 16)[0] for p in PROMPTS]
    (tmp_path / "d").mkdir()
    d = start_daemon(tmp_path / "zoo", tmp_path / "d", "--threads", "1")
    try:
        with d.client() as c:
            c.pin(MODEL, "fp32")
            for p, w in zip(PROMPTS, want, strict=True):
                kw = {"messages": p} if isinstance(p, list) else {"prompt": p}
                chunks = list(c.generate(MODEL, max_tokens=16, **kw))
                assert chunks[-1].variant == "fp32" and chunks[-1].result["text"] == w
            st = c.status()["models"][MODEL]["llm"]
        assert st["family"] == "builder"
        assert st["speculative"]["draft"].endswith("int4/model.onnx") and st["speculative"]["rounds"] > 0
    finally:
        d.stop()


@pytest.mark.parametrize("spec, msg", [
    ({"k": 0, "drafts": {"fp32": "int4"}}, "k"),
    ({"drafts": {"fp32": "nope"}}, "another variant"),
    ({"drafts": {"fp32": "fp32"}}, "another variant"),
    ({"drafts": ["int4"]}, "drafts"),
    ({"k": 2, "colour": 1}, "expected a table"),
    ({"min_p": 1.5, "drafts": {"fp32": "int4"}}, "min_p"),
    ({"share_kv": "yes", "drafts": {"fp32": "int4"}}, "share_kv"),
])
def test_bad_speculative_tables_are_load_errors(spec, msg):
    with pytest.raises(LoadError, match=msg):
        draft_for({"speculative": spec}, "fp32", {"fp32", "int4"})


def test_variants_without_a_draft_are_served_plainly():
    assert draft_for({"speculative": {"drafts": {"fp32": "int4"}}}, "int4", {"fp32", "int4"}) is None
    assert draft_for({}, "fp32", {"fp32"}) is None
    assert (draft_for({"speculative": {"k": 2, "drafts": {"fp32": "int4"}}}, "fp32", {"fp32", "int4"})
            == ("int4", 2, 0.0, True))
