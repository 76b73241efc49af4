"""agentd with continuous batching (manifest ``[serving] max_batch`` on a causal-lm model): concurrent
``generate`` requests on one variant share decode steps; each client gets its unbatched greedy text, and a
client that cancels leaves the others intact."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ManifestError

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent.parent / "llm" / "data"
PROMPTS = ["The quick brown fox", "1 2 3 4 5", "hello there", "in 1999 the", "a b c d e f", "the theory of"]


def tiny_table(tmp: Path) -> dict[str, Any]:
    from agent.llm.convert import llm_table
    from agent.llm.gguf_source import GGUFModel
    from tests.llm.tiny import make_tiny_gguf

    t = llm_table(GGUFModel(make_tiny_gguf(tmp / "tiny.gguf").path))
    t["eos_token_ids"] = []
    t["tokenizer"] = "tokenizer.json"
    return t


def test_concurrent_generations_share_steps_and_one_cancelled_leaves_the_others_intact(tmp_path):
    from agent.llm.engine import LLMEngine
    from agent.testing import make_causal_lm_zoo
    from tests.conftest import start_daemon

    table = tiny_table(tmp_path)
    folder = make_causal_lm_zoo(tmp_path / "zoo", "tinyb", {"fp32": DATA / "tiny_builder_fp32"}, table, max_batch=8)
    ref = LLMEngine(folder / "fp32" / "model.onnx", folder / "fp32" / "tokenizer.json", table, threads=1,
                    prefix_cache_bytes=0)
    want = ["".join(ev.text for ev in ref.generate(p, {"max_tokens": 120})) for p in PROMPTS]
    ref.close()
    (tmp_path / "d").mkdir()
    d = start_daemon(tmp_path / "zoo", tmp_path / "d", "--threads", "1")
    try:
        with d.client() as c:
            c.generate("tinyb", prompt="warm", max_tokens=2)   # the worker is loaded before the clients go
        go = threading.Event()
        got: dict[int, Any] = {}

        def client(i: int) -> None:
            with d.client() as c:
                go.wait()
                chunks = []
                for ch in c.generate("tinyb", prompt=PROMPTS[i], max_tokens=120):
                    chunks.append(ch)
                    if i == 1 and len(chunks) == 3:
                        break                    # leaving the loop cancels this generation in the daemon
                got[i] = chunks

        ts = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
        for t in ts:
            t.start()
        go.set()
        for t in ts:
            t.join(120)
        for i, w in enumerate(want):
            if i == 1:
                assert "".join(ch.text for ch in got[1]) == "".join(ch.text for ch in got[1][:3])
                continue
            assert got[i][-1].result["text"] == w and got[i][-1].finish_reason == "length", i
            assert "".join(ch.text for ch in got[i]) == w, i    # every token event came, in order, before the reply
        deadline = time.monotonic() + 10     # the cancel of the client that left may still be on its way
        with d.client() as c:
            st = c.status()["models"]["tinyb"]["llm"]
            while st["cancelled"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                st = c.status()["models"]["tinyb"]["llm"]
        b = st["batching"]
        assert b["max_batch"] == 8 and b["joins"] == len(PROMPTS) + 1
        assert st["cancelled"] == 1 and st["live_kv_bytes"] == 0 and st["active_generations"] == 0
    finally:
        d.stop()


def test_a_causal_lm_batches_without_a_queue_delay(tmp_path):
    from agent.testing import make_causal_lm_zoo
    from agent.zoo.manifest import MANIFEST, load_manifest

    folder = make_causal_lm_zoo(tmp_path / "zoo", "tinyb", {"fp32": DATA / "tiny_builder_fp32"}, tiny_table(tmp_path),
                                max_batch=8)
    assert load_manifest(folder).serving.max_batch == 8
    p = folder / MANIFEST
    p.write_text(p.read_text().replace("max_queue_delay_ms = 0.0", "max_queue_delay_ms = 2"))
    with pytest.raises(ManifestError, match=r"serving\.max_queue_delay_ms: a causal-lm model batches decode steps"):
        load_manifest(folder)


def test_consecutive_token_events_travel_as_one_frame_and_replies_keep_their_place():
    from agent.runtime.backends.llm import coalesce_events

    def ev(i: int, k: int) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "method": "event", "params": {"id": i, "text": f"t{k}", "index": k}}

    reply = {"jsonrpc": "2.0", "id": 2, "result": {"text": "t0t1"}}
    out = coalesce_events([ev(1, 0), ev(2, 0), ev(2, 1), reply, ev(1, 1)])
    assert out == [{"jsonrpc": "2.0", "method": "events", "params": {"events": [ev(1, 0)["params"], ev(2, 0)["params"],
                                                                                 ev(2, 1)["params"]]}},
                   reply, ev(1, 1)]
    assert coalesce_events([ev(1, 0)]) == [ev(1, 0)] and coalesce_events([]) == []
