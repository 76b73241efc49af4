"""Stacking requests along the batch dimension and splitting the outputs back (dynamic batching: the
daemon's queue, :mod:`agent.runtime.batching`, and the worker's lanes, :mod:`agent.runtime.lanes`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from agent.errors import WorkerError
from agent.ipc import protocol as P


class Rows(Protocol):
    """One request of a batch: its input descriptions, their bytes, its rows (dim 0)."""
    descs: list[dict[str, Any]]
    payload: memoryview
    rows: int


def group(descs: list[dict[str, Any]]) -> tuple[Any, ...]:
    return tuple(sorted((d["name"], d["dtype"], tuple(d["shape"][1:])) for d in descs))


def stack(batch: Sequence[Rows]) -> tuple[list[dict[str, Any]], memoryview]:
    """One payload with every input stacked along dim 0, written in place (one copy of the inputs)."""
    feeds = [P.tensors_from(p.descs, p.payload) for p in batch]
    rows = sum(p.rows for p in batch)
    descs: list[dict[str, Any]] = []
    sizes = []
    for d in batch[0].descs:
        shape = [rows, *d["shape"][1:]]
        descs.append({"name": d["name"], "dtype": d["dtype"], "shape": shape})
        sizes.append(P.check_desc(descs[-1])[3])
    buf = bytearray(sum(sizes))
    off = 0
    for d, size in zip(descs, sizes, strict=True):
        dt = np.dtype(d["dtype"])
        out = np.frombuffer(buf, dtype=dt, count=size // dt.itemsize, offset=off).reshape(d["shape"])
        np.concatenate([f[d["name"]] for f in feeds], axis=0, out=out)
        off += size
    return descs, memoryview(buf)


def split(outputs: list[dict[str, Any]], data: memoryview, batch: Sequence[Rows]
          ) -> list[tuple[list[dict[str, Any]], list[Any]]]:
    """Each request's rows of every output, as views (no copy)."""
    outs = P.tensors_from(outputs, data)
    rows = sum(p.rows for p in batch)
    for name, a in outs.items():
        if a.ndim == 0 or a.shape[0] != rows:
            raise WorkerError(f"output {name!r} has shape {list(a.shape)} for a batch of {rows} rows: its first "
                              f"dimension is not the batch dimension; set max_batch = 1 for this model")
    parts = []
    off = 0
    for p in batch:
        descs, bufs = P.tensor_descs({name: a[off: off + p.rows] for name, a in outs.items()})
        parts.append((descs, list(bufs)))
        off += p.rows
    return parts
