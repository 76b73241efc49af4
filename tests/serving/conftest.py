"""Fixtures for the serving tests: a zoo with the tiny causal-lm (fp32 + int8) and a tensor model, one
real agentd (IPC socket + OpenAI-compatible HTTP on a free loopback port) shared by the package, and
the in-process engine's greedy outputs as the reference."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tinyzoo import MODEL, VARIANTS, engine_for, greedy_text, make_tiny_llm_zoo

# seedless greedy prompts: plain prompts and chats (the chat template adds a shared system prefix)
PROMPTS: list[Any] = [
    "The quick brown fox",
    "Once upon a time",
    "1 2 3 4 5",
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
]
MAX_TOKENS = 24
HAVE_HTTP = all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn"))


@pytest.fixture(scope="session")
def llm_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agent.testing import make_tensor_zoo

    zoo = tmp_path_factory.mktemp("llm-zoo")
    make_tiny_llm_zoo(zoo)
    make_tensor_zoo(zoo, "mlp", in_features=16, hidden=32, out_features=4)
    return zoo


@pytest.fixture(scope="session")
def reference(llm_zoo: Path) -> dict[str, list[str]]:
    """{variant: [greedy text of each PROMPTS entry]} from the in-process LLMEngine (one thread)."""
    out = {}
    for v in VARIANTS:
        e = engine_for(llm_zoo / MODEL, v, threads=1)
        out[v] = [greedy_text(e, p, MAX_TOKENS)[0] for p in PROMPTS]
        e.close()
    return out


@pytest.fixture(scope="session")
def llm_daemon(llm_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.conftest import start_daemon

    http = ["--http", "127.0.0.1:0"] if HAVE_HTTP else []
    d = start_daemon(llm_zoo, tmp_path_factory.mktemp("llm-daemon"), "--threads", "1", *http)
    yield d
    d.stop()


@pytest.fixture(scope="session")
def http_url(llm_daemon: Any) -> str:
    if not HAVE_HTTP:
        pytest.skip("the HTTP endpoint needs starlette and uvicorn (the 'llm' extra)")
    with llm_daemon.client() as c:
        url = c.status()["daemon"]["http"]
    assert url and url.startswith("http://127.0.0.1:")
    return str(url)


@pytest.fixture
def fp32_active(llm_daemon: Any) -> Iterator[None]:
    """Pin fp32 before and unpin after, so tests that swap leave the shared daemon as they found it."""
    with llm_daemon.client() as c:
        c.pin(MODEL, "fp32")
    yield
    with llm_daemon.client() as c:
        c.pin(MODEL, "fp32")
        c.unpin(MODEL)


def llm_stats(daemon: Any) -> dict[str, Any]:
    with daemon.client() as c:
        return dict(c.status()["models"][MODEL]["llm"])
