"""Tokenizer, chat template, streaming detokenization, prefix cache bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
from tiny import CHATML

from agent.errors import InvalidParams
from agent.llm.prefix_cache import PrefixCache
from agent.llm.tokenizer import StreamDecoder, chat_settings_from_gguf_template, load_tokenizer, render_chat


@pytest.fixture()
def tok(tiny_build):  # type: ignore[no-untyped-def]
    return load_tokenizer(tiny_build["tokenizer"])


def test_digits_are_split_one_by_one_like_smollm(tok):
    assert tok.encode("in 2024").tokens == ["in", "Ġ", "2", "0", "2", "4"]


def test_special_tokens_are_single_ids_and_merges_apply(tok):
    enc = tok.encode("<|im_start|>the")
    assert enc.ids[0] == 1 and enc.tokens[1:] == ["t", "he"]


def test_round_trip_of_mixed_text(tok):
    text = "Déjà vu: 3 × 4 = 12 — naïve café ☕\n\tend"
    assert tok.decode(tok.encode(text).ids) == text


def test_stream_decoder_holds_back_half_a_utf8_character(tok):
    ids = tok.encode("é").ids  # two byte tokens
    assert len(ids) == 2
    d = StreamDecoder(tok)
    assert d.push(ids[0]) == ""
    assert d.push(ids[1]) == "é"


def test_stream_decoder_pieces_join_to_the_full_text(tok):
    text = "naïve ☕ the 42 apples"
    d = StreamDecoder(tok)
    pieces = [d.push(i) for i in tok.encode(text).ids] + [d.flush()]
    assert "".join(pieces) == text


def test_chatml_template_adds_default_system_and_generation_prompt():
    s = chat_settings_from_gguf_template(CHATML)
    assert s == {"chat_template": "chatml", "default_system_prompt": "You are tiny."}
    out = render_chat([{"role": "user", "content": "Hi"}], **s)
    assert out == ("<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\n")
    own = render_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], **s)
    assert own.startswith("<|im_start|>system\nS<|im_end|>")


def test_unknown_chat_template_is_invalid():
    with pytest.raises(InvalidParams, match="chat_template"):
        render_chat([{"role": "user", "content": "x"}], chat_template="jinja")


def kv(n: int, width: int = 4) -> tuple[np.ndarray, ...]:
    return (np.full((1, 1, n, width), n, np.float32), np.zeros((1, 1, n, width), np.float32))


def test_prefix_cache_returns_the_longest_common_prefix_sliced():
    c = PrefixCache(1 << 20, min_tokens=2)
    c.insert([1, 2, 3, 4, 5, 6], kv(6))
    n, got = c.lookup([1, 2, 3, 4, 9, 9, 9, 9])
    assert n == 4 and got is not None and got[0].shape[2] == 4
    assert c.stats().hits == 1 and c.stats().reused_tokens == 4


def test_prefix_cache_always_leaves_min_compute_tokens_to_compute():
    c = PrefixCache(1 << 20, min_tokens=2)
    c.insert(list(range(1, 11)), kv(10))
    n, got = c.lookup(list(range(1, 11)))       # a repeated prompt: its last 4 tokens are run again
    assert n == 6 and got is not None and got[0].shape[2] == 6
    assert PrefixCache(1 << 20, min_tokens=2, min_compute=1).lookup([1, 2, 3])[0] == 0   # nothing stored
    one = PrefixCache(1 << 20, min_tokens=2, min_compute=1)
    one.insert([1, 2, 3, 4], kv(4))
    assert one.lookup([1, 2, 3, 4])[0] == 3
    assert c.lookup([1, 2, 3, 4, 5])[0] == 0    # 5 - 4 leaves one token reused: below min_tokens, a miss


def test_prefix_cache_counts_misses_below_min_tokens():
    c = PrefixCache(1 << 20, min_tokens=4)
    c.insert([1, 2, 3, 4, 5], kv(5))
    assert c.lookup([1, 2, 7, 7, 7]) == (0, None)
    assert c.stats().misses == 1


def test_prefix_cache_evicts_least_recently_used_within_its_byte_budget():
    one = sum(a.nbytes for a in kv(8))
    c = PrefixCache(int(one * 2.5), min_tokens=2)
    c.insert([1] * 8, kv(8))
    c.insert([2] * 8, kv(8))
    c.lookup([1] * 8 + [5])  # touch 1: 2 becomes the oldest
    c.insert([3] * 8, kv(8))
    st = c.stats()
    assert st.entries == 2 and st.evictions == 1 and st.bytes <= st.max_bytes
    assert c.lookup([2] * 8 + [5])[1] is None and c.lookup([1] * 8 + [5])[1] is not None


def test_prefix_cache_refuses_an_entry_larger_than_the_budget():
    c = PrefixCache(100, min_tokens=2)
    assert not c.insert([1] * 50, kv(50))
    assert c.stats().entries == 0


def test_prefix_cache_replaces_an_entry_it_extends():
    c = PrefixCache(1 << 20, min_tokens=2)
    c.insert([1, 2, 3], kv(3))
    c.insert([1, 2, 3, 4, 5], kv(5))
    assert c.stats().entries == 1
    assert not c.insert([1, 2, 3], kv(3))  # already covered
