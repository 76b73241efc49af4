"""In-process generation engine: an ONNX decoder with a KV cache on onnxruntime.

    engine = LLMEngine("fp32.onnx", "tokenizer.json", llm_table, threads=2)
    for ev in engine.generate([{"role": "user", "content": "Hi"}], {"max_tokens": 32}, cancel=event):
        print(ev.text, end="")          # the last event has finish_reason and usage
    engine.stats()

The loop: tokenize (chat template for messages) -> reuse the longest cached prefix's KV -> prefill
the rest -> sample, feed one token per step. Every step checks ``cancel`` (a ``threading.Event`` or a
callable returning True to stop). A generation that finishes normally stores its KV in the prefix
cache; a cancelled or abandoned one drops it (``stats()["live_kv_bytes"]`` returns to 0).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.errors import InvalidParams, LoadError
from agent.llm.batch import Batcher, Stream
from agent.llm.decoder import KV, BuilderDecoder, Decoder, DecodeState, open_decoder
from agent.llm.prefix_cache import PrefixCache
from agent.llm.sampling import GenerationParams, Sampler
from agent.llm.speculative import Speculator
from agent.llm.tokenizer import StreamDecoder, load_tokenizer, render_chat

DEFAULT_PREFIX_CACHE_BYTES = 64 << 20


class _Settable(Protocol):
    def is_set(self) -> bool: ...


Cancel = _Settable | Callable[[], bool] | None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float
    decode_tokens_per_s: float | None
    total_ms: float


@dataclass(frozen=True)
class TokenEvent:
    """One generated token and the text it completes (may be "" while a UTF-8 character or a possible
    stop sequence is held back). The last event has ``finish_reason`` ("stop" | "length" |
    "cancelled") and ``usage``; its token_id is None."""

    text: str
    token_id: int | None
    index: int
    finish_reason: str | None = None
    usage: Usage | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.usage is None:
            d.pop("usage")
        return d


def _is_cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    if is_set is not None:
        return bool(is_set())
    return bool(cancel())  # type: ignore[operator]


class _StopFilter:
    """Holds back text that might be the start of a stop sequence; finds the first stop."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = ""

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        self.buf += piece
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[: min(hits)], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(self.buf) - hold:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class LLMEngine:
    """One decoder variant, loaded once; ``generate`` may run from several threads."""

    def __init__(self, model_path: str | Path, tokenizer_path: str | Path, config: Mapping[str, Any],
                 threads: int | None = None, *, prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
                 session_options: Mapping[str, str] | None = None, session: Any = None,
                 max_batch: int = 1) -> None:
        """``session``: an ONNX Runtime session already opened on the model (the worker's LLM backend opens
        it through :func:`agent.runtime.session.open_session`, on the device it was asked for); without
        one, a CPU session is opened here (tools and tests running the engine in process). ``max_batch`` > 1
        steps concurrent streams of a builder graph together (:mod:`agent.llm.batch`)."""
        self.model_path = Path(model_path)
        self.config = dict(config)
        self.threads = int(threads or os.cpu_count() or 1)
        t0 = time.perf_counter()
        self.session = session if session is not None else self._cpu_session(session_options)
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.tokenizer = load_tokenizer(Path(tokenizer_path))
        self._check_signature()
        self.eos_ids = frozenset(int(t) for t in self.config.get("eos_token_ids", []))
        self.context_length = int(self.config.get("context_length", 2048))
        self.chat_template = str(self.config.get("chat_template", "chatml"))
        self.default_system_prompt = str(self.config.get("default_system_prompt", ""))
        self.add_bos = bool(self.config.get("add_bos", False))
        self.bos_id = int(self.config.get("bos_token_id", -1))
        self.prefix_cache = PrefixCache(prefix_cache_bytes)
        self._lock = threading.Lock()
        self._live: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cancelled": 0}
        self.speculator: Speculator | None = None
        self.batcher: Batcher | None = None
        if max_batch > 1 and isinstance(self.decoder, BuilderDecoder):   # legacy graphs step one by one
            self.batcher = Batcher(self, max_batch)

    def _cpu_session(self, session_options: Mapping[str, str] | None) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for k, v in (session_options or {}).items():
            so.add_session_config_entry(k, v)
        try:
            return ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise LoadError(f"{self.model_path}: cannot load the decoder: {e}") from None

    def set_draft(self, draft: LLMEngine | None, k: int = 4, min_p: float = 0.0, share_kv: bool = True) -> None:
        """Serve greedy requests with speculative decoding: ``draft`` (a smaller variant of the same model,
        same tokenizer) proposes ``k`` tokens, this variant verifies them in one run. The output is this
        variant's own greedy output. None turns it off. ``share_kv``: the draft takes this variant's KV
        where the two graphs' KV signatures match (agent.llm.speculative)."""
        if draft is None:
            self.speculator = None
            return
        self.speculator = Speculator(self, draft, k, min_p, share_kv)

    def _check_signature(self) -> None:
        self.decoder = open_decoder(self.session, self.model_path.name, self.config)
        self.family = self.decoder.family
        self.past_names = self.decoder.past_names
        self.present_names = self.decoder.present_names
        self.kv_heads, self.head_dim = self.decoder.kv_heads, self.decoder.head_dim

    # -- tokens ---------------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[Mapping[str, Any]]) -> list[int]:
        if isinstance(prompt, str):
            text = prompt
        else:
            text = render_chat(prompt, self.chat_template, self.default_system_prompt)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        if self.add_bos and self.bos_id >= 0:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- model ----------------------------------------------------------------------------------------
    def empty_kv(self) -> KV:
        return self.decoder.empty_kv()

    def forward(self, tokens: Sequence[int], start: int, past: KV) -> tuple[np.ndarray, KV]:
        """Logits [len(tokens), vocab] and the new KV for ``tokens`` at positions ``start``... (plain run:
        every position's logits; for perplexity and references. Generation uses ``decoder.run``.)"""
        return self.decoder.forward(tokens, start, past)

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[Mapping[str, Any]],
                 params: GenerationParams | Mapping[str, Any] | None = None,
                 cancel: Cancel = None) -> Iterator[TokenEvent]:
        """Stream TokenEvents. Raises InvalidParams at the call for a bad request (before any token)."""
        p = params if isinstance(params, GenerationParams) else GenerationParams.from_dict(params)
        ids = self.encode(prompt)
        if not ids:
            raise InvalidParams("prompt: expected some text, got an empty prompt")
        if len(ids) >= self.context_length:
            raise InvalidParams(f"prompt: {len(ids)} tokens do not fit the context of {self.context_length}")
        return self._run(ids, p, cancel)

    def _prefill(self, ids: list[int], capacity: int, dec: Decoder | None = None,
                 cache: PrefixCache | None = None) -> tuple[int, DecodeState, np.ndarray]:
        """A new KV state holding ``ids`` (the longest cached prefix copied in, the rest computed) and the
        logits after the last prompt token."""
        dec = dec or self.decoder
        cache = cache if cache is not None else self.prefix_cache
        st = dec.new_state(capacity)
        cached, kv = cache.lookup(ids)
        if kv is not None:
            dec.load_prefix(st, kv, cached)
        else:
            cached = 0
        logits = dec.run(st, ids[cached:], keep=1)[-1]
        return cached, st, logits

    def _plain_tokens(self, gid: int, st: DecodeState, logits: np.ndarray,
                      sampler: Sampler) -> Generator[int, None, None]:
        """Sampled tokens, one model step each (a token is fed only when the next one is asked for)."""
        while True:
            tok = sampler(logits)
            yield tok
            logits = self.decoder.run(st, [tok], keep=1)[-1]
            self._set_live(gid, st.nbytes)

    def _run(self, ids: list[int], p: GenerationParams, cancel: Cancel) -> Iterator[TokenEvent]:
        gid = next(self._ids)
        t0 = time.perf_counter()
        sampler = Sampler(p)
        stream = StreamDecoder(self.tokenizer)
        stops = _StopFilter(p.stop)
        max_new = min(p.max_tokens, self.context_length - len(ids))
        out: list[int] = []
        generated = cached = 0
        ttft = None
        t_first = t0
        finish = "length"
        stopped_by_string = False
        st: DecodeState | None = None
        spec = self.speculator if (self.speculator is not None and p.temperature == 0.0) else None
        batcher = self.batcher if spec is None else None
        joined: Stream | None = None
        source: Iterator[int | None] | None = None
        try:
            with self._lock:
                self._live[gid] = 0
            if _is_cancelled(cancel):
                finish = "cancelled"
            elif batcher is not None:   # continuous batching: the batch thread prefills and steps it
                joined = batcher.join(gid, ids, sampler, max_new, lambda: _is_cancelled(cancel), self.eos_ids)
                source = batcher.tokens(joined)
            else:
                extra = spec.k + 1 if spec is not None else 0
                cached, st, logits = self._prefill(ids, min(len(ids) + max_new + extra, self.context_length))
                self._set_live(gid, st.nbytes)
                if spec is not None:
                    source = spec.tokens(ids, st, logits, lambda n: self._set_live(gid, n))
                else:
                    source = self._plain_tokens(gid, st, logits, sampler)
                ttft = (time.perf_counter() - t0) * 1000
                t_first = time.perf_counter()
            if source is not None:
                for step in range(max_new):
                    if _is_cancelled(cancel):
                        finish = "cancelled"
                        break
                    tok = next(source)
                    if tok is None:          # the batch thread saw the cancellation first
                        finish = "cancelled"
                        break
                    if ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000
                        t_first = time.perf_counter()
                        cached = joined.cached if joined is not None else cached
                    if tok in self.eos_ids:
                        finish = "stop"
                        break
                    generated += 1
                    out.append(tok)
                    text, stopped = stops.push(stream.push(tok))
                    yield TokenEvent(text, tok, step)
                    if stopped:
                        finish, stopped_by_string = "stop", True
                        break
            tail = ""
            if finish != "cancelled" and not stopped_by_string:
                tail, hit = stops.push(stream.flush())
                if hit:
                    finish = "stop"
                else:
                    tail += stops.flush()
            if finish != "cancelled" and joined is not None and batcher is not None:
                batcher.finish(joined, keep=True)   # its KV goes to the prefix cache before the last event
            if finish != "cancelled" and st is not None:
                seq = ids + out
                self.decoder.truncate(st, min(st.length, len(seq)))
                self.prefix_cache.insert(seq[: st.length], self.decoder.export(st))
            elapsed = time.perf_counter() - t_first
            usage = Usage(
                prompt_tokens=len(ids), completion_tokens=generated,
                cached_tokens=cached,
                ttft_ms=ttft or 0.0,
                decode_tokens_per_s=(generated - 1) / elapsed if generated > 1 and elapsed > 0 else None,
                total_ms=(time.perf_counter() - t0) * 1000,
            )
            with self._lock:
                self._totals["requests"] += 1
                self._totals["prompt_tokens"] += len(ids)
                self._totals["completion_tokens"] += generated
                self._totals["cancelled"] += finish == "cancelled"
            yield TokenEvent(tail, None, generated, finish, usage)
        finally:
            if joined is not None and batcher is not None:
                batcher.finish(joined, keep=False)
            if isinstance(source, Generator):
                source.close()
            if st is not None:
                self.decoder.release(st)
            st = None
            with self._lock:
                self._live.pop(gid, None)

    def _set_live(self, gid: int, nbytes: int) -> None:
        with self._lock:
            if gid in self._live:   # a batched stream's row may be resized after its generation ended
                self._live[gid] = int(nbytes)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            live = dict(self._live)
            totals = dict(self._totals)
        return {
            "model": str(self.model_path),
            "threads": self.threads,
            "load_ms": round(self.load_ms, 1),
            **totals,
            "active_generations": len(live),
            "live_kv_bytes": sum(live.values()),
            "prefix_cache": asdict(self.prefix_cache.stats()),
            "family": self.family,
            "speculative": self.speculator.stats() if self.speculator is not None else None,
            "batching": self.batcher.stats() if self.batcher is not None else None,
        }

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.prefix_cache.clear()
        if self.speculator is not None:
            self.speculator.draft.close()
            self.speculator = None
        self.session = None  # type: ignore[assignment]
