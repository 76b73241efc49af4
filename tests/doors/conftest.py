"""Fixtures for the front doors (KServe v2, Ollama, Prometheus, agentctl top): one real agentd with the
tiny causal LM (fp32 + int8) and a real ONNX MLP (fp32 + int8), the HTTP listener on a free loopback
port, and the shipped laptop-workday sensor trace (so battery and thermal readings exist here)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from doors_helpers import LLM, MLP

HAVE_HTTP = all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn"))
TRACE = Path(__file__).resolve().parents[2] / "agent" / "sensors" / "traces" / "laptop_workday.jsonl"


@pytest.fixture(scope="session")
def doors_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agent.testing import make_tensor_zoo
    from tests.serving.tinyzoo import make_tiny_llm_zoo

    zoo = tmp_path_factory.mktemp("doors-zoo")
    make_tiny_llm_zoo(zoo, LLM)
    make_tensor_zoo(zoo, MLP, in_features=16, hidden=32, out_features=4)
    return zoo


@pytest.fixture(scope="session")
def doors_daemon(doors_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not HAVE_HTTP:
        pytest.skip("the HTTP doors need starlette and uvicorn (the 'llm' extra)")
    from tests.conftest import start_daemon

    d = start_daemon(doors_zoo, tmp_path_factory.mktemp("doors-daemon"), "--threads", "1",
                     "--http", "127.0.0.1:0", "--sensors", f"trace:{TRACE},speed=60,loop=1")
    yield d
    d.stop()


@pytest.fixture(scope="session")
def url(doors_daemon: Any) -> str:
    with doors_daemon.client() as c:
        u = c.status()["daemon"]["http"]
    assert u and u.startswith("http://127.0.0.1:")
    return str(u)
