"""``agentctl generate`` and ``agentctl chat`` against the real agentd (driven through stdin/stdout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import MAX_TOKENS, PROMPTS
from tinyzoo import MODEL, engine_for, greedy_text

pytestmark = pytest.mark.integration


def agentctl(daemon, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[bytes]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(daemon.socket), *args],
                          input=stdin.encode() if stdin is not None else None, capture_output=True, timeout=120,
                          check=False, env=env)


def test_generate_raw_streams_the_plain_completion_and_a_summary_line(llm_daemon, reference, fp32_active):
    r = agentctl(llm_daemon, "generate", MODEL, PROMPTS[0], "--raw", "--max-tokens", str(MAX_TOKENS))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == reference["fp32"][0] + "\n"
    err = r.stderr.decode()
    assert "fp32@cpu" in err and f"{MAX_TOKENS} tokens" in err and "finish length" in err


def test_generate_json_prints_the_final_result(llm_daemon, reference, fp32_active):
    r = agentctl(llm_daemon, "generate", MODEL, "-", "--max-tokens", str(MAX_TOKENS), "--json",
                 stdin=PROMPTS[3][0]["content"])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["text"] == reference["fp32"][3] and res["variant"] == "fp32" and res["device"] == "cpu"
    assert res["usage"]["completion_tokens"] == MAX_TOKENS


def test_generate_uses_the_chat_template_by_default_and_chat_is_the_same(llm_daemon, reference, fp32_active):
    q = PROMPTS[3][0]["content"]
    plain = agentctl(llm_daemon, "generate", MODEL, q, "--max-tokens", str(MAX_TOKENS), "-q")
    chat = agentctl(llm_daemon, "generate", MODEL, q, "--chat", "--max-tokens", str(MAX_TOKENS), "-q")
    raw = agentctl(llm_daemon, "generate", MODEL, q, "--raw", "--max-tokens", str(MAX_TOKENS), "-q")
    assert plain.returncode == chat.returncode == raw.returncode == 0, (plain.stderr, raw.stderr)
    assert plain.stdout.decode() == chat.stdout.decode() == reference["fp32"][3] + "\n"
    assert raw.stdout != plain.stdout   # the raw prompt is continued without the template


def test_generate_with_a_seed_is_reproducible(llm_daemon):
    args = ("generate", MODEL, "Roll", "--max-tokens", "12", "--temperature", "1.0", "--seed", "7", "-q")
    a, b = agentctl(llm_daemon, *args), agentctl(llm_daemon, *args)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


@pytest.mark.parametrize("args, code, msg", [
    (("generate", MODEL, "x", "--max-tokens", "0"), 2, "--max-tokens"),
    (("generate", MODEL, "x", "--temperature", "-1"), 2, "temperature"),
    (("generate", MODEL, ""), 2, "prompt"),
    (("generate", MODEL, "x", "--raw", "--system", "be nice"), 2, "cannot go with --raw"),
    (("generate", MODEL, "x", "--raw", "--chat"), 2, "not allowed with argument"),
    (("generate", "nope", "x"), 1, "unknown model 'nope'"),
    (("generate", "mlp", "x"), 2, "tensor model"),
    (("chat", "nope"), 1, "unknown model"),
])
def test_bad_cli_input_is_a_clear_error(llm_daemon, args, code, msg):
    r = agentctl(llm_daemon, *args, stdin="hello\n")
    assert r.returncode == code, (r.stdout, r.stderr)
    assert msg in r.stderr.decode()


def test_chat_keeps_the_conversation_and_reuses_its_prefix(llm_daemon, llm_zoo, fp32_active):
    turns = ["What is the capital of France?", "And of Italy?"]
    r = agentctl(llm_daemon, "chat", MODEL, "--max-tokens", "8", stdin="\n".join(turns) + "\n\n/exit\nignored\n")
    assert r.returncode == 0, r.stderr
    # the reference: the same conversation in process, each turn seeing the earlier ones
    e = engine_for(llm_zoo / MODEL, "fp32", threads=1)
    msgs: list[dict[str, str]] = []
    expected = []
    for t in turns:
        msgs.append({"role": "user", "content": t})
        reply = greedy_text(e, msgs, 8)[0]
        msgs.append({"role": "assistant", "content": reply})
        expected.append(reply)
    e.close()
    assert r.stdout.decode() == "".join(x + "\n" for x in expected)   # /exit ended it: "ignored" was not sent
    summaries = [ln for ln in r.stderr.decode().splitlines() if ln.startswith("[fp32@cpu")]
    assert len(summaries) == 2 and "cached prompt tokens" in summaries[1]


def test_chat_reset_starts_a_new_conversation(llm_daemon, reference, fp32_active):
    q = PROMPTS[3][0]["content"]
    r = agentctl(llm_daemon, "chat", MODEL, "--max-tokens", str(MAX_TOKENS), "-q", stdin=f"{q}\n/reset\n{q}\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == (reference["fp32"][3] + "\n") * 2
    assert "[conversation reset]" in r.stderr.decode()


def test_status_shows_the_http_endpoint_and_prefix_cache_hits_and_misses(llm_daemon, http_url):
    agentctl(llm_daemon, "generate", MODEL, "-", "--max-tokens", "2", "-q", stdin="Hello there")
    r = agentctl(llm_daemon, "generate", MODEL, "-", "--max-tokens", "2", "-q", stdin="Hello again")
    assert r.returncode == 0
    r = agentctl(llm_daemon, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert f"{http_url}/v1" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("  llm: "))
    hits = int(line.split("prefix cache: ")[1].split(" hits")[0])
    assert hits >= 1 and "misses" in line
