"""20 concurrent streaming generations while the variant is pinned back and forth."""

from __future__ import annotations

import asyncio

import pytest
from tinyzoo import MODEL, engine_for, greedy_text

from agent.client import AsyncClient

pytestmark = pytest.mark.integration

CANDIDATES = [f"{w} {i}" for i, w in enumerate(
    ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliet", "Kilo", "Lima"])]
TOKENS = 40


@pytest.fixture(scope="module")
def diverging(llm_zoo):  # type: ignore[no-untyped-def]
    """Prompts whose fp32 and int8 greedy texts differ within their first half, with both texts: a stream
    that mixed tokens from the two variants would match neither."""
    refs = {}
    for v in ("fp32", "int8"):
        e = engine_for(llm_zoo / MODEL, v, threads=1)
        refs[v] = [greedy_text(e, p, TOKENS)[0] for p in CANDIDATES]
        e.close()
    out = []
    for i, p in enumerate(CANDIDATES):
        a, b = refs["fp32"][i], refs["int8"][i]
        first_diff = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        if a != b and first_diff < min(len(a), len(b)) // 2:
            out.append((p, {"fp32": a, "int8": b}))
    assert len(out) >= 4, "the tiny model's variants should diverge early on several prompts"
    return out


def test_twenty_streams_complete_during_pin_flips_and_none_mixes_variants(llm_daemon, diverging, fp32_active):
    flipped = asyncio.Event()   # set once the first pin (to int8) has swapped

    async def one(conn: AsyncClient, i: int) -> tuple[int, str, list, object]:
        # spread the starts over the flips (a swap takes 0.3-1.5 s here, more on a loaded machine): the
        # first ten from the start (fp32), the others from the moment int8 became active, so both
        # variants serve streams however long the swaps take
        if i >= 10:
            await flipped.wait()
        await asyncio.sleep(0.15 * (i % 10))
        prompt = diverging[i % len(diverging)][0]
        chunks = [ch async for ch in conn.generate(MODEL, prompt, max_tokens=TOKENS)]
        return i, prompt, chunks[:-1], chunks[-1]

    async def flipper(conn: AsyncClient, stop: asyncio.Event) -> list[str]:
        pinned = []
        k = 0
        while not stop.is_set() or k < 2:
            v = "int8" if k % 2 == 0 else "fp32"
            await conn.pin(MODEL, v)
            pinned.append(v)
            flipped.set()
            k += 1
            await asyncio.sleep(0.1)
        return pinned

    async def main() -> tuple[list, list[str]]:
        conns = [await AsyncClient(llm_daemon.socket).connect() for _ in range(4)]
        admin = await AsyncClient(llm_daemon.socket).connect()
        stop = asyncio.Event()
        flip = asyncio.ensure_future(flipper(admin, stop))
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(one(conns[i % 4], i) for i in range(20))), 120)
        finally:
            stop.set()
            pinned = await flip
            for c in (*conns, admin):
                await c.close()
        return results, pinned

    results, pinned = asyncio.run(main())
    assert len(results) == 20 and len(pinned) >= 2
    by_prompt = dict(diverging)
    seen = set()
    for i, prompt, tokens, final in results:
        assert final.finish_reason == "length", (i, final)
        assert [t.index for t in tokens] == list(range(TOKENS)), i   # nothing lost or reordered
        text = "".join(t.text for t in tokens) + final.text
        assert text == final.result["text"]
        # the whole stream is exactly what the variant that finished it produces in process
        assert text == by_prompt[prompt][final.variant], (i, final.variant)
        seen.add(final.variant)
    assert seen == {"fp32", "int8"}, f"both variants should have served some streams, saw {seen}"
