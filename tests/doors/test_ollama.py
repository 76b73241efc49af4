"""The Ollama API on agentd's HTTP listener, driven by the real ``ollama`` Python package and raw HTTP."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlparse

import pytest
from doors_helpers import LLM, alive, declared_huge, error_of, raw, wait_for

ollama = pytest.importorskip("ollama")
pytestmark = pytest.mark.integration

N = 16
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def _client(url: str):  # type: ignore[no-untyped-def]
    """An Ollama client; use it as ``with _client(url) as c:`` so its httpx connections are closed."""
    return ollama.Client(host=url, timeout=60)


@pytest.fixture(scope="module")
def reference(doors_zoo) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The in-process engine's greedy text for the chat and for a raw prompt (fp32, one thread)."""
    from tests.serving.tinyzoo import engine_for, greedy_text

    e = engine_for(doors_zoo / LLM, "fp32", threads=1)
    try:
        return {"chat": greedy_text(e, CHAT, N)[0], "raw": greedy_text(e, "Once upon a time", N)[0]}
    finally:
        e.close()


@pytest.fixture
def fp32(doors_daemon) -> Any:  # type: ignore[no-untyped-def]
    with doors_daemon.client() as c:
        c.pin(LLM, "fp32")
    yield
    with doors_daemon.client() as c:
        c.unpin(LLM)


def _llm(daemon: Any) -> dict[str, Any]:
    with daemon.client() as c:
        return dict(c.status()["models"][LLM]["llm"])


def test_list_ps_show_and_version_describe_the_models_and_what_is_loaded(url, fp32):
    with _client(url) as c:
        names = [m.model for m in c.list().models]
        assert names == [LLM, f"{LLM}:fp32", f"{LLM}:int8"]   # the tensor model is not an Ollama model
        assert all(m.size and m.size > 0 and m.digest for m in c.list().models)
        ps = c.ps().models
        assert [m.model for m in ps] == [f"{LLM}:fp32"]
        assert ps[0].size > 0 and ps[0].size_vram == 0 and ps[0].context_length > 0
        assert ps[0].details.quantization_level == "FP32"
        show = c.show(LLM)
        assert show.modelinfo["agent.variants"] == ["fp32", "int8"]
        assert show.modelinfo["agent.active_variant"] == "fp32" and show.modelinfo["agent.device"] == "cpu"
        assert "im_start" in (show.template or "") or show.template   # the model's own chat template
        assert show.capabilities == ["completion"]
        with pytest.raises(ollama.ResponseError) as e:
            c.show("nope")
        assert e.value.status_code == 404
        st, _, body = raw(url, "GET", "/api/version")
        assert st == 200 and json.loads(body)["version"]
        st, _, body = raw(url, "HEAD", "/")
        assert st == 200   # what Ollama's CLI checks before anything else


def test_chat_streamed_and_not_equals_the_in_process_greedy_output(url, reference, fp32):
    with _client(url) as c:
        r = c.chat(model=LLM, messages=CHAT, options={"num_predict": N})
        assert r.message.content == reference["chat"]
        assert r.done and r.done_reason == "length" and r.eval_count == N and r.prompt_eval_count > 0
        assert r.model == f"{LLM}:fp32"
        parts = list(c.chat(model=LLM, messages=CHAT, options={"num_predict": N}, stream=True))
        assert "".join(p.message.content or "" for p in parts) == reference["chat"]
        assert [p.done for p in parts].count(True) == 1 and parts[-1].done and parts[-1].eval_count == N
        assert all(p.model == f"{LLM}:fp32" for p in parts)


def test_generate_applies_the_template_unless_raw(url, reference, fp32):
    with _client(url) as c:
        chat_like = c.generate(model=LLM, prompt=CHAT[0]["content"], options={"num_predict": N})
        assert chat_like.response == reference["chat"] and chat_like.done
        raw_out = "".join(p.response for p in c.generate(model=LLM, prompt="Once upon a time", raw=True,
                                                         options={"num_predict": N}, stream=True))
        assert raw_out == reference["raw"]


def test_options_are_mapped_and_seeded_sampling_repeats(url, fp32):
    with _client(url) as c:
        opts = {"num_predict": 8, "temperature": 0.9, "top_k": 20, "top_p": 0.9, "seed": 3, "num_ctx": 2048}
        a = c.generate(model=LLM, prompt="Once upon a time", raw=True, options=opts)
        b = c.generate(model=LLM, prompt="Once upon a time", raw=True, options=opts)
        assert a.response == b.response and a.eval_count == 8
        greedy = c.generate(model=LLM, prompt="Once upon a time", raw=True, options={"num_predict": 8}).response
        s = greedy[3:5]
        cut = c.generate(model=LLM, prompt="Once upon a time", raw=True, options={"num_predict": 8, "stop": s})
        assert cut.response == greedy[:greedy.find(s)] and cut.done_reason == "stop"


def test_a_variant_tag_is_honoured_only_as_the_policy_allows(url, doors_daemon, fp32):
    with _client(url) as c:
        r = c.chat(model=f"{LLM}:int8", messages=CHAT, options={"num_predict": 4})
        assert r.model == f"{LLM}:fp32"   # fp32 is pinned: the tag does not override it, the reply says so
        req = {"model": f"{LLM}:int8", "messages": CHAT, "stream": False, "options": {"num_predict": 2}}
        _, hdr, body = raw(url, "POST", "/api/chat", json.dumps(req).encode())
        d = json.loads(body)
        assert d["agent"]["requested_variant"] == "int8" and d["agent"]["variant"] == "fp32" == hdr["x-agent-variant"]
        with doors_daemon.client() as ipc:
            ipc.pin(LLM, "int8")
        assert c.chat(model=f"{LLM}:int8", messages=CHAT, options={"num_predict": 4}).model == f"{LLM}:int8"
        with pytest.raises(ollama.ResponseError) as e:
            c.chat(model=f"{LLM}:q4_0", messages=CHAT)
        assert e.value.status_code == 404


def test_a_load_request_answers_done_reason_load_and_keep_alive_zero_unloads_nothing(url, fp32):
    st, _, body = raw(url, "POST", "/api/chat", json.dumps({"model": LLM, "messages": []}).encode())
    assert st == 200 and json.loads(body)["done_reason"] == "load"
    st, _, body = raw(url, "POST", "/api/generate", json.dumps({"model": LLM, "keep_alive": 0}).encode())
    assert st == 200 and json.loads(body)["done_reason"] == "unload"
    with _client(url) as c:
        assert [m.model for m in c.ps().models] == [f"{LLM}:fp32"]   # still loaded: the policy decides


BAD = [
    ("/api/chat", b"{not json", 400, "not valid JSON"),
    ("/api/chat", b"[]", 400, "JSON object"),
    ("/api/chat", json.dumps({"model": "nope", "messages": CHAT}).encode(), 404, "model 'nope' not found"),
    ("/api/generate", json.dumps({"model": "mlp", "prompt": "x"}).encode(), 404, "not found"),
    ("/api/chat", json.dumps({"model": LLM, "messages": CHAT, "options": {"mirostat": 2}}).encode(), 400, "mirostat"),
    ("/api/chat", json.dumps({"model": LLM, "messages": CHAT, "options": {"num_predict": "x"}}).encode(), 400,
     "num_predict"),
    ("/api/chat", json.dumps({"model": LLM, "messages": CHAT, "options": {"temperature": -1}}).encode(), 400,
     "temperature"),
    ("/api/chat", json.dumps({"model": LLM, "messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
    ("/api/chat", json.dumps({"model": LLM, "messages": CHAT, "format": "json"}).encode(), 400, "format"),
    ("/api/chat", json.dumps({"model": LLM, "messages": CHAT, "bogus": 1}).encode(), 400, "unknown field"),
    ("/api/generate", json.dumps({"model": LLM, "prompt": "x", "images": ["aGk="]}).encode(), 400, "images"),
    ("/api/show", json.dumps({}).encode(), 400, "model is required"),
]


@pytest.mark.parametrize("path,body,status,message", BAD)
def test_bad_requests_get_ollama_errors_and_agentd_stays_up(url, doors_daemon, path, body, status, message):
    st, _, out = raw(url, "POST", path, body)
    assert st == status, out
    assert message in error_of(out)
    alive(doors_daemon, url)


def test_ollama_client_raises_response_error_for_an_unknown_model(url):
    with _client(url) as c:
        with pytest.raises(ollama.ResponseError) as e:
            c.chat(model="nope", messages=CHAT)
        assert e.value.status_code == 404 and "not found" in e.value.error
        with pytest.raises(ollama.ResponseError) as e:
            list(c.chat(model="nope", messages=CHAT, stream=True))
        assert e.value.status_code == 404


def test_a_1gb_declared_body_is_refused_with_413(url, doors_daemon):
    st, body = declared_huge(url, "/api/chat")
    assert st == 413 and "larger than" in error_of(body)
    st, _, out = raw(url, "GET", "/api/nothing")
    assert st == 404 and error_of(out)
    alive(doors_daemon, url)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_leaving_mid_generation_cancels_it_and_frees_its_kv(url, doors_daemon, fp32, stream):
    before = _llm(doors_daemon)["cancelled"]
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    body = {"model": LLM, "prompt": "Once upon a time", "raw": True, "stream": stream,
            "options": {"num_predict": 200}}
    conn.request("POST", "/api/generate", json.dumps(body), {"content-type": "application/json"})
    if stream:
        resp = conn.getresponse()
        assert resp.status == 200
        first = json.loads(resp.readline())
        assert first["done"] is False
    else:
        wait_for(lambda: _llm(doors_daemon)["active_generations"] > 0, timeout=10, step=0.005)
    conn.sock.close()   # leave without reading the rest
    conn.close()
    assert wait_for(lambda: _llm(doors_daemon)["cancelled"] > before, timeout=30), _llm(doors_daemon)
    def freed() -> bool:
        s = _llm(doors_daemon)
        return bool(s["active_generations"] == 0 and s["live_kv_bytes"] == 0)

    assert wait_for(freed, timeout=30), _llm(doors_daemon)
    alive(doors_daemon, url)
