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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.errors import InvalidParams, LoadError, WorkerError
from agent.llm.prefix_cache import KV, PrefixCache
from agent.llm.sampling import GenerationParams, Sampler
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
                 session_options: Mapping[str, str] | None = None, ep_device: Any = None) -> None:
        import onnxruntime as ort

        self.model_path = Path(model_path)
        self.config = dict(config)
        self.threads = int(threads or os.cpu_count() or 1)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for k, v in (session_options or {}).items():
            so.add_session_config_entry(k, v)
        t0 = time.perf_counter()
        try:
            if ep_device is not None:   # an EP device from ort.get_ep_devices() (GPU/NPU), see runtime/devices.py
                so.add_provider_for_devices([ep_device], {})
                self.session = ort.InferenceSession(str(self.model_path), so)
            else:
                self.session = ort.InferenceSession(str(self.model_path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise LoadError(f"{self.model_path}: cannot load the decoder: {e}") from None
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

    def _check_signature(self) -> None:
        ins = {i.name: i for i in self.session.get_inputs()}
        for need in ("input_ids", "attention_mask", "position_ids"):
            if need not in ins:
                raise LoadError(f"{self.model_path}: decoder has no input {need!r}")
        self.past_names = sorted((n for n in ins if n.startswith("past_key_values.")),
                                 key=lambda n: (int(n.split(".")[1]), n.endswith(".value")))
        if not self.past_names:
            raise LoadError(f"{self.model_path}: decoder has no past_key_values.* inputs")
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        outs = [o.name for o in self.session.get_outputs()]
        missing = [n for n in ["logits", *self.present_names] if n not in outs]
        if missing:
            raise LoadError(f"{self.model_path}: decoder lacks outputs {missing[:3]}")
        shape = ins[self.past_names[0]].shape
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])
        for key, got in (("num_kv_heads", self.kv_heads), ("head_dim", self.head_dim),
                         ("num_layers", len(self.past_names) // 2)):
            want = self.config.get(key)
            if want is not None and int(want) != got:
                raise LoadError(f"{self.model_path}: [llm] {key} = {want} but the decoder has {got}")
        self._out_names = ["logits", *self.present_names]

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
        return tuple(np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for _ in self.past_names)

    def forward(self, tokens: Sequence[int], start: int, past: KV) -> tuple[np.ndarray, KV]:
        """Logits [len(tokens), vocab] and the new KV for ``tokens`` at positions ``start``..."""
        n = len(tokens)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([tokens], dtype=np.int64),
            "attention_mask": np.ones((1, start + n), dtype=np.int64),
            "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
        }
        for name, arr in zip(self.past_names, past):
            feeds[name] = arr
        try:
            out = self.session.run(self._out_names, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types, mapped at the boundary
            raise WorkerError(f"{self.model_path.name}: decoder run failed: {' '.join(str(e).split())[:300]}") from None
        return out[0][0], tuple(out[1:])

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

    def _run(self, ids: list[int], p: GenerationParams, cancel: Cancel) -> Iterator[TokenEvent]:
        gid = next(self._ids)
        t0 = time.perf_counter()
        sampler = Sampler(p)
        stream = StreamDecoder(self.tokenizer)
        stops = _StopFilter(p.stop)
        max_new = min(p.max_tokens, self.context_length - len(ids))
        fed = list(ids)
        generated = cached = 0
        ttft = None
        t_first = t0
        finish = "length"
        stopped_by_string = False
        past: KV | None = None
        try:
            with self._lock:
                self._live[gid] = 0
            if _is_cancelled(cancel):
                finish = "cancelled"
            else:
                cached, past = self.prefix_cache.lookup(ids)
                if past is None:
                    cached, past = 0, self.empty_kv()
                logits, past = self.forward(ids[cached:], cached, past)
                self._set_live(gid, past)
                ttft = (time.perf_counter() - t0) * 1000
                t_first = time.perf_counter()
                for step in range(max_new):
                    if _is_cancelled(cancel):
                        finish = "cancelled"
                        break
                    tok = sampler(logits[-1])
                    if tok in self.eos_ids:
                        finish = "stop"
                        break
                    generated += 1
                    text, stopped = stops.push(stream.push(tok))
                    yield TokenEvent(text, tok, step)
                    if stopped:
                        finish, stopped_by_string = "stop", True
                        break
                    if step == max_new - 1:
                        break
                    logits, past = self.forward([tok], len(fed), past)
                    fed.append(tok)
                    self._set_live(gid, past)
            tail = ""
            if finish != "cancelled" and not stopped_by_string:
                tail, hit = stops.push(stream.flush())
                if hit:
                    finish = "stop"
                else:
                    tail += stops.flush()
            if finish != "cancelled" and past is not None:
                self.prefix_cache.insert(fed, past)
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
            past = None
            with self._lock:
                self._live.pop(gid, None)

    def _set_live(self, gid: int, past: KV) -> None:
        with self._lock:
            self._live[gid] = int(sum(a.nbytes for a in past))

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
        }

    def close(self) -> None:
        self.prefix_cache.clear()
        self.session = None  # type: ignore[assignment]
