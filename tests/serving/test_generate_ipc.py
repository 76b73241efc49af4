"""IPC ``generate`` against a real agentd serving the tiny causal-lm (fp32 + int8 workers)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import MAX_TOKENS, PROMPTS, llm_stats
from tinyzoo import MODEL, VARIANTS

from agent.errors import InvalidParams
from agent.ipc import protocol as P

pytestmark = pytest.mark.integration


def _gen_kw(p):  # type: ignore[no-untyped-def]
    return {"messages": p} if isinstance(p, list) else {"prompt": p}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_streams_tokens_that_equal_the_in_process_greedy_output(llm_daemon, reference, variant,
                                                                              fp32_active):
    with llm_daemon.client() as c:
        c.pin(MODEL, variant)
        for i, p in enumerate(PROMPTS):
            chunks = list(c.generate(MODEL, max_tokens=MAX_TOKENS, **_gen_kw(p)))
            final = chunks[-1]
            assert final.finish_reason == "length" and final.variant == variant and final.device == "cpu"
            assert [ch.index for ch in chunks[:-1]] == list(range(MAX_TOKENS))   # one chunk per token, in order
            streamed = "".join(ch.text for ch in chunks)
            assert streamed == final.result["text"] == reference[variant][i]
            assert final.usage["completion_tokens"] == MAX_TOKENS


def test_the_two_variants_really_differ_on_most_prompts(reference):
    assert sum(a != b for a, b in zip(reference["fp32"], reference["int8"], strict=True)) > len(PROMPTS) // 2


def test_non_streaming_generate_sends_no_token_notifications(llm_daemon, reference):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(llm_daemon.socket))
        P.send_frame(s, P.request(7, "generate", {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 5,
                                                  "stream": False}))
        f = P.recv_frame(s, 1 << 20)
    assert f.header["id"] == 7, f.header   # the reply is the first and only frame
    assert len(f.header["result"]["text"]) > 0 and f.header["result"]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("params, msg", [
    ({"prompt": "hi", "colour": "red"}, "unknown generate parameter 'colour'"),
    ({"prompt": "hi", "temperature": -1}, "temperature"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "hi", "top_p": 0}, "top_p"),
    ({"prompt": "hi", "stop": [""]}, "stop"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 42}, "prompt: expected a string"),
    ({"messages": "hello"}, "messages: expected a list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user"}]}, "content"),
    ({}, "either 'prompt'"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "x"}]}, "either 'prompt'"),
    ({"prompt": "hi", "deadline_ms": -5}, "deadline_ms"),
    ({"prompt": "hi", "stream": "yes"}, "stream"),
    ({"prompt": "x" * 2000}, "context"),
])
def test_bad_generate_params_are_invalid_params_and_the_daemon_keeps_serving(llm_daemon, params, msg):
    with llm_daemon.client() as c:
        with pytest.raises(InvalidParams, match=msg.replace("(", r"\(")):
            c.call("generate", {"model": MODEL, **params})   # the params exactly as given
        assert c.complete(MODEL, "still here", max_tokens=2).finish_reason == "length"


def test_generate_on_a_tensor_model_and_infer_on_a_causal_lm_are_clear_errors(llm_daemon):
    with llm_daemon.client() as c:
        with pytest.raises(InvalidParams, match="'mlp' is a tensor model; use infer"):
            list(c.generate("mlp", "hello"))
        with pytest.raises(InvalidParams, match="'tiny' is a causal-lm; use generate"):
            c.infer(MODEL, {"input_ids": np.zeros((1, 3), np.int64)})
        from agent.errors import NotFound

        with pytest.raises(NotFound, match="unknown model 'nope'"):
            list(c.generate("nope", "hello"))


def _wait_idle(daemon, timeout=15.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    st = llm_stats(daemon)
    while (st["live_kv_bytes"] or st["active_generations"]) and time.monotonic() < end:
        time.sleep(0.05)
        st = llm_stats(daemon)
    return st


def test_a_client_that_disconnects_mid_stream_frees_its_kv_memory(llm_daemon):
    before = _wait_idle(llm_daemon)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(str(llm_daemon.socket))
    P.send_frame(s, P.request(1, "generate", {"model": MODEL, "prompt": "Tell me a very long story",
                                              "max_tokens": 220}))
    got = 0
    while got < 3:
        f = P.recv_frame(s, 1 << 20)
        assert f.header.get("method") == "token", f.header
        got += 1
    during = llm_stats(llm_daemon)
    assert during["active_generations"] == 1 and during["live_kv_bytes"] > 0
    s.close()   # gone mid-stream
    after = _wait_idle(llm_daemon)
    assert after["live_kv_bytes"] == 0 and after["active_generations"] == 0
    assert after["cancelled"] == before["cancelled"] + 1
    # it stopped early: far fewer than 220 tokens were produced for it
    assert after["completion_tokens"] - before["completion_tokens"] < 220


def test_ipc_cancel_stops_a_generation_and_frees_its_kv(llm_daemon):
    before = _wait_idle(llm_daemon)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(llm_daemon.socket))
        P.send_frame(s, P.request(5, "generate", {"model": MODEL, "prompt": "Count forever", "max_tokens": 220}))
        assert P.recv_frame(s, 1 << 20).header.get("method") == "token"
        P.send_frame(s, P.request(6, "cancel", {"id": 5}))
        replies = {}
        while len(replies) < 2:
            f = P.recv_frame(s, 1 << 20)
            if "id" in f.header:
                replies[f.header["id"]] = f.header
    assert replies[6]["result"] == {"cancelled": True}
    assert replies[5]["result"] == {"cancelled": True}
    after = _wait_idle(llm_daemon)
    assert after["live_kv_bytes"] == 0 and after["cancelled"] == before["cancelled"] + 1
    with llm_daemon.client() as c:   # cancelling an unknown or finished id says so
        assert c.call("cancel", {"id": 12345})[0] == {"cancelled": False}
        with pytest.raises(InvalidParams):
            c.call("cancel", {"id": [1]})


def test_stopping_the_client_iterator_early_cancels_the_generation(llm_daemon):
    before = _wait_idle(llm_daemon)
    with llm_daemon.client() as c:
        it = c.generate(MODEL, "Go on and on", max_tokens=220)
        next(it)
        it.close()
        assert c.complete(MODEL, "next request on the same connection", max_tokens=3).finish_reason == "length"
    after = _wait_idle(llm_daemon)
    assert after["cancelled"] == before["cancelled"] + 1 and after["live_kv_bytes"] == 0


def test_status_json_shows_llm_stats_with_prefix_cache_hits_and_misses(llm_daemon):
    chat = [{"role": "system", "content": "You answer in one word. " * 4},
            {"role": "user", "content": "Name a colour"}]
    before = llm_stats(llm_daemon)["prefix_cache"]
    with llm_daemon.client() as c:
        first = c.complete(MODEL, messages=chat, max_tokens=4)
        second = c.complete(MODEL, messages=[*chat, {"role": "assistant", "content": first.result["text"]},
                                             {"role": "user", "content": "Another"}], max_tokens=4)
    assert second.usage["cached_tokens"] >= first.usage["prompt_tokens"] - 1 > 0
    r = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(llm_daemon.socket), "status", "--json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    llm = json.loads(r.stdout)["models"][MODEL]["llm"]
    assert llm["prefix_cache"]["hits"] >= before["hits"] + 1
    assert llm["prefix_cache"]["misses"] >= before["misses"]
    assert {"live_kv_bytes", "active_generations", "completion_tokens"} <= set(llm)


def test_a_worker_that_dies_mid_stream_fails_that_stream_clearly_and_the_model_comes_back(llm_daemon):
    import os
    import signal

    from agent.errors import WorkerDied

    with llm_daemon.client() as c:
        pid = c.status()["models"][MODEL]["active"]["pid"]
        it = c.generate(MODEL, "Keep talking", max_tokens=220)
        next(it)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerDied):   # tokens already went out: not retried, the client is told
            for _ in it:
                pass
        # the runtime restarts the worker; the next request is served normally
        final = c.complete(MODEL, "Are you back?", max_tokens=3)
        assert final.finish_reason == "length"
        assert c.status()["models"][MODEL]["active"]["pid"] != pid


def test_async_client_breaking_out_of_a_stream_cancels_it(llm_daemon):
    import asyncio

    from agent.client import AsyncClient

    before = _wait_idle(llm_daemon)

    async def main() -> str:
        async with AsyncClient(llm_daemon.socket) as c:
            gen = c.generate(MODEL, "An endless list", max_tokens=220)
            async for _ in gen:
                break
            await gen.aclose()   # what `async for` leaves to the garbage collector, done at once
            final = [ch async for ch in c.generate(MODEL, "Then a short one", max_tokens=3)][-1]
            return str(final.finish_reason)

    assert asyncio.run(main()) == "length"
    after = _wait_idle(llm_daemon)
    assert after["cancelled"] == before["cancelled"] + 1 and after["live_kv_bytes"] == 0
