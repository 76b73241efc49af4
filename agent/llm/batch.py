"""Continuous batching: concurrent generations on one builder-graph decoder share their decode steps.

    b = Batcher(engine, max_batch=8)               # LLMEngine(..., max_batch=8) makes one
    s = b.join(gid, ids, sampler, max_new, cancel)
    for tok in b.tokens(s): ...                    # None: the batcher dropped the stream (cancelled)
    b.finish(s, keep=True)                         # the consumer is done (keep: store its KV in the prefix cache)

One thread per engine steps every stream at once. Between two steps it admits the streams that asked to
join (each prefilled on its own, batch of 1, through the prefix cache, then copied into a row of the batch
buffer) and drops the finished, cancelled and abandoned ones. A step feeds each stream's last sampled
token as one ``[B, 1]`` run; every stream then samples from its own logits row with its own sampler.

The batch buffer is one array per past/present tensor, ``[rows, kv_heads, T, head_dim]``, bound with I/O
binding as both past and present (as ``decoder.BuilderDecoder`` does for one stream). Streams have their
own lengths: GroupQueryAttention reads each row's valid length from ``attention_mask`` (``seqlens_k`` =
the row's ones - 1; rotary positions follow it), so a row is valid up to its own length and padded on
the right with zeros in the mask. Active streams are rows ``0..B-1``; a leaving stream's row is filled
with the last row (one copy of that stream's valid KV). ``rows`` and ``T`` grow by doubling as needed
(copying the valid KV) and the buffer is freed when the last stream leaves. Each stream's KV bytes
(its row) are reported to the engine's ``live_kv_bytes``.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.errors import WorkerError
from agent.llm.decoder import BuilderDecoder, DecodeState, _run_error
from agent.llm.prefix_cache import PrefixCache
from agent.llm.sampling import Sampler

LEAVE_WAIT_S = 30.0


class _Engine(Protocol):
    """What the batcher needs of ``agent.llm.engine.LLMEngine``."""

    decoder: Any
    session: Any
    prefix_cache: PrefixCache
    context_length: int

    def _prefill(self, ids: list[int], capacity: int) -> tuple[int, DecodeState, np.ndarray]: ...

    def _set_live(self, gid: int, nbytes: int) -> None: ...


@dataclass(eq=False)
class Stream:
    """One generation in the batch. ``toks``: sampled tokens (all but the last are fed); ``length``: valid
    KV positions in its row."""

    gid: int
    ids: list[int]
    sampler: Sampler
    max_new: int
    is_cancelled: Callable[[], bool]
    eos: frozenset[int]
    q: queue.SimpleQueue[int | BaseException | None] = field(default_factory=queue.SimpleQueue)
    toks: list[int] = field(default_factory=list)
    length: int = 0
    cached: int = 0
    done: bool = False        # set by the consumer: leave at the next step boundary
    keep: bool = False        # store the KV in the prefix cache when leaving
    left: threading.Event = field(default_factory=threading.Event)


class Batcher:
    def __init__(self, engine: _Engine, max_batch: int) -> None:
        if not isinstance(engine.decoder, BuilderDecoder):
            raise TypeError("continuous batching needs a builder graph (GroupQueryAttention)")
        self.engine = engine
        self.dec: BuilderDecoder = engine.decoder
        self.max_batch = int(max_batch)
        self._cv = threading.Condition()
        self._pending: deque[Stream] = deque()
        self._rows: list[Stream] = []
        self._pool: list[np.ndarray] = []          # [rows, H, T, D] per past/present tensor
        self._binding: Any = None
        self._bound = 0
        self._views: list[np.ndarray] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self.steps = self.stepped_rows = self.joins = self.max_active = self.grows = 0

    # -- the consumer's side ------------------------------------------------------------------------
    def join(self, gid: int, ids: list[int], sampler: Sampler, max_new: int,
             is_cancelled: Callable[[], bool], eos: frozenset[int]) -> Stream:
        s = Stream(gid, list(ids), sampler, max_new, is_cancelled, eos)
        with self._cv:
            if self._closed:
                raise WorkerError("the engine is closed")
            self._pending.append(s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="llm-batch", daemon=True)
                self._thread.start()
            self._cv.notify()
        return s

    @staticmethod
    def tokens(s: Stream) -> Iterator[int | None]:
        """The stream's sampled tokens as they come; None when the batcher dropped it (cancelled)."""
        while True:
            item = s.q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item is None:
                return

    def finish(self, s: Stream, keep: bool) -> None:
        """The consumer is done with ``s``. ``keep``: wait until the batcher stored its KV in the prefix
        cache (so a following request can reuse it)."""
        s.keep = s.keep or keep
        s.done = True
        with self._cv:
            self._cv.notify()
        if keep:
            s.left.wait(LEAVE_WAIT_S)

    def stats(self) -> dict[str, Any]:
        with self._cv:
            pending = len(self._pending)
        pool = self._pool
        return {"max_batch": self.max_batch, "active": len(self._rows), "pending": pending, "steps": self.steps,
                "mean_batch": round(self.stepped_rows / self.steps, 3) if self.steps else None,
                "max_active": self.max_active, "joins": self.joins, "grows": self.grows,
                "buffer_bytes": int(sum(a.nbytes for a in pool)),
                "buffer_rows": int(pool[0].shape[0]) if pool else 0,
                "buffer_tokens": int(pool[0].shape[2]) if pool else 0}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(LEAVE_WAIT_S)

    # -- the batch thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._rows and not self._closed:
                    self._cv.wait()
                if self._closed:
                    dropped = list(self._pending) + self._rows
                    self._pending.clear()
                    break
                joiners: list[Stream] = []
                while self._pending and len(self._rows) + len(joiners) < self.max_batch:
                    joiners.append(self._pending.popleft())
            try:
                self._turn(joiners)
            except Exception as e:  # noqa: BLE001 - never leave a consumer waiting on a dead thread
                err = WorkerError(f"{self.dec.name}: continuous batching failed: {type(e).__name__}: {e}")
                for s in [*joiners, *self._rows]:
                    if not s.left.is_set():
                        s.q.put(err)
                        s.left.set()
                self._reset()
        for s in dropped:
            s.q.put(WorkerError("the engine was closed during the generation"))
            s.left.set()
        self._reset()

    def _reset(self) -> None:
        """No stream, no batch buffer, no binding."""
        self._rows, self._pool, self._binding, self._views = [], [], None, []

    def _turn(self, joiners: list[Stream]) -> None:
        """Between two steps: admit the joiners, drop the finished and cancelled streams; then one step."""
        for s in joiners:
            self._admit(s)
        for s in list(self._rows):
            if s.done or s.is_cancelled():
                cancelled = not s.done
                self._leave(s, keep=s.keep and not cancelled)
                if cancelled:
                    s.q.put(None)
        if self._rows:
            self._step()

    def _admit(self, s: Stream) -> None:
        if s.done or s.is_cancelled():
            s.q.put(None)
            s.left.set()
            return
        try:
            cached, st, logits = self.engine._prefill(s.ids, len(s.ids))
        except Exception as e:  # noqa: BLE001 - the stream's own failure goes to its consumer
            s.q.put(e)
            s.left.set()
            return
        n = len(s.ids)
        try:
            self._ensure(len(self._rows) + 1, n + 1)
            r = len(self._rows)
            for dst, src in zip(self._pool, st.kv, strict=True):
                dst[r, :, :n] = src[0, :, :n]
        finally:
            self.dec.release(st)
        s.length, s.cached = n, cached
        self._rows.append(s)
        self.joins += 1
        self.max_active = max(self.max_active, len(self._rows))
        self.engine._set_live(s.gid, self._row_bytes())
        self._emit(s, s.sampler(logits))

    def _emit(self, s: Stream, tok: int) -> None:
        """Record a sampled token; a stream that ended (EOS, max_new) leaves before its consumer sees it."""
        s.toks.append(tok)
        if tok in s.eos or len(s.toks) >= s.max_new:
            self._leave(s, keep=True)
        s.q.put(tok)

    def _step(self) -> None:
        rows = list(self._rows)
        n = len(rows)
        total = max(s.length for s in rows) + 1
        self._ensure(n, total)
        dec, ort = self.dec, self.dec._ort
        if self._binding is None or self._bound != n:
            self._bind(n)
        b = self._binding
        b.bind_cpu_input("input_ids", np.asarray([[s.toks[-1]] for s in rows], dtype=np.int64))
        mask = np.zeros((n, total), np.int64)
        for i, s in enumerate(rows):
            mask[i, : s.length + 1] = 1
        b.bind_cpu_input("attention_mask", mask)
        if dec.has_logits_to_keep:
            b.bind_cpu_input("logits_to_keep", np.asarray([1], dtype=np.int64))
        logits = np.empty((n, 1, dec._vocab), np.float32)
        b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        try:
            self.engine.session.run_with_iobinding(b)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own types; every stream of the step gets it
            err = _run_error(dec.name, e)
            for s in rows:
                self._leave(s, keep=False)
                s.q.put(err)
            return
        self.steps += 1
        self.stepped_rows += n
        for s in rows:              # every row's new K/V is written: lengths first (a leave moves rows)
            s.length += 1
        for i, s in enumerate(rows):
            self._emit(s, s.sampler(logits[i, 0]))

    # -- the batch buffer ---------------------------------------------------------------------------
    def _row_bytes(self) -> int:
        return int(sum(a[0].nbytes for a in self._pool))

    def _ensure(self, rows: int, tokens: int) -> None:
        """Grow the buffer to at least ``rows`` rows of ``tokens`` positions (doubling; valid KV copied)."""
        have_rows = self._pool[0].shape[0] if self._pool else 0
        have_t = self._pool[0].shape[2] if self._pool else 0
        if rows <= have_rows and tokens <= have_t:
            return
        new_rows = have_rows if rows <= have_rows else min(self.max_batch, max(rows, 2 * have_rows))
        limit = max(self.engine.context_length, tokens, self.dec.min_capacity)
        new_t = have_t if tokens <= have_t else min(limit, max(tokens, 2 * have_t, 64))
        new_t = max(new_t, self.dec.min_capacity)
        shape = (new_rows, self.dec.kv_heads, new_t, self.dec.head_dim)
        new = [np.zeros(shape, np.float32) for _ in self.dec.past_names]
        live = list(self._rows)
        if live and self._pool:
            m = max(s.length for s in live)
            for dst, src in zip(new, self._pool, strict=True):
                dst[: len(live), :, :m] = src[: len(live), :, :m]
        self._pool, self._binding, self._views = new, None, []
        self.grows += 1
        nb = self._row_bytes()
        for s in live:
            self.engine._set_live(s.gid, nb)

    def _bind(self, n: int) -> None:
        ort = self.dec._ort
        self._views = [a[:n] for a in self._pool]         # contiguous: the leading rows of each array
        b = self.engine.session.io_binding()
        for pn, on, view in zip(self.dec.past_names, self.dec.present_names, self._views, strict=True):
            v = ort.OrtValue.ortvalue_from_numpy(view)
            b.bind_ortvalue_input(pn, v)
            b.bind_ortvalue_output(on, v)
        self._binding, self._bound = b, n

    def _leave(self, s: Stream, keep: bool) -> None:
        if s not in self._rows:
            return
        r = self._rows.index(s)
        if keep:
            key = (s.ids + s.toks)[: s.length]
            kv = tuple(np.ascontiguousarray(a[r: r + 1, :, : s.length]) for a in self._pool)
            self.engine.prefix_cache.insert(key, kv)
        last = len(self._rows) - 1
        if r != last:
            m = self._rows[last]
            for a in self._pool:
                a[r, :, : m.length] = a[last, :, : m.length]
            self._rows[r] = m
        self._rows.pop()
        self._binding = None
        if not self._rows:
            self._pool, self._views = [], []
        s.left.set()
