"""One blocking Client, a stream open, other calls meanwhile: they return, and the stream loses nothing
(real agentd, the tiny causal LM and the MLP)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import MAX_TOKENS, PROMPTS
from tinyzoo import MODEL

pytestmark = pytest.mark.integration


def _within(fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """fn() in a thread, so a deadlock fails the test instead of hanging it."""
    out: list[Any] = []
    errs: list[BaseException] = []

    def go() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errs.append(e)
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn} did not return within {timeout}s with a stream open on the same client"
    if errs:
        raise errs[0]
    return out[0]


def test_status_and_infer_return_while_a_stream_is_open_on_the_same_client(llm_daemon, reference, fp32_active):
    with llm_daemon.client() as c:
        stream = c.generate(MODEL, PROMPTS[0], max_tokens=MAX_TOKENS)
        first = next(stream)
        st = _within(c.status)
        assert MODEL in st["models"]
        r = _within(lambda: c.infer("mlp", {"x": np.ones((1, 16), np.float32)}))
        assert r.outputs["y"].shape == (1, 4)
        rest = list(stream)
        assert first.text + "".join(ch.text for ch in rest) == rest[-1].result["text"] == reference["fp32"][0]
        assert [ch.index for ch in [first, *rest[:-1]]] == list(range(MAX_TOKENS))


def test_a_stream_stopped_early_leaves_the_client_usable(llm_daemon, reference, fp32_active):
    with llm_daemon.client() as c:
        stream = c.generate(MODEL, PROMPTS[1], max_tokens=MAX_TOKENS)
        next(stream)
        assert _within(c.ping) is not None
        stream.close()   # cancels in the daemon and reads up to its final reply
        assert _within(c.status)["models"][MODEL]
        assert c.complete(MODEL, PROMPTS[1], max_tokens=MAX_TOKENS).result["text"] == reference["fp32"][1]


def test_two_streams_on_one_client_interleave_without_mixing(llm_daemon, reference, fp32_active):
    with llm_daemon.client() as c:
        a = c.generate(MODEL, PROMPTS[0], max_tokens=MAX_TOKENS)
        b = c.generate(MODEL, PROMPTS[2], max_tokens=MAX_TOKENS)
        ta, tb = [next(a).text], [next(b).text]
        ta += [ch.text for ch in a]
        tb += [ch.text for ch in b]
        assert "".join(ta[:-1]) + ta[-1] == reference["fp32"][0]
        assert "".join(tb[:-1]) + tb[-1] == reference["fp32"][2]
