"""The Ollama and Prometheus doors on the real SmolLM2-135M-Instruct zoo (slow; needs a built zoo).

    AGENT_SMOLLM2_ZOO=/path/to/zoo .venv/bin/python -m pytest tests/doors -m slow
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ZOO = os.environ.get("AGENT_SMOLLM2_ZOO")
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):  # type: ignore[no-untyped-def]
    if not ZOO or not (Path(ZOO) / "smollm2" / "manifest.toml").exists():
        pytest.skip("set AGENT_SMOLLM2_ZOO to a zoo holding a built smollm2 model")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_llm_serving import private_zoo

    from tests.conftest import start_daemon

    tmp = tmp_path_factory.mktemp("smol-doors")
    private_zoo(Path(ZOO), "smollm2", ["fp32", "int8"], tmp / "zoo")
    d = start_daemon(tmp / "zoo", tmp, "--http", "127.0.0.1:0", "--spare-workers", "0")
    with d.client(timeout=300) as c:
        url = c.status()["daemon"]["http"]
    yield d, url
    d.stop()


def test_smollm2_answers_paris_through_the_ollama_client_and_tags_follow_the_pin(smol):
    ollama = pytest.importorskip("ollama")
    d, url = smol
    with ollama.Client(host=url, timeout=300) as c, d.client(timeout=300) as ipc:
        ipc.pin("smollm2", "fp32")
        r = c.chat(model="smollm2", messages=CHAT, options={"num_predict": 16})
        assert "Paris" in r.message.content and r.model == "smollm2:fp32"
        streamed = "".join(p.message.content or "" for p in c.chat(model="smollm2", messages=CHAT, stream=True,
                                                                   options={"num_predict": 16}))
        assert streamed == r.message.content
        ipc.pin("smollm2", "int8")
        g = c.generate(model="smollm2:int8", prompt=CHAT[0]["content"], options={"num_predict": 8})
        assert g.model == "smollm2:int8" and g.eval_count == 8
        assert [m.model for m in c.ps().models] == ["smollm2:int8"]
        ipc.unpin("smollm2")


def test_metrics_after_smollm2_traffic_show_tokens_and_kv_memory(smol):
    parser = pytest.importorskip("prometheus_client.parser")
    import urllib.request

    _, url = smol
    with urllib.request.urlopen(url + "/metrics", timeout=60) as resp:
        fams = {f.name: f for f in parser.text_string_to_metric_families(resp.read().decode())}
    toks = sum(s.value for s in fams["agent_generated_tokens"].samples if s.name.endswith("_total"))
    assert toks >= 8 + 2   # the int8 generate ran its 8 tokens; the fp32 chats stop at EOS
    assert next(s.value for s in fams["agent_prefix_cache_bytes"].samples) > 0
