"""Read a llama-family GGUF file: model config, dequantized float32 weights (HF layout), vocabulary.

Uses the numpy-based ``gguf`` package (build extra). Every failure (not a GGUF file, a truncated file,
an architecture we do not convert, a missing tensor) is a :class:`BuildError` naming the file.

Weights are returned in the Hugging Face layout: ``[out_features, in_features]``, with llama.cpp's
rotary permutation of the Q and K projections undone, so ``reference`` and ``graph`` use the usual
"rotate half" rotary embedding.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BuildError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class LlamaConfig:
    num_layers: int
    hidden: int
    ffn: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass
class LayerWeights:
    attn_norm: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate: np.ndarray
    w_up: np.ndarray
    w_down: np.ndarray


@dataclass
class LlamaWeights:
    embed: np.ndarray  # [vocab, hidden]
    layers: list[LayerWeights]
    final_norm: np.ndarray
    lm_head: np.ndarray  # [vocab, hidden]; the same array as embed when tied


@dataclass
class VocabInfo:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    pre: str
    chat_template: str | None
    special_ids: list[int] = field(default_factory=list)


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved pairs -> halves)."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's conversion permutation (halves -> interleaved pairs); the inverse of ``unpermute_rotary``."""
    out = w.shape[0]
    return w.reshape(n_head, 2, out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFModel:
    """An opened GGUF file. ``config``, ``vocab`` and ``weights()`` (dequantized on demand)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._reader = _open_reader(self.path)
        self._fields = self._reader.fields
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.config = self._read_config()
        self.vocab = self._read_vocab()

    # -- metadata -------------------------------------------------------------------------------------
    def _field(self, key: str, required: bool = True) -> Any:
        f = self._fields.get(key)
        if f is None:
            if required:
                raise BuildError(f"{self.path}: GGUF metadata has no {key!r}")
            return None
        try:
            return f.contents()
        except Exception as e:  # noqa: BLE001 - gguf raises plain exceptions on corrupt fields
            raise BuildError(f"{self.path}: GGUF metadata {key!r} is unreadable: {e}") from None

    def _read_config(self) -> LlamaConfig:
        arch = self._field("general.architecture")
        if arch != "llama":
            raise BuildError(f"{self.path}: expected a llama-family GGUF, got architecture {arch!r}")
        hidden = int(self._field("llama.embedding_length"))
        heads = int(self._field("llama.attention.head_count"))
        kv_heads = int(self._field("llama.attention.head_count_kv", required=False) or heads)
        vocab = self._field("llama.vocab_size", required=False)
        if vocab is None:
            vocab = len(self._fields["tokenizer.ggml.tokens"].data) if "tokenizer.ggml.tokens" in self._fields else 0
        if hidden % heads or heads % kv_heads:
            raise BuildError(f"{self.path}: hidden {hidden} / heads {heads} / kv heads {kv_heads} do not divide")
        return LlamaConfig(
            num_layers=int(self._field("llama.block_count")),
            hidden=hidden,
            ffn=int(self._field("llama.feed_forward_length")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            vocab_size=int(vocab),
            context_length=int(self._field("llama.context_length", required=False) or 2048),
            rope_theta=float(self._field("llama.rope.freq_base", required=False) or 10000.0),
            rms_eps=float(self._field("llama.attention.layer_norm_rms_epsilon", required=False) or 1e-5),
            tied_embeddings="output.weight" not in self._tensors,
        )

    def _read_vocab(self) -> VocabInfo:
        model = self._field("tokenizer.ggml.model")
        if model != "gpt2":
            raise BuildError(f"{self.path}: expected a byte-level BPE ('gpt2') tokenizer, got {model!r}")
        tokens = list(self._field("tokenizer.ggml.tokens"))
        types = [int(t) for t in (self._field("tokenizer.ggml.token_type", required=False) or [1] * len(tokens))]
        merges = list(self._field("tokenizer.ggml.merges"))
        bos = self._field("tokenizer.ggml.bos_token_id", required=False)
        eos = self._field("tokenizer.ggml.eos_token_id", required=False)
        return VocabInfo(
            tokens=tokens, token_types=types, merges=merges,
            bos_id=None if bos is None else int(bos), eos_id=None if eos is None else int(eos),
            pre=str(self._field("tokenizer.ggml.pre", required=False) or "default"),
            chat_template=self._field("tokenizer.chat_template", required=False),
            special_ids=[i for i, t in enumerate(types) if t == 3],
        )

    # -- tensors --------------------------------------------------------------------------------------
    def tensor(self, name: str) -> np.ndarray:
        """A tensor dequantized to float32 in numpy order ([out, in] for matrices)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        t = self._tensors.get(name)
        if t is None:
            raise BuildError(f"{self.path}: GGUF has no tensor {name!r}")
        shape = tuple(int(d) for d in reversed(t.shape))
        try:
            if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                arr = np.asarray(t.data, dtype=np.float32)
            else:
                arr = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
            return np.ascontiguousarray(arr.reshape(shape))
        except BuildError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"{self.path}: cannot dequantize {name!r} ({t.tensor_type.name}): {e}") from None

    def weights(self) -> LlamaWeights:
        c = self.config
        embed = self.tensor("token_embd.weight")
        if embed.shape != (c.vocab_size, c.hidden):
            raise BuildError(f"{self.path}: token_embd.weight is {embed.shape}, expected {(c.vocab_size, c.hidden)}")
        layers = []
        for i in range(c.num_layers):
            p = f"blk.{i}."
            layers.append(LayerWeights(
                attn_norm=self.tensor(p + "attn_norm.weight"),
                wq=unpermute_rotary(self.tensor(p + "attn_q.weight"), c.num_heads),
                wk=unpermute_rotary(self.tensor(p + "attn_k.weight"), c.num_kv_heads),
                wv=self.tensor(p + "attn_v.weight"),
                wo=self.tensor(p + "attn_output.weight"),
                ffn_norm=self.tensor(p + "ffn_norm.weight"),
                w_gate=self.tensor(p + "ffn_gate.weight"),
                w_up=self.tensor(p + "ffn_up.weight"),
                w_down=self.tensor(p + "ffn_down.weight"),
            ))
        lm_head = embed if c.tied_embeddings else self.tensor("output.weight")
        return LlamaWeights(embed=embed, layers=layers, final_norm=self.tensor("output_norm.weight"), lm_head=lm_head)


def _open_reader(path: Path) -> Any:
    if not path.is_file():
        raise BuildError(f"{path}: GGUF file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise BuildError(f"{path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise BuildError("reading GGUF needs the 'gguf' package: pip install 'ondevice-agent[build]'") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - truncated headers surface as ValueError/IndexError/struct errors
        raise BuildError(f"{path}: corrupt or truncated GGUF: {type(e).__name__}: {e}") from None
    size = os.path.getsize(path)
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise BuildError(f"{path}: truncated GGUF: tensor {t.name!r} ends at byte {end}, file has {size}")
    return reader
