"""A tiny random llama GGUF (byte-level BPE, ChatML) and a recipe that builds it with the real zoo builders.

The demo test runs ``agentctl demo`` against this zoo: the same build, daemon, worker and client paths as
SmolLM2, but a model small enough to build, measure and decode in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for message in messages %}"
            "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _bytes_to_unicode() -> list[str]:
    """The printable character GPT-2's byte-level BPE uses for each byte 0..255."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_tiny_gguf(path: Path, *, seed: int = 7, layers: int = 2, hidden: int = 64, heads: int = 4,
                    kv_heads: int = 2, ffn: int = 128) -> Path:
    import gguf

    from agent.llm.gguf_source import permute_rotary

    rng = np.random.default_rng(seed)
    merges = ["Ġ t", "h e", "Ġ a", "i n"]
    tokens = SPECIAL + _bytes_to_unicode() + [m.replace(" ", "") for m in merges]
    n, hd = len(tokens), hidden // heads

    def w(*shape: int, scale: float = 0.15) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_block_count(layers)
    wr.add_context_length(512)
    wr.add_embedding_length(hidden)
    wr.add_feed_forward_length(ffn)
    wr.add_head_count(heads)
    wr.add_head_count_kv(kv_heads)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_vocab_size(n)
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("smollm")
    wr.add_token_list(tokens)
    wr.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
    wr.add_token_merges(merges)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_chat_template(TEMPLATE)
    wr.add_tensor("token_embd.weight", w(n, hidden, scale=1.0))
    for i in range(layers):
        p = f"blk.{i}."
        wr.add_tensor(p + "attn_norm.weight", 1.0 + w(hidden, scale=0.05))
        wr.add_tensor(p + "attn_q.weight", permute_rotary(w(hidden, hidden), heads))
        wr.add_tensor(p + "attn_k.weight", permute_rotary(w(kv_heads * hd, hidden), kv_heads))
        wr.add_tensor(p + "attn_v.weight", w(kv_heads * hd, hidden))
        wr.add_tensor(p + "attn_output.weight", w(hidden, hidden))
        wr.add_tensor(p + "ffn_norm.weight", 1.0 + w(hidden, scale=0.05))
        wr.add_tensor(p + "ffn_gate.weight", w(ffn, hidden))
        wr.add_tensor(p + "ffn_up.weight", w(ffn, hidden))
        wr.add_tensor(p + "ffn_down.weight", w(hidden, ffn))
    wr.add_tensor("output_norm.weight", 1.0 + w(hidden, scale=0.05))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return path


def write_tiny_recipe(folder: Path, name: str = "tinylm") -> Path:
    """A recipe with the SmolLM2 recipe's torch-free variants, built from a local tiny GGUF."""
    from agent.zoo.manifest import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    gguf_path = write_tiny_gguf(folder / "tiny.gguf")
    recipe = folder / "recipe.toml"
    recipe.write_text(f'''schema = 1
name = "{name}"
kind = "causal-lm"
reference = "fp32"
description = "tiny random llama for the demo test"

[source]
format = "gguf"
path = "tiny.gguf"
sha256 = "{sha256_file(gguf_path)}"

[[variants]]
id = "fp32"
method = "gguf-onnx"
precision = "fp32"

[[variants]]
id = "int8"
method = "gguf-onnx"
derived_from = "source"
precision = "int8"

[[variants]]
id = "int4"
method = "gguf-onnx"
derived_from = "source"
precision = "int4"

[eval]
text = "pydoc-topics"
tokens = 64
window = 32
prompt = "Hello"
decode_tokens = 8
agreement_tokens = 4             # the answer-quality runs stay short on the tiny model
answer_tokens = 4

[measure]
threads = 1
''', encoding="utf-8")
    return recipe
