"""Shared memory over a memfd: one side grows it (``ftruncate``), the other remaps when it sees it grew.

Used between the daemon and a worker (large tensors of the framed path) and between a client and a
worker on a lane (:mod:`agent.ipc.lane`, :mod:`agent.runtime.lanes`). A frame that says ``shm`` carries
only the descriptions; the bytes are at offset 0 of the sender's buffer, the outputs in order.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

INLINE_MAX = 64 * 1024   # tensors above this travel in shared memory (daemon <-> worker, lanes), below it inline


class Shm:
    """One memfd mapped in this process; grows when asked to hold more, remaps when the peer grew it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.mm: mmap.mmap | None = None
        self.remap()

    def remap(self) -> None:
        size = os.fstat(self.fd).st_size
        if size != self.size or (self.mm is None and size > 0):
            if self.mm is not None:
                self.mm.close()
            self.mm = mmap.mmap(self.fd, size) if size > 0 else None   # an empty memfd cannot be mapped
            self.size = size

    def ensure(self, n: int) -> None:
        if n > self.size:
            os.ftruncate(self.fd, max(n, self.size * 2))
            self.remap()

    def write(self, bufs: list[Any]) -> int:
        """Copy ``bufs`` one after the other from offset 0 (growing first); returns the bytes written."""
        total = sum(memoryview(b).nbytes for b in bufs)
        self.ensure(max(total, 1))
        assert self.mm is not None
        off = 0
        for b in bufs:
            n = memoryview(b).nbytes
            self.mm[off: off + n] = memoryview(b).cast("B")
            off += n
        return total

    def view(self, n: int, size: int | None = None) -> memoryview:
        """The first ``n`` bytes, after remapping if the peer grew the buffer (to ``size``, when it says)."""
        if size is None or size != self.size or self.mm is None:
            self.remap()
        if n > self.size or self.mm is None:
            raise ValueError(f"shared buffer holds {self.size} bytes, {n} announced")
        return memoryview(self.mm)[:n]

    def close(self) -> None:
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:   # a view is still alive somewhere: the mapping goes with the process
                pass
            self.mm = None
        try:
            os.close(self.fd)
        except OSError:
            pass


def place(result: dict[str, Any], bufs: list[Any], shm: Shm | None,
          inline_max: int) -> tuple[dict[str, Any], list[Any]]:
    """A reply whose buffers exceed ``inline_max`` goes to ``shm`` (when there is one), the rest inline."""
    if shm is None or not bufs or sum(memoryview(b).nbytes for b in bufs) <= inline_max:
        return result, bufs
    shm.write(bufs)
    return {**result, "shm": True, "shm_size": shm.size}, []
