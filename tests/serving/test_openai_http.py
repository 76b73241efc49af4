"""The OpenAI-compatible endpoint (agentd --http) driven by the real ``openai`` client and raw HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest
from conftest import MAX_TOKENS, PROMPTS, llm_stats
from tinyzoo import MODEL

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.integration

CHAT = PROMPTS[3]   # a user message: "What is the capital of France?"


def _client(url: str):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _raw(url: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_models_lists_the_causal_lm_with_its_variants_and_active_one(http_url):
    models = _client(http_url).models.list()
    ids = [m.id for m in models.data]
    assert ids == [MODEL]   # the tensor model is not a chat model
    m = models.data[0]
    assert m.owned_by == "ondevice-agent"
    assert [v["id"] for v in m.agent["variants"]] == ["fp32", "int8"]
    assert m.agent["active"]["device"] == "cpu"
    with pytest.raises(openai.NotFoundError):
        _client(http_url).models.retrieve("nope")


def test_streaming_chat_with_the_openai_client_matches_the_in_process_greedy_output(http_url, reference,
                                                                                     fp32_active):
    stream = _client(http_url).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=MAX_TOKENS,
                                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference["fp32"][3]
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert {c.system_fingerprint for c in chunks} == {"fp32@cpu"}
    assert finals[0].agent["variant"] == "fp32"
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS and chunks[-1].choices == []


def test_non_streaming_chat_and_completion_name_the_variant_and_device(http_url, reference, fp32_active):
    c = _client(http_url)
    raw = c.chat.completions.with_raw_response.create(model=MODEL, messages=CHAT, max_tokens=MAX_TOKENS)
    assert raw.headers["x-agent-variant"] == "fp32" and raw.headers["x-agent-device"] == "cpu"
    r = raw.parse()
    assert r.choices[0].message.content == reference["fp32"][3]
    assert r.choices[0].finish_reason == "length" and r.system_fingerprint == "fp32@cpu"
    assert r.usage.completion_tokens == MAX_TOKENS and r.usage.total_tokens > MAX_TOKENS
    t = c.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=MAX_TOKENS)
    assert t.choices[0].text == reference["fp32"][0] and t.object == "text_completion"
    s = list(c.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=MAX_TOKENS, stream=True))
    assert "".join(x.choices[0].text for x in s) == reference["fp32"][0]


def test_the_int8_variant_serves_when_pinned_and_the_response_says_so(http_url, reference, llm_daemon,
                                                                      fp32_active):
    with llm_daemon.client() as cl:
        cl.pin(MODEL, "int8")
    r = _client(http_url).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=MAX_TOKENS)
    assert r.system_fingerprint == "int8@cpu" and r.agent["variant"] == "int8"
    assert r.choices[0].message.content == reference["int8"][3]


def test_unknown_model_is_openai_not_found(http_url):
    c = _client(http_url)
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="nope", messages=CHAT)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="nope", messages=CHAT, stream=True)


@pytest.mark.parametrize("body, status, param", [
    ({"model": MODEL, "messages": CHAT, "temperature": -1}, 400, "temperature"),
    ({"model": MODEL, "messages": CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ({"model": MODEL, "messages": []}, 400, "messages"),
    ({"model": MODEL, "messages": "hello"}, 400, "messages"),
    ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content[0]"),
    ({"model": MODEL, "messages": CHAT, "n": 2}, 400, "n"),
    ({"model": MODEL, "messages": CHAT, "tools": []}, 400, "tools"),
    ({"model": MODEL, "messages": CHAT, "stream": "yes"}, 400, "stream"),
    ({"model": MODEL, "messages": CHAT, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"messages": CHAT}, 400, "model"),
    ({"model": "mlp", "messages": CHAT}, 400, None),
    ({"model": "nope", "messages": CHAT, "stream": True}, 404, "model"),
])
def test_bad_requests_get_the_openai_error_shape_and_status(http_url, body, status, param):
    code, _, data = _raw(http_url, "POST", "/v1/chat/completions", json.dumps(body).encode())
    assert code == status, data
    err = json.loads(data)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"


def test_malformed_http_requests_get_openai_errors_and_the_server_keeps_serving(http_url):
    assert _raw(http_url, "POST", "/v1/chat/completions", b"{not json")[0] == 400
    assert _raw(http_url, "POST", "/v1/chat/completions", b"[1, 2]")[0] == 400
    code, _, data = _raw(http_url, "GET", "/v1/chat/completions")
    assert code == 405 and json.loads(data)["error"]["code"] == "method_not_allowed"
    code, _, data = _raw(http_url, "GET", "/v2/whatever")
    assert code == 404 and "error" in json.loads(data)
    u = urlparse(http_url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:   # announces 5 MiB, refused at once
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 5242880\r\n\r\n{")
        assert s.recv(65536).startswith(b"HTTP/1.1 413")
    assert _raw(http_url, "GET", "/health")[0] == 200


@pytest.mark.parametrize("stream", [True, False])
def test_an_http_client_that_disconnects_mid_generation_frees_its_kv_memory(http_url, llm_daemon, stream):
    before = llm_stats(llm_daemon)
    u = urlparse(http_url)
    body = json.dumps({"model": MODEL, "prompt": "A long tale", "max_tokens": 220, "stream": stream}).encode()
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    if stream:
        buf = b""
        while buf.count(b"data: ") < 3:
            buf += s.recv(65536)
        assert buf.startswith(b"HTTP/1.1 200") and b"x-agent-variant" in buf
    end = time.monotonic() + 15
    during = llm_stats(llm_daemon)
    while not (during["active_generations"] and during["live_kv_bytes"]) and time.monotonic() < end:
        during = llm_stats(llm_daemon)
    assert during["active_generations"] == 1 and during["live_kv_bytes"] > 0
    s.close()
    after = llm_stats(llm_daemon)
    while (after["live_kv_bytes"] or after["active_generations"]) and time.monotonic() < end:
        time.sleep(0.05)
        after = llm_stats(llm_daemon)
    assert after["live_kv_bytes"] == 0 and after["active_generations"] == 0
    assert after["cancelled"] == before["cancelled"] + 1


@pytest.mark.parametrize("addr", ["0.0.0.0:8077", "192.168.1.2:80", "127.0.0.1:99999", "8077", "unix:",
                                  "example.com:80"])
def test_agentd_refuses_a_non_loopback_or_malformed_http_address(addr, tmp_path):
    r = subprocess.run([sys.executable, "-m", "agent.daemon", "--zoo", str(tmp_path), "--socket",
                        str(tmp_path / "s"), "--http", addr], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and "--http" in r.stderr


def test_the_endpoint_can_listen_on_a_unix_socket_instead(llm_zoo, tmp_path):
    pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    import tempfile
    from pathlib import Path

    from tests.conftest import start_daemon

    sock = Path(tempfile.mkdtemp(prefix="agh", dir="/tmp")) / "http.sock"
    d = start_daemon(llm_zoo, tmp_path, "--http", f"unix:{sock}", "--spare-workers", "0")
    try:
        with d.client() as c:
            assert c.status()["daemon"]["http"] == f"unix:{sock}"
        assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o660
        body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 3}).encode()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(sock))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n"
                      b"content-type: application/json\r\n" + f"content-length: {len(body)}\r\n\r\n".encode() + body)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(payload)["usage"]["completion_tokens"] == 3
        # a stream in flight when agentd is told to stop still completes, then agentd exits 0
        body = json.dumps({"model": MODEL, "prompt": "Go", "max_tokens": 200, "stream": True}).encode()
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(sock))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n"
                      b"content-type: application/json\r\n" + f"content-length: {len(body)}\r\n\r\n".encode() + body)
            data = s.recv(65536)
            d.proc.send_signal(signal.SIGTERM)
            while chunk := s.recv(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in data
        assert data.count(b'"finish_reason":"length"') == 1
        assert d.proc.wait(30) == 0
    finally:
        d.stop()
    assert not sock.exists()   # removed on a graceful stop


def test_agentd_says_so_and_exits_1_when_the_http_port_is_taken(llm_zoo, tmp_path):
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "agent.daemon", "--zoo", str(llm_zoo), "--socket",
                            str(tmp_path / "s"), "--state-dir", str(tmp_path / "st"), "--spare-workers", "0",
                            "--http", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 1, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in out and "in use" in out
    assert "Traceback" not in out
