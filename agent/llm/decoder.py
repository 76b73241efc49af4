"""Decoder runners: one ONNX decoder session, two graph families, one stepping interface.

    dec = open_decoder(session, config)          # family detected from the graph's inputs
    st = dec.new_state(capacity=prompt_len + max_new)
    logits = dec.run(st, prompt_ids)             # [keep, vocab] for the last ``keep`` positions
    logits = dec.run(st, [tok])                  # one decode step; st.length grows by len(tokens)
    dec.truncate(st, n)                          # roll back (speculative decoding, prefix reuse)

* ``builder`` (onnxruntime-genai model builder: GroupQueryAttention, no ``position_ids``): every
  generation owns one preallocated buffer per past/present tensor, [1, kv_heads, capacity, head_dim],
  bound with ORT I/O binding as *both* ``past_key_values.i.*`` and ``present.i.*``. GroupQueryAttention
  sees the same pointer and writes the new keys/values in place (``past_present_share_buffer``), so a
  step copies nothing but the new token's K/V; ``attention_mask``'s length tells it how much is valid.
  Rolling back is just a smaller length. If the graph has a ``logits_to_keep`` input (added by
  ``agent.llm.graph_edit``), only the last positions' logits are computed.
* ``legacy`` (the hand-written graph of ``agent.llm.graph``: ``position_ids``, Concat-grown KV):
  past arrays in, present arrays out, each step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.errors import LoadError, WorkerError

KV = tuple[np.ndarray, ...]


def _run_error(name: str, e: Exception) -> WorkerError:
    return WorkerError(f"{name}: decoder run failed: {' '.join(str(e).split())[:300]}")


@dataclass
class DecodeState:
    """One generation's KV cache. ``length`` tokens are valid."""

    length: int = 0
    capacity: int = 0
    kv: list[np.ndarray] = field(default_factory=list)   # builder: [1, H, capacity, D]; legacy: [1, H, length, D]
    binding: Any = None
    values: list[Any] = field(default_factory=list)     # OrtValues over ``kv`` (builder)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.kv))


class Decoder:
    family = "?"

    def __init__(self, session: Any, name: str, past_names: list[str], kv_heads: int, head_dim: int) -> None:
        self.session = session
        self.name = name
        self.past_names = past_names
        self.present_names = [n.replace("past_key_values.", "present.") for n in past_names]
        self.kv_heads, self.head_dim = kv_heads, head_dim
        ins = {i.name for i in session.get_inputs()}
        self.has_position_ids = "position_ids" in ins
        self.has_logits_to_keep = "logits_to_keep" in ins

    # the stepping interface
    def new_state(self, capacity: int) -> DecodeState:
        raise NotImplementedError

    def run(self, st: DecodeState, tokens: Sequence[int], keep: int = 1) -> np.ndarray:
        raise NotImplementedError

    def truncate(self, st: DecodeState, n: int) -> None:
        raise NotImplementedError

    def load_prefix(self, st: DecodeState, kv: KV, n: int) -> None:
        raise NotImplementedError

    def export(self, st: DecodeState) -> KV:
        """The valid KV as standalone arrays [1, H, length, D] (for the prefix cache)."""
        raise NotImplementedError

    def release(self, st: DecodeState) -> None:
        st.kv, st.values, st.binding, st.length, st.capacity = [], [], None, 0, 0

    # the plain interface (perplexity, reference): past arrays in, all logits and present arrays out
    def empty_kv(self) -> KV:
        return tuple(np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32) for _ in self.past_names)

    def forward(self, tokens: Sequence[int], start: int, past: KV) -> tuple[np.ndarray, KV]:
        n = len(tokens)
        feeds: dict[str, np.ndarray] = {
            "input_ids": np.asarray([tokens], dtype=np.int64),
            "attention_mask": np.ones((1, start + n), dtype=np.int64),
        }
        if self.has_position_ids:
            feeds["position_ids"] = np.arange(start, start + n, dtype=np.int64)[None]
        if self.has_logits_to_keep:
            feeds["logits_to_keep"] = np.asarray([n], dtype=np.int64)
        for name, arr in zip(self.past_names, past, strict=True):
            feeds[name] = arr
        try:
            out = self.session.run(["logits", *self.present_names], feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types, mapped at the boundary
            raise _run_error(self.name, e) from None
        return out[0][0], tuple(out[1:])


class LegacyDecoder(Decoder):
    family = "legacy"

    def new_state(self, capacity: int) -> DecodeState:
        return DecodeState(0, capacity, list(self.empty_kv()))

    def run(self, st: DecodeState, tokens: Sequence[int], keep: int = 1) -> np.ndarray:
        logits, present = self.forward(tokens, st.length, tuple(st.kv))
        st.kv = list(present)
        st.length += len(tokens)
        return logits[-keep:]

    def truncate(self, st: DecodeState, n: int) -> None:
        st.kv = [a[:, :, :n] for a in st.kv]
        st.length = n

    def load_prefix(self, st: DecodeState, kv: KV, n: int) -> None:
        st.kv = [a[:, :, :n] for a in kv]
        st.length = n

    def export(self, st: DecodeState) -> KV:
        return tuple(st.kv)


class BuilderDecoder(Decoder):
    """Shared past/present buffers with I/O binding (see the module docstring)."""

    family = "builder"

    def __init__(self, session: Any, name: str, past_names: list[str], kv_heads: int, head_dim: int) -> None:
        super().__init__(session, name, past_names, kv_heads, head_dim)
        import onnxruntime as ort

        self._ort = ort
        self._ones = np.ones((1, 0), np.int64)

    min_capacity = 0  # [llm] min_kv_capacity: a sliding-window GQA refuses a shorter buffer (Gemma 3: 512)

    def forward(self, tokens: Sequence[int], start: int, past: KV) -> tuple[np.ndarray, KV]:
        if not self.min_capacity:
            return super().forward(tokens, start, past)
        st = self.new_state(start + len(tokens))  # through a buffer the window fits in (i10build)
        if start:
            self.load_prefix(st, past, start)
        logits = self.run(st, tokens, keep=len(tokens))
        return logits, self.export(st)

    def new_state(self, capacity: int) -> DecodeState:
        capacity = max(capacity, self.min_capacity)
        ort = self._ort
        kv = [np.zeros((1, self.kv_heads, capacity, self.head_dim), np.float32) for _ in self.past_names]
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in kv]
        b = self.session.io_binding()
        for pn, on, v in zip(self.past_names, self.present_names, values, strict=True):
            b.bind_ortvalue_input(pn, v)
            b.bind_ortvalue_output(on, v)
        if self._ones.shape[1] < capacity:
            self._ones = np.ones((1, capacity), np.int64)
        return DecodeState(0, capacity, kv, b, values)

    def run(self, st: DecodeState, tokens: Sequence[int], keep: int = 1) -> np.ndarray:
        n = len(tokens)
        total = st.length + n
        if total > st.capacity:
            raise WorkerError(f"{self.name}: KV cache of {st.capacity} tokens cannot hold {total}")
        ort, b = self._ort, st.binding
        ids = np.asarray([tokens], dtype=np.int64)
        b.bind_cpu_input("input_ids", ids)
        mask = self._ones[:, :total]
        b.bind_cpu_input("attention_mask", mask)
        rows = n
        if self.has_logits_to_keep:
            rows = min(keep, n)
            ktk = np.asarray([rows], dtype=np.int64)
            b.bind_cpu_input("logits_to_keep", ktk)
        logits = np.empty((1, rows, self._vocab), np.float32)
        b.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        try:
            self.session.run_with_iobinding(b)
        except Exception as e:  # noqa: BLE001
            raise _run_error(self.name, e) from None
        st.length = total
        return logits[0, -keep:]

    def truncate(self, st: DecodeState, n: int) -> None:
        st.length = min(n, st.length)

    def load_prefix(self, st: DecodeState, kv: KV, n: int) -> None:
        for dst, src in zip(st.kv, kv, strict=True):
            dst[:, :, :n] = src[:, :, :n]
        st.length = n

    def export(self, st: DecodeState) -> KV:
        return tuple(np.ascontiguousarray(a[:, :, : st.length]) for a in st.kv)

    _vocab = 0


def open_decoder(session: Any, name: str, config: Mapping[str, Any]) -> Decoder:
    """The runner for this graph; LoadError when it is not a decoder with a KV cache."""
    ins = {i.name: i for i in session.get_inputs()}
    for need in ("input_ids", "attention_mask"):
        if need not in ins:
            raise LoadError(f"{name}: decoder has no input {need!r}")
    past = sorted((n for n in ins if n.startswith("past_key_values.")),
                  key=lambda n: (int(n.split(".")[1]), n.endswith(".value")))
    if not past:
        raise LoadError(f"{name}: decoder has no past_key_values.* inputs")
    outs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in ["logits", *(p.replace("past_key_values.", "present.") for p in past)] if n not in outs]
    if missing:
        raise LoadError(f"{name}: decoder lacks outputs {missing[:3]}")
    shape = ins[past[0]].shape

    def dim(i: int, key: str) -> int:
        got = shape[i] if isinstance(shape[i], int) else None
        want = config.get(key)
        if got is not None and want is not None and int(want) != got:
            raise LoadError(f"{name}: [llm] {key} = {want} but the decoder has {got}")
        if got is None and want is None:
            raise LoadError(f"{name}: the decoder's {key} is symbolic; the manifest's [llm] must give it")
        return int(got if got is not None else want)  # type: ignore[arg-type]

    kv_heads, head_dim = dim(1, "num_kv_heads"), dim(3, "head_dim")
    want_layers = config.get("num_layers")
    if want_layers is not None and int(want_layers) != len(past) // 2:
        raise LoadError(f"{name}: [llm] num_layers = {want_layers} but the decoder has {len(past) // 2}")
    if "position_ids" in ins:
        return LegacyDecoder(session, name, past, kv_heads, head_dim)
    dec = BuilderDecoder(session, name, past, kv_heads, head_dim)
    vocab = outs["logits"].shape[-1]
    if not isinstance(vocab, int):
        vocab = config.get("vocab_size")
        if vocab is None:
            raise LoadError(f"{name}: the logits' vocabulary size is symbolic; [llm] vocab_size must give it")
    dec._vocab = int(vocab)
    dec.min_capacity = int(config.get("min_kv_capacity", 0) or 0)
    return dec
