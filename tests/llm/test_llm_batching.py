"""Continuous batching (agent/llm/batch.py) on the committed tiny builder graphs (GroupQueryAttention):
concurrent streams share decode steps and each gets exactly what it gets alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.llm.engine import LLMEngine

DATA = Path(__file__).parent / "data"
PROMPTS = ["the 12 apples in the tree", "hello there", "in 1999 the", "a b c d e f", "the theory of the",
           "1 1 1 1", "tiny", "once upon a time there was"]


@pytest.fixture(scope="module")
def table(tiny) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from agent.llm.convert import llm_table
    from agent.llm.gguf_source import GGUFModel

    t = llm_table(GGUFModel(tiny.path))
    t["eos_token_ids"] = []  # a random model: never stop early
    return t


def open_engine(prec: str, table: dict[str, Any], **kw: Any) -> LLMEngine:
    d = DATA / f"tiny_builder_{prec}"
    return LLMEngine(d / "model.onnx", d / "tokenizer.json", table, threads=1, **kw)


def run(e: LLMEngine, prompt: str, params: dict[str, Any], cancel: Any = None) -> tuple[list[int], str, Any]:
    evs = list(e.generate(prompt, params, cancel=cancel))
    return [v.token_id for v in evs if v.token_id is not None], "".join(v.text for v in evs), evs[-1]


def together(e: LLMEngine, jobs: list[tuple[str, dict[str, Any]]]) -> list[tuple[list[int], str, Any]]:
    out: list[Any] = [None] * len(jobs)
    go = threading.Event()

    def work(i: int) -> None:
        go.wait()
        out[i] = run(e, *jobs[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in ts:
        t.start()
    go.set()
    for t in ts:
        t.join(60)
    return out


JOBS: list[tuple[str, dict[str, Any]]] = [
    (p, {"max_tokens": 20 + 3 * i}) for i, p in enumerate(PROMPTS[:6])
] + [
    (PROMPTS[6], {"max_tokens": 30, "temperature": 0.8, "top_k": 20, "seed": 7}),   # its own sampler
    (PROMPTS[7], {"max_tokens": 30, "temperature": 1.2, "top_p": 0.9, "seed": 3}),
]


@pytest.mark.parametrize("prec", ["fp32", "int4"])
def test_eight_concurrent_streams_give_each_its_unbatched_output(table, prec):
    plain = open_engine(prec, table, prefix_cache_bytes=0)
    want = [run(plain, p, kw) for p, kw in JOBS]
    plain.close()
    e = open_engine(prec, table, prefix_cache_bytes=0, max_batch=8)
    try:
        for _ in range(3):   # thread timing varies who joins when: every interleaving must give the same
            got = together(e, JOBS)
            for (ids, text, last), (wids, wtext, wlast) in zip(got, want, strict=True):
                assert ids == wids and text == wtext
                assert last.finish_reason == wlast.finish_reason == "length"
        st = e.stats()
        assert st["batching"]["max_active"] > 1 and st["batching"]["mean_batch"] > 1   # steps were shared
        assert st["live_kv_bytes"] == 0 and st["active_generations"] == 0
        assert st["batching"]["active"] == 0 and st["batching"]["buffer_bytes"] == 0   # freed with the last stream
    finally:
        e.close()


def test_stop_strings_end_one_stream_and_the_others_go_on(table):
    plain = open_engine("fp32", table, prefix_cache_bytes=0)
    full = run(plain, PROMPTS[0], {"max_tokens": 30})[1]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    jobs = [(PROMPTS[0], {"max_tokens": 30, "stop": [stop]}), *((p, {"max_tokens": 30}) for p in PROMPTS[1:4])]
    want = [run(plain, p, kw) for p, kw in jobs]
    plain.close()
    assert want[0][2].finish_reason == "stop" and stop not in want[0][1]
    e = open_engine("fp32", table, prefix_cache_bytes=0, max_batch=4)
    try:
        got = together(e, jobs)
        assert [(g[0], g[1], g[2].finish_reason) for g in got] == [(w[0], w[1], w[2].finish_reason) for w in want]
    finally:
        e.close()


def test_cancelling_one_stream_of_a_batch_leaves_the_others_intact(table):
    plain = open_engine("fp32", table, prefix_cache_bytes=0)
    want = [run(plain, p, {"max_tokens": 60}) for p in PROMPTS[:4]]
    plain.close()
    e = open_engine("fp32", table, prefix_cache_bytes=0, max_batch=4)
    cancel = threading.Event()
    out: list[Any] = [None] * 4
    seen_live: list[int] = []

    def victim() -> None:
        evs = []
        for ev in e.generate(PROMPTS[1], {"max_tokens": 60}, cancel=cancel):
            evs.append(ev)
            if len(evs) == 5:
                seen_live.append(e.stats()["live_kv_bytes"])
                cancel.set()
        out[1] = evs

    def other(i: int) -> None:
        out[i] = run(e, PROMPTS[i], {"max_tokens": 60})

    try:
        ts = [threading.Thread(target=victim)] + [threading.Thread(target=other, args=(i,)) for i in (0, 2, 3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert out[1][-1].finish_reason == "cancelled"
        assert 5 <= len(out[1]) - 1 < 60
        assert [ev.token_id for ev in out[1][:5]] == want[1][0][:5]        # what it got before was right
        for i in (0, 2, 3):
            assert out[i][0] == want[i][0] and out[i][2].finish_reason == "length"
        assert seen_live and seen_live[0] > 0                                  # KV was accounted while it ran
        deadline = time.monotonic() + 10
        while e.stats()["batching"]["buffer_bytes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        st = e.stats()
        assert st["cancelled"] == 1 and st["live_kv_bytes"] == 0 and st["batching"]["buffer_bytes"] == 0
    finally:
        e.close()


def test_a_stream_joining_mid_way_gets_its_own_output_and_the_running_one_is_undisturbed(table):
    plain = open_engine("fp32", table, prefix_cache_bytes=0)
    want_a = run(plain, PROMPTS[0], {"max_tokens": 80})[0]
    want_b = run(plain, PROMPTS[3], {"max_tokens": 20})[0]
    plain.close()
    e = open_engine("fp32", table, prefix_cache_bytes=0, max_batch=4)
    start_b = threading.Event()
    calls = {"n": 0}

    def a_cancel() -> bool:
        # called by the batch thread once per step: at A's 10th step, let B join and wait till it is queued
        if threading.current_thread().name == "llm-batch":
            calls["n"] += 1
            if calls["n"] == 10:
                start_b.set()
                deadline = time.monotonic() + 10
                while e.stats()["batching"]["pending"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.001)
        return False

    got: dict[str, list[int]] = {}

    def b() -> None:
        start_b.wait(30)
        got["b"] = run(e, PROMPTS[3], {"max_tokens": 20})[0]

    try:
        tb = threading.Thread(target=b)
        tb.start()
        got["a"] = run(e, PROMPTS[0], {"max_tokens": 80}, cancel=a_cancel)[0]
        tb.join(30)
        assert got["a"] == want_a and got["b"] == want_b
        st = e.stats()["batching"]
        assert st["joins"] == 2 and st["max_active"] == 2
    finally:
        e.close()


def test_the_prefix_cache_still_serves_batched_streams(table):
    plain = open_engine("fp32", table, prefix_cache_bytes=0)
    long = "the theory of the 12 apples in the tree in 1999 the"
    want = [run(plain, long + s, {"max_tokens": 16}) for s in (" tiny", " hello there")]
    plain.close()
    e = open_engine("fp32", table, prefix_cache_bytes=1 << 20, max_batch=4)
    try:
        first = run(e, long + " tiny", {"max_tokens": 16})
        assert first[0] == want[0][0] and first[2].usage.cached_tokens == 0
        second = run(e, long + " hello there", {"max_tokens": 16})
        assert second[2].usage.cached_tokens >= 4                     # the shared prefix came from the cache
        assert second[0] == want[1][0]
        assert e.stats()["prefix_cache"]["hits"] == 1
    finally:
        e.close()


def test_legacy_graphs_and_max_batch_1_do_not_batch(tiny_build, table):
    import json

    t = json.loads(tiny_build["llm"].read_text())
    legacy = LLMEngine(tiny_build["fp32"], tiny_build["tokenizer"], t, threads=1, max_batch=8)
    one = open_engine("fp32", table, max_batch=1)
    try:
        assert legacy.stats()["batching"] is None and one.stats()["batching"] is None
        assert run(legacy, "hello there", {"max_tokens": 4})[2].finish_reason == "length"
    finally:
        legacy.close()
        one.close()
