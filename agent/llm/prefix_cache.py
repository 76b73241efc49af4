"""Prefix cache: KV states of earlier prompts, reused when a new prompt starts the same way.

Keyed by token sequences. A lookup finds the stored sequence with the longest common prefix with the
new prompt and returns its KV sliced to that length (attention is causal, so the KV of the first n
tokens depends only on those n tokens). At least ``min_compute`` prompt tokens (4) are always left to
compute, so the engine gets fresh logits *from the same kind of run as a cold prompt*: ONNX Runtime's
int4 MatMulNBits kernels take another path for one to three rows than for a block of rows, and its last
logits then differ from a cold prefill's by up to 0.3, enough to change a greedy answer (measured on
SmolLM2 int4: a repeated prompt recomputing 1 or 2 tokens gave other text in 5 of 8 prompts, 4 or more
gave identical text in 8 of 8). Entries are bounded in bytes and evicted least-recently-used. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KV = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    max_bytes: int
    evictions: int
    reused_tokens: int


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, max_bytes: int, min_tokens: int = 4, seq_axis: int = 2, min_compute: int = 4) -> None:
        self.max_bytes = int(max_bytes)
        self.min_tokens = min_tokens
        self.min_compute = max(1, int(min_compute))
        self.seq_axis = seq_axis
        self._entries: OrderedDict[tuple[int, ...], tuple[KV, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.reused_tokens = 0

    def lookup(self, tokens: Sequence[int]) -> tuple[int, KV | None]:
        """(n, kv): the KV of ``tokens[:n]`` from the best entry, or (0, None) on a miss."""
        with self._lock:
            best_key, best_n = None, 0
            for key in self._entries:
                n = min(_lcp(key, tokens), len(tokens) - self.min_compute)
                if n > best_n:
                    best_key, best_n = key, n
            if best_key is None or best_n < self.min_tokens:
                self.misses += 1
                return 0, None
            self._entries.move_to_end(best_key)
            kv, _ = self._entries[best_key]
            self.hits += 1
            self.reused_tokens += best_n
        sl = [slice(None)] * 4
        sl[self.seq_axis] = slice(0, best_n)
        return best_n, tuple(a if a.shape[self.seq_axis] <= best_n else a[tuple(sl)] for a in kv)

    def insert(self, tokens: Sequence[int], kv: KV) -> bool:
        """Store the KV of ``tokens``. Entries that are a prefix of ``tokens`` are replaced; nothing is
        stored when an entry already covers ``tokens`` or it does not fit the budget."""
        key = tuple(int(t) for t in tokens)
        size = int(sum(a.nbytes for a in kv))
        if len(key) < self.min_tokens or size > self.max_bytes:
            return False
        with self._lock:
            for other in list(self._entries):
                n = _lcp(other, key)
                if n == len(key):  # an entry already holds this prefix (or all of it)
                    self._entries.move_to_end(other)
                    return False
                if n == len(other):  # the new entry extends this one
                    self._drop(other)
            while self._entries and self._bytes + size > self.max_bytes:
                self._drop(next(iter(self._entries)))
                self.evictions += 1
            self._entries[key] = (kv, size)
            self._bytes += size
            return True

    def _drop(self, key: tuple[int, ...]) -> None:
        _, size = self._entries.pop(key)
        self._bytes -= size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._entries), self._bytes, self.max_bytes,
                              self.evictions, self.reused_tokens)
