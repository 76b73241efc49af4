"""GGUF -> ONNX decoder variants (fp32, fp16, int8/int4 weight-only, layer-pruned), tokenizer, [llm] table.

Every file is written to a temporary name and renamed into place, so a failed step leaves nothing
half-written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BuildError
from agent.llm.gguf_source import GGUFModel, LlamaConfig, LlamaWeights
from agent.llm.tokenizer import build_tokenizer, chat_settings_from_gguf_template

TOKENIZER_FILE = "tokenizer.json"
# weight-only settings per precision: (bits, head_bits); block 32, symmetric, accuracy_level 4
WEIGHT_ONLY = {"int8": (8, 8), "int4": (4, 8)}
PRECISIONS = ("fp32", "fp16", "int8", "int4")


def llm_table(g: GGUFModel, tokenizer_file: str = TOKENIZER_FILE) -> dict[str, Any]:
    """The manifest's ``[llm]`` table for a model converted from ``g`` (see docs/LLM.md)."""
    c, v = g.config, g.vocab
    eos = []
    for name in ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"):
        if name in v.tokens:
            eos.append(v.tokens.index(name))
    if v.eos_id is not None and v.eos_id not in eos:
        eos.insert(0, v.eos_id)
    chat = chat_settings_from_gguf_template(v.chat_template)
    return {
        "tokenizer": tokenizer_file,
        "chat_template": chat["chat_template"],
        "default_system_prompt": chat["default_system_prompt"],
        "eos_token_ids": eos,
        "bos_token_id": -1 if v.bos_id is None else v.bos_id,
        "add_bos": False,
        "context_length": c.context_length,
        "vocab_size": c.vocab_size,
        "num_layers": c.num_layers,
        "num_kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "kv_dtype": "float32",
        "config": c.to_dict(),
    }


def _atomic(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def write_tokenizer(g: GGUFModel, path: Path) -> Path:
    tok = build_tokenizer(g.vocab.tokens, g.vocab.merges, g.vocab.special_ids, g.vocab.pre)
    fd, tmp = _atomic(path)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        tok.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_model(model: Any, path: Path) -> Path:
    import onnx

    fd, tmp = _atomic(path)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_external(model: Any, path: Path) -> Path:
    """Write ``model`` as ``path`` + ``path.name + ".data"`` (weights outside the protobuf, as the builder
    does), both renamed into place from a temporary folder beside them."""
    import onnx

    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        data = path.name + ".data"
        onnx.save_model(model, str(tmp / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
        for name in (data, path.name):
            os.chmod(tmp / name, 0o644)
            os.replace(tmp / name, path.parent / name)
    finally:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
    return path


def export_variant(cfg: LlamaConfig, w: LlamaWeights, precision: str, path: Path, *,
                   keep_layers: Sequence[int] | None = None, block_size: int = 32) -> Path:
    """Write one decoder variant to ``path``."""
    from agent.llm.graph import build_decoder, quantize_weight_only

    if precision not in PRECISIONS:
        raise BuildError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision in WEIGHT_ONLY:
        bits, head_bits = WEIGHT_ONLY[precision]
        model = build_decoder(cfg, w, keep_layers=keep_layers, untie_lm_head=True, embed_fp16=True)
        model = quantize_weight_only(model, bits, head_bits=head_bits, block_size=block_size)
    else:
        model = build_decoder(cfg, w, dtype=precision, keep_layers=keep_layers)
    return save_model(model, path)


def cross_check(model_path: Path, cfg: LlamaConfig, w: LlamaWeights, tokens: Sequence[int],
                keep_layers: Sequence[int] | None = None, threads: int = 1) -> float:
    """Max |logits difference| between the ONNX decoder (prefill, then one decode step through the KV
    cache) and the numpy reference on ``tokens``."""
    import onnxruntime as ort

    from agent.llm.reference import ReferenceLlama

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    toks = list(tokens)
    head, last = toks[:-1], toks[-1:]
    nkv, hd = cfg.num_kv_heads, cfg.head_dim
    feeds: dict[str, np.ndarray] = {
        "input_ids": np.asarray([head], np.int64),
        "attention_mask": np.ones((1, len(head)), np.int64),
        "position_ids": np.arange(len(head), dtype=np.int64)[None],
    }
    for i in range(cfg.num_layers):
        feeds[f"past_key_values.{i}.key"] = np.zeros((1, nkv, 0, hd), np.float32)
        feeds[f"past_key_values.{i}.value"] = np.zeros((1, nkv, 0, hd), np.float32)
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feeds), strict=True))
    feeds2 = {"input_ids": np.asarray([last], np.int64), "attention_mask": np.ones((1, len(toks)), np.int64),
              "position_ids": np.asarray([[len(head)]], np.int64)}
    for i in range(cfg.num_layers):
        feeds2[f"past_key_values.{i}.key"] = out[f"present.{i}.key"]
        feeds2[f"past_key_values.{i}.value"] = out[f"present.{i}.value"]
    out2 = sess.run(["logits"], feeds2)[0]
    ref = ReferenceLlama(cfg, w, list(keep_layers) if keep_layers is not None else None)
    r1 = ref.forward(head)
    r2 = ref.forward(last)
    return float(max(np.abs(out["logits"][0] - r1).max(), np.abs(out2[0] - r2).max()))
