"""Write a llama-family decoder with a KV cache as an ONNX graph (onnx.helper; no torch).

Signature (identical for every variant, so the engine and the manifest treat them alike)::

    inputs   input_ids                  int64   [batch, sequence_length]
             attention_mask             int64   [batch, total_sequence_length]
             position_ids               int64   [batch, sequence_length]
             past_key_values.{i}.key    float32 [batch, num_kv_heads, past_sequence_length, head_dim]
             past_key_values.{i}.value  float32 (same)
    outputs  logits                     float32 [batch, sequence_length, vocab]
             present.{i}.key / .value   float32 [batch, num_kv_heads, total_sequence_length, head_dim]

Standard ONNX ops (opset 23, RMSNormalization); weight-only variants replace MatMul by
com.microsoft MatMulNBits (``quantize_weight_only``). A layer-pruned variant keeps every
``past_key_values.{i}`` input: a dropped layer passes its past through unchanged (it stays empty), so
the signature does not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.errors import BuildError
from agent.llm.gguf_source import LlamaConfig, LlamaWeights

OPSET = 23


def rope_tables(cfg: LlamaConfig, max_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and signed-sin tables [max_pos, head_dim] for "rotate half" rotary embedding."""
    hd = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.arange(max_pos, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.cos(ang)
    sin = np.sin(ang)
    return (np.concatenate([cos, cos], 1).astype(np.float32),
            np.concatenate([-sin, sin], 1).astype(np.float32))


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    ins = ["input_ids", "attention_mask", "position_ids"]
    outs = ["logits"]
    for i in range(num_layers):
        ins += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outs += [f"present.{i}.key", f"present.{i}.value"]
    return ins, outs


@dataclass
class _G:
    dtype: str
    nodes: list[Any] = field(default_factory=list)
    inits: list[Any] = field(default_factory=list)
    n: int = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def op(self, op: str, inputs: Sequence[str], out: str | None = None, domain: str = "", **attrs: Any) -> str:
        from onnx import helper
        out = out or self.name(op)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=f"n_{out}", domain=domain, **attrs))
        return out

    def const(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def weight(self, name: str, arr: np.ndarray) -> str:
        """A float weight, stored fp16 (and cast back to fp32 once at load) in fp16 variants."""
        if self.dtype == "fp16":
            from onnx import TensorProto
            self.const(name + "_fp16", arr.astype(np.float16))
            return self.op("Cast", [name + "_fp16"], name, to=TensorProto.FLOAT)
        return self.const(name, arr.astype(np.float32))


def build_decoder(cfg: LlamaConfig, w: LlamaWeights, *, dtype: str = "fp32", keep_layers: Sequence[int] | None = None,
                  untie_lm_head: bool = False, embed_fp16: bool = False,
                  max_positions: int | None = None) -> Any:
    """The decoder as an ``onnx.ModelProto``.

    dtype: "fp32" or "fp16" (fp16 weights, cast to fp32 at load; I/O and compute stay fp32).
    keep_layers: the layers computed (default all); the others pass their KV through.
    untie_lm_head: give the LM head its own [hidden, vocab] MatMul weight (so it can be quantized apart
    from the embedding); otherwise the head is a Gemm on the embedding matrix (one copy in the file).
    embed_fp16: with an untied head, store the embedding table in fp16 (rows are cast after the Gather).
    """
    from onnx import TensorProto, helper

    if dtype not in ("fp32", "fp16"):
        raise BuildError(f"graph dtype: expected fp32 or fp16, got {dtype!r}")
    keep = set(range(cfg.num_layers) if keep_layers is None else keep_layers)
    if not keep or not keep <= set(range(cfg.num_layers)):
        raise BuildError(f"keep_layers: expected a non-empty subset of 0..{cfg.num_layers - 1}, got {sorted(keep)}")
    g = _G(dtype)
    hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    rep = nh // nkv

    def i64(name: str, vals: Any) -> str:
        return g.const(name, np.asarray(vals, dtype=np.int64))


    # shared constants
    cos_t, sin_t = rope_tables(cfg, max_positions or cfg.context_length)
    g.const("rope_cos", cos_t)
    g.const("rope_sin", sin_t)
    i64("shape_q", [0, 0, nh, hd])
    i64("shape_kv", [0, 0, nkv, hd])
    i64("shape_q5", [0, nkv, rep, -1, hd])
    i64("shape_kv5", [0, nkv, 1, -1, hd])
    i64("shape_heads", [0, nh, -1, hd])
    i64("shape_hidden", [0, 0, cfg.hidden])
    i64("ax1", [1])
    i64("ax0", [0])
    i64("ax_m1", [-1])
    i64("split_half", [hd // 2, hd // 2])
    g.const("scale", np.asarray(1.0 / np.sqrt(hd), dtype=np.float32))
    g.const("zero_f", np.asarray(0.0, dtype=np.float32))
    g.const("neg_inf", np.asarray(np.finfo(np.float32).min, dtype=np.float32))
    i64("one_i", 1)

    # embedding (fp16 rows gathered, then cast: the table stays half size in memory too)
    tied_head = not (untie_lm_head or not cfg.tied_embeddings)
    if dtype == "fp16" or (embed_fp16 and not tied_head):
        emb = g.const("embed_tokens_fp16", w.embed.astype(np.float16))
        x = g.op("Cast", [g.op("Gather", [emb, "input_ids"], axis=0)], "embeds", to=TensorProto.FLOAT)
        if tied_head:
            emb = g.op("Cast", [emb], "embed_tokens", to=TensorProto.FLOAT)
    else:
        emb = g.const("embed_tokens", w.embed.astype(np.float32))
        x = g.op("Gather", [emb, "input_ids"], "embeds", axis=0)

    # rotary tables for these positions: [B, 1, S, hd]
    cos = g.op("Unsqueeze", [g.op("Gather", ["rope_cos", "position_ids"], axis=0), "ax1"], "cos")
    sin = g.op("Unsqueeze", [g.op("Gather", ["rope_sin", "position_ids"], axis=0), "ax1"], "sin")

    # additive mask [B, 1, 1, S, T]: causal on storage index, and attention_mask
    ids_shape = g.op("Shape", ["input_ids"])
    seq = g.op("Gather", [ids_shape, "one_i"], axis=0)
    total = g.op("Gather", [g.op("Shape", ["attention_mask"]), "one_i"], axis=0)
    past = g.op("Sub", [total, seq])
    kpos = g.op("Range", [g.const("zero_i", np.asarray(0, np.int64)), total, "one_i"])
    qpos = g.op("Range", [past, total, "one_i"])
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [kpos, "ax0"]), g.op("Unsqueeze", [qpos, "ax_m1"])])  # [S, T]
    am = g.op("Cast", ["attention_mask"], to=TensorProto.BOOL)
    am = g.op("Unsqueeze", [am, g.const("ax123", np.asarray([1, 2, 3], np.int64))])  # [B,1,1,1,T]
    allowed = g.op("And", [causal, am])  # [B,1,1,S,T]
    bias = g.op("Where", [allowed, "zero_f", "neg_inf"], "attn_bias")

    def rms(inp: str, weight: np.ndarray, wname: str) -> str:
        return g.op("RMSNormalization", [inp, g.weight(wname, weight)], axis=-1, epsilon=cfg.rms_eps)

    def linear(inp: str, weight: np.ndarray, wname: str) -> str:
        # weight is [out, in]; store its transpose [in, out] so MatMul (and MatMulNBits) use it directly
        return g.op("MatMul", [inp, g.weight(wname, np.ascontiguousarray(weight.T))], name_out(wname))

    def name_out(wname: str) -> str:
        return wname.replace(".weight", "") + "_out"

    def rope(t: str) -> str:
        a, b = g.name("half1"), g.name("half2")
        from onnx import helper as h
        g.nodes.append(h.make_node("Split", [t, "split_half"], [a, b], name=f"n_{a}", axis=-1))
        swapped = g.op("Concat", [b, a], axis=-1)
        return g.op("Add", [g.op("Mul", [t, cos]), g.op("Mul", [swapped, sin])])

    for i in range(cfg.num_layers):
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        ok, ov = f"present.{i}.key", f"present.{i}.value"
        if i not in keep:
            g.op("Identity", [pk], ok)
            g.op("Identity", [pv], ov)
            continue
        L = w.layers[i]
        p = f"layers.{i}."
        h = rms(x, L.attn_norm, p + "input_layernorm.weight")
        q = g.op("Transpose", [g.op("Reshape", [linear(h, L.wq, p + "q_proj.weight"), "shape_q"])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [linear(h, L.wk, p + "k_proj.weight"), "shape_kv"])], perm=[0, 2, 1, 3])
        v = g.op("Transpose", [g.op("Reshape", [linear(h, L.wv, p + "v_proj.weight"), "shape_kv"])], perm=[0, 2, 1, 3])
        q, k = rope(q), rope(k)
        k_all = g.op("Concat", [pk, k], ok, axis=2)
        v_all = g.op("Concat", [pv, v], ov, axis=2)
        q5 = g.op("Reshape", [q, "shape_q5"])  # [B, nkv, rep, S, hd]
        k5 = g.op("Reshape", [k_all, "shape_kv5"])  # [B, nkv, 1, T, hd]
        v5 = g.op("Reshape", [v_all, "shape_kv5"])
        scores = g.op("MatMul", [g.op("Mul", [q5, "scale"]), g.op("Transpose", [k5], perm=[0, 1, 2, 4, 3])])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        att = g.op("Reshape", [g.op("MatMul", [probs, v5]), "shape_heads"])  # [B, nh, S, hd]
        att = g.op("Reshape", [g.op("Transpose", [att], perm=[0, 2, 1, 3]), "shape_hidden"])
        x = g.op("Add", [x, linear(att, L.wo, p + "o_proj.weight")])
        h = rms(x, L.ffn_norm, p + "post_attention_layernorm.weight")
        gate = linear(h, L.w_gate, p + "gate_proj.weight")
        up = linear(h, L.w_up, p + "up_proj.weight")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        x = g.op("Add", [x, linear(act, L.w_down, p + "down_proj.weight")])

    x = rms(x, w.final_norm, "norm.weight")
    if not tied_head:
        g.op("MatMul", [x, g.weight("lm_head.weight", np.ascontiguousarray(w.lm_head.T))], "logits")
    else:
        flat = g.op("Reshape", [x, g.const("shape_flat", np.asarray([-1, cfg.hidden], np.int64))])
        logits2 = g.op("Gemm", [flat, emb], transB=1)
        out_shape = g.op("Concat", [ids_shape, g.const("vocab_dim", np.asarray([cfg.vocab_size], np.int64))], axis=0)
        g.op("Reshape", [logits2, out_shape], "logits")

    f32, i64t = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64t, ["batch", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", i64t, ["batch", "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", i64t, ["batch", "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "sequence_length", cfg.vocab_size])]
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", f32, ["batch", nkv, "past_sequence_length", hd]))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kind}", f32, ["batch", nkv, "total_sequence_length", hd]))
    graph = helper.make_graph(g.nodes, "llama_decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="ondevice-agent.llm")
    model.ir_version = 10
    return model


def quantize_weight_only(model: Any, bits: int, *, block_size: int = 32, accuracy_level: int = 4,
                         head_bits: int | None = None) -> Any:
    """MatMul -> com.microsoft MatMulNBits (symmetric, blockwise). ``head_bits`` quantizes the LM head
    differently (e.g. 8 in an int4 model: the head is the most sensitive matrix); None = same as ``bits``."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as e:
        raise BuildError(f"weight-only quantization needs onnxruntime's quantizer and onnx-ir: {e}") from None
    import logging

    qlog = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    qlog.setLevel(logging.WARNING)
    head_nodes = [n.name for n in model.graph.node if n.op_type == "MatMul" and "lm_head" in n.input[1]]
    passes: list[tuple[int, list[str] | None, list[str] | None]]
    if head_bits is None or head_bits == bits:
        passes = [(bits, None, None)]
    else:
        passes = [(bits, head_nodes, None), (head_bits, None, head_nodes)]
    for b, exclude, include in passes:
        q = MatMulNBitsQuantizer(model, bits=b, block_size=block_size, is_symmetric=True,
                                 accuracy_level=accuracy_level, nodes_to_exclude=exclude or [],
                                 nodes_to_include=include)
        q.process()
        model = q.model.model
    return model
