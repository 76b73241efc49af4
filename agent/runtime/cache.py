"""An exact-match response cache for deterministic tensor requests, bounded in bytes.

A key is the model, the variant and device that would serve the request, and a BLAKE2b digest of the
input descriptions and bytes, so a swap changes every key; the runtime also drops a model's entries
when it swaps (their memory is freed at once, and nothing from the old variant can be returned). The
bound counts the output bytes of every entry plus a fixed overhead; the least recently used entries
go first. Opt-in per model (``[serving] cache_bytes`` in the manifest); off by default.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

ENTRY_OVERHEAD = 256   # bytes charged per entry for the key, the header and the record itself


@dataclass(frozen=True)
class Entry:
    outputs: list[dict[str, Any]]
    data: bytes
    variant: str
    device: str
    run_ms: float

    @property
    def nbytes(self) -> int:
        return len(self.data) + ENTRY_OVERHEAD


def digest(descs: list[dict[str, Any]] | bytes, payload: memoryview | bytes) -> bytes:
    """The key of a request: its input descriptions (or their JSON) and bytes."""
    h = hashlib.blake2b(descs if isinstance(descs, bytes) else orjson.dumps(descs), digest_size=16)
    h.update(payload)
    return h.digest()


class ResponseCache:
    """LRU by bytes. ``max_bytes`` 0 disables it (``get`` misses, ``put`` drops)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[str, str, bytes], Entry] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.invalidations = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, variant: str, device: str, key: bytes) -> Entry | None:
        e = self.entries.get((variant, device, key))
        if e is None:
            self.misses += 1
            return None
        self.entries.move_to_end((variant, device, key))
        self.hits += 1
        return e

    def put(self, key: bytes, entry: Entry) -> bool:
        """Store ``entry`` (False when it alone exceeds the bound)."""
        if entry.nbytes > self.max_bytes:
            return False
        k = (entry.variant, entry.device, key)
        old = self.entries.pop(k, None)
        if old is not None:
            self.bytes -= old.nbytes
        self.entries[k] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes:
            _, gone = self.entries.popitem(last=False)
            self.bytes -= gone.nbytes
            self.evictions += 1
        return True

    def invalidate(self) -> int:
        """Drop every entry (on a swap); returns how many there were."""
        n = len(self.entries)
        self.entries.clear()
        self.bytes = 0
        if n:
            self.invalidations += 1
        return n

    def stats(self) -> dict[str, Any]:
        looked = self.hits + self.misses
        return {"max_bytes": self.max_bytes, "bytes": self.bytes, "entries": len(self.entries),
                "hits": self.hits, "misses": self.misses, "hit_rate": round(self.hits / looked, 4) if looked else None,
                "evictions": self.evictions, "invalidations": self.invalidations}
