"""Acceptance on the real SmolLM2-135M-Instruct zoo (slow; needs a built zoo).

    AGENT_SMOLLM2_ZOO=/path/to/zoo .venv/bin/python -m pytest tests/serving -m slow

The zoo (built with ``agentctl zoo build model_zoo/smollm2``) is not used in place: its fp32 and int8
variants are hard-linked into a private zoo.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ZOO = os.environ.get("AGENT_SMOLLM2_ZOO")


@pytest.fixture(scope="module")
def smol_daemon(tmp_path_factory):  # type: ignore[no-untyped-def]
    if not ZOO or not (Path(ZOO) / "smollm2" / "manifest.toml").exists():
        pytest.skip("set AGENT_SMOLLM2_ZOO to a zoo holding a built smollm2 model")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_llm_serving import private_zoo

    from tests.conftest import start_daemon

    tmp = tmp_path_factory.mktemp("smol")
    private_zoo(Path(ZOO), "smollm2", ["fp32", "int8"], tmp / "zoo")
    d = start_daemon(tmp / "zoo", tmp, "--http", "127.0.0.1:0", "--spare-workers", "0")
    yield d
    d.stop()


def test_smollm2_fp32_answers_paris_through_the_openai_client_and_every_variant_streams(smol_daemon):
    openai = pytest.importorskip("openai")
    with smol_daemon.client(timeout=300) as c:
        url = c.status()["daemon"]["http"]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        for v in ("fp32", "int8"):
            c.pin("smollm2", v)
            chunks = list(client.chat.completions.create(
                model="smollm2", max_tokens=16, stream=True,
                messages=[{"role": "user", "content": "What is the capital of France?"}]))
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert {ch.system_fingerprint for ch in chunks} == {f"{v}@cpu"}
            assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 3   # it streamed
            if v == "fp32":
                assert "Paris" in text, text
