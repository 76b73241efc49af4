"""The response cache: exact-match hits, misses, the byte bound, invalidation on swap, status counters."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from agent.ipc import protocol as P
from agent.runtime.cache import ENTRY_OVERHEAD, Entry, ResponseCache, digest
from agent.runtime.manager import Runtime
from agent.zoo.manifest import load_zoo


def _entry(n: int, variant: str = "fp32") -> Entry:
    return Entry([{"name": "y", "dtype": "uint8", "shape": [n]}], bytes(n), variant, "cpu", 0.1)


def test_the_cache_evicts_least_recently_used_entries_to_stay_within_its_bound():
    c = ResponseCache(3 * (100 + ENTRY_OVERHEAD))
    for k in (b"a", b"b", b"c"):
        assert c.put(k, _entry(100))
    assert c.get("fp32", "cpu", b"a") is not None      # a is now the most recently used
    assert c.put(b"d", _entry(100))
    assert c.get("fp32", "cpu", b"b") is None           # b was the least recently used
    assert c.get("fp32", "cpu", b"a") is not None
    assert c.bytes <= c.max_bytes and len(c.entries) == 3
    assert c.evictions == 1
    assert not c.put(b"huge", _entry(10_000))           # larger than the bound: not stored, nothing evicted
    assert len(c.entries) == 3


def test_keys_include_the_variant_and_every_input_byte():
    c = ResponseCache(1 << 20)
    descs = [{"name": "x", "dtype": "float32", "shape": [1, 2]}]
    k1 = digest(descs, np.array([[1, 2]], np.float32).tobytes())
    k2 = digest(descs, np.array([[1, 3]], np.float32).tobytes())
    k3 = digest([{"name": "x", "dtype": "float32", "shape": [2, 1]}], np.array([[1, 2]], np.float32).tobytes())
    assert len({k1, k2, k3}) == 3
    c.put(k1, _entry(8, "fp32"))
    assert c.get("int8", "cpu", k1) is None and c.get("fp32", "gpu", k1) is None
    assert c.get("fp32", "cpu", k1) is not None
    assert (c.hits, c.misses) == (1, 2)


def _req(x):
    descs, bufs = P.tensor_descs({"x": x})
    return descs, memoryview(bytes(bufs[0]))


def test_repeated_requests_hit_until_a_swap_invalidates_them(cache_zoo):
    models, _ = load_zoo(cache_zoo)
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)

    async def go():
        rt = Runtime(models, spare_workers=0)
        try:
            await rt.swap("mlp", "fp32")
            first = await rt.infer("mlp", *_req(x))
            again = await rt.infer("mlp", *_req(x))
            other = await rt.infer("mlp", *_req(y))
            before = rt.status()["mlp"]["cache"]
            await rt.swap("mlp", "int8", reason={"why": "test"})
            after_swap = rt.status()["mlp"]["cache"]
            on_int8 = await rt.infer("mlp", *_req(x))
            return first, again, other, on_int8, before, after_swap, rt.status()["mlp"]["cache"]
        finally:
            await rt.close()

    first, again, other, on_int8, before, after_swap, end = asyncio.run(go())
    assert (first.cached, again.cached, other.cached) == (False, True, False)
    assert again.data == first.data and again.variant == "fp32"
    assert before["hits"] == 1 and before["misses"] == 2 and before["entries"] == 2
    assert after_swap["entries"] == 0 and after_swap["invalidations"] == 1 and after_swap["bytes"] == 0
    assert on_int8.cached is False and on_int8.variant == "int8" and on_int8.data != first.data
    assert end["entries"] == 1 and 0 < end["bytes"] <= end["max_bytes"]


def test_the_daemon_shows_cache_hits_in_status_and_marks_cached_replies(cache_zoo, tmp_path):
    from tests.conftest import start_daemon

    d = start_daemon(cache_zoo, tmp_path)
    try:
        x = np.ones((1, 256), np.float32)
        with d.client() as c:
            a = c.infer("mlp", {"x": x})
            b = c.infer("mlp", {"x": x})
            st = c.status()["models"]["mlp"]["cache"]
        shown = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(d.socket), "status"],
                               capture_output=True, text=True, timeout=60)
        assert "response cache: 1 hits, 1 misses, 1 entries" in shown.stdout, shown.stdout + shown.stderr
        assert a.extra["cached"] is False and b.extra["cached"] is True
        np.testing.assert_array_equal(a.outputs["y"], b.outputs["y"])
        assert st["hits"] == 1 and st["misses"] == 1 and st["max_bytes"] == 4096
    finally:
        d.stop()


def test_a_model_without_serving_options_has_no_cache(tensor_zoo):
    models, _ = load_zoo(tensor_zoo)
    rt = Runtime(models)
    assert rt.status()["mlp"]["cache"] is None
    with pytest.raises(ValueError):
        ResponseCache(-1)
