"""A tiny random llama written as a real GGUF file (byte-level BPE vocabulary, ChatML template).

The test keeps the weights in the Hugging Face layout and writes them the way llama.cpp's converter
does (Q/K rows permuted, embedding Q8_0-quantized), so the reference forward pass below uses weights
that never went through our GGUF reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.llm.gguf_source import LayerWeights, LlamaConfig, LlamaWeights, permute_rotary, unpermute_rotary

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġ 1"]


def byte_chars() -> list[str]:
    """GPT-2's bytes -> printable unicode mapping, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def vocab() -> list[str]:
    toks = SPECIALS + byte_chars()
    for m in MERGES:
        toks.append(m.replace(" ", ""))
    return toks


@dataclass
class Tiny:
    path: Path
    cfg: LlamaConfig
    weights: LlamaWeights  # HF layout, exactly the values in the file (embedding after Q8_0 round trip)


def make_tiny_gguf(path: Path, seed: int = 0, layers: int = 3, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                   ffn: int = 96, linear_type: str | None = None) -> Tiny:
    """``linear_type`` ("Q4_0", "Q4_1", "Q8_0"): store the layer matrices in llama.cpp blocks of that type
    (``weights`` then holds their dequantised values); None stores them as F32."""
    import gguf

    rng = np.random.default_rng(seed)
    toks = vocab()
    cfg = LlamaConfig(num_layers=layers, hidden=hidden, ffn=ffn, num_heads=heads, num_kv_heads=kv_heads,
                      vocab_size=len(toks), context_length=256, rope_theta=10000.0, rms_eps=1e-5)
    hd = hidden // heads

    def r(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    embed_q = gguf.quants.quantize(r(len(toks), hidden, scale=1.0), gguf.GGMLQuantizationType.Q8_0)
    embed = gguf.quants.dequantize(embed_q, gguf.GGMLQuantizationType.Q8_0).astype(np.float32)
    lw = [LayerWeights(attn_norm=1.0 + r(hidden, scale=0.1), wq=r(hidden, hidden), wk=r(kv_heads * hd, hidden),
                       wv=r(kv_heads * hd, hidden), wo=r(hidden, hidden), ffn_norm=1.0 + r(hidden, scale=0.1),
                       w_gate=r(ffn, hidden), w_up=r(ffn, hidden), w_down=r(hidden, ffn)) for _ in range(layers)]
    w = LlamaWeights(embed=embed, layers=lw, final_norm=1.0 + r(hidden, scale=0.1), lm_head=embed)
    stored: dict[str, tuple[np.ndarray, object]] = {}  # GGUF name -> (data, raw dtype or None)
    qt = getattr(gguf.GGMLQuantizationType, linear_type) if linear_type else None
    for i, L in enumerate(lw):
        p = f"blk.{i}."
        for name, attr, n_head in (("attn_q", "wq", heads), ("attn_k", "wk", kv_heads), ("attn_v", "wv", 0),
                                   ("attn_output", "wo", 0), ("ffn_gate", "w_gate", 0), ("ffn_up", "w_up", 0),
                                   ("ffn_down", "w_down", 0)):
            m = getattr(L, attr)
            g = permute_rotary(m, n_head) if n_head else m
            if qt is None:
                stored[p + name + ".weight"] = (g, None)
                continue
            q = gguf.quants.quantize(g, qt)
            deq = gguf.quants.dequantize(q, qt).astype(np.float32).reshape(g.shape)
            setattr(L, attr, unpermute_rotary(deq, n_head) if n_head else deq)
            stored[p + name + ".weight"] = (q, qt)

    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_block_count(layers)
    wr.add_context_length(cfg.context_length)
    wr.add_embedding_length(hidden)
    wr.add_feed_forward_length(ffn)
    wr.add_head_count(heads)
    wr.add_head_count_kv(kv_heads)
    wr.add_rope_freq_base(cfg.rope_theta)
    wr.add_layer_norm_rms_eps(cfg.rms_eps)
    wr.add_vocab_size(len(toks))
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("smollm")
    wr.add_token_list(toks)
    wr.add_token_types([3 if t in SPECIALS else 1 for t in toks])
    wr.add_token_merges(MERGES)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_chat_template(CHATML)
    wr.add_tensor("token_embd.weight", embed_q, raw_shape=embed_q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    for i, L in enumerate(lw):
        p = f"blk.{i}."
        wr.add_tensor(p + "attn_norm.weight", L.attn_norm)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            data, raw = stored[p + name + ".weight"]
            if raw is None:
                wr.add_tensor(p + name + ".weight", data)
            else:
                wr.add_tensor(p + name + ".weight", data, raw_shape=data.shape, raw_dtype=raw)
        wr.add_tensor(p + "ffn_norm.weight", L.ffn_norm)
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            data, raw = stored[p + name + ".weight"]
            if raw is None:
                wr.add_tensor(p + name + ".weight", data)
            else:
                wr.add_tensor(p + name + ".weight", data, raw_shape=data.shape, raw_dtype=raw)
    wr.add_tensor("output_norm.weight", w.final_norm)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return Tiny(path, cfg, w)
