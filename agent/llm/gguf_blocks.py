"""Carry a GGUF's own 4-bit/8-bit blocks into a builder int4 graph (no re-rounding of dequantised weights).

llama.cpp's blocks are 32 weights along the input dimension, the same layout as MatMulNBits with
``block_size = 32`` (and GatherBlockQuantized along the hidden dimension), so each block maps 1:1:

* ``Q4_0``  w = d·(q − 8)          → MatMulNBits 4-bit, scale d, default zero point 8. Exact.
* ``Q8_0``  w = d·q  (q int8)       → MatMulNBits / GatherBlockQuantized 8-bit, data q + 128, scale d. Exact.
* ``Q4_1``  w = d·q + m             → MatMulNBits 4-bit computes d·(q − 8); the rest, (m + 8d) per block,
  is added as ``blocksum(x) @ M`` (Reshape → ReduceSum → MatMul → Add; one Reshape/ReduceSum per
  distinct input). MatMulNBits' own zero points are 4-bit integers and ``−m/d`` is not an integer, and
  float zero points make ORT's CPU kernel dequantise every run (~40× slower, measured), hence the
  separate term. Exact to float rounding.

Q and K rows are put back from llama.cpp's rotary order (rows move, blocks do not change). Every
carried matrix is compared with the fp32 weights of the Hugging Face folder the graph was built from
(the same GGUF dequantised by transformers): the build fails if they differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BuildError

BLOCK = 32
CARRIED = ("Q4_0", "Q4_1", "Q8_0")


@dataclass
class Blocks:
    """One matrix as blocks: q [rows, nb, 32] uint8 (0..15 for 4-bit, q+128 for 8-bit), d [rows, nb],
    m [rows, nb] (Q4_1's minimum, else None)."""

    kind: str
    q: np.ndarray
    d: np.ndarray
    m: np.ndarray | None

    @property
    def bits(self) -> int:
        return 8 if self.kind == "Q8_0" else 4

    def dequantize(self) -> np.ndarray:
        zp = 128 if self.bits == 8 else (0 if self.kind == "Q4_1" else 8)
        w = (self.q.astype(np.float32) - zp) * self.d[..., None]
        if self.m is not None:
            w += self.m[..., None]
        return w.reshape(self.q.shape[0], -1)

    def rows(self, order: np.ndarray) -> Blocks:
        return Blocks(self.kind, self.q[order], self.d[order], None if self.m is None else self.m[order])


def read_blocks(tensor: Any) -> Blocks:
    """A gguf-py ReaderTensor of type Q4_0 / Q4_1 / Q8_0 as :class:`Blocks` in [out, in] row order."""
    kind = tensor.tensor_type.name
    if kind not in CARRIED:
        raise BuildError(f"tensor {tensor.name!r} is {kind}; only {', '.join(CARRIED)} blocks can be carried over")
    raw = np.asarray(tensor.data, dtype=np.uint8)
    rows = int(np.prod([int(x) for x in tensor.shape[1:]]))
    size = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[kind]
    b = raw.reshape(rows, -1, size)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if kind == "Q8_0":
        q = (b[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return Blocks(kind, q, d, None)
    off = 4 if kind == "Q4_1" else 2
    qs = b[..., off:off + 16]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # ggml: low nibbles are 0..15, high nibbles 16..31
    m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if kind == "Q4_1" else None
    return Blocks(kind, q, d, m)


def _cat(parts: list[Blocks]) -> Blocks:
    kinds = {p.kind for p in parts}
    if len(kinds) != 1:
        raise BuildError(f"a fused projection mixes GGUF block types {sorted(kinds)}; cannot carry it over")
    ms = [p.m for p in parts]
    return Blocks(parts[0].kind, np.concatenate([p.q for p in parts]), np.concatenate([p.d for p in parts]),
                  None if ms[0] is None else np.concatenate([m for m in ms if m is not None]))


def _pack4(q: np.ndarray) -> np.ndarray:
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def gguf_matrices(gguf: Path, num_layers: int) -> tuple[dict[str, Blocks], dict[str, Any]]:
    """Builder MatMul prefix (``/model/layers.3/attn/qkv_proj/MatMul``) -> blocks, for a llama GGUF."""
    from agent.llm.gguf_source import _open_reader, unpermute_rotary

    r = _open_reader(gguf)
    arch = str(r.fields["general.architecture"].contents())
    if arch != "llama":
        raise BuildError(f"{gguf}: carrying GGUF blocks over is implemented for llama GGUFs, got {arch!r}")
    t = {x.name: x for x in r.tensors}
    heads = int(r.fields["llama.attention.head_count"].contents())
    kv = int(r.fields["llama.attention.head_count_kv"].contents())

    def perm(b: Blocks, n_head: int) -> Blocks:
        order = unpermute_rotary(np.arange(b.q.shape[0]), n_head)
        return b.rows(order)

    out: dict[str, Blocks] = {}
    for i in range(num_layers):
        p = f"blk.{i}."
        q = perm(read_blocks(t[p + "attn_q.weight"]), heads)
        k = perm(read_blocks(t[p + "attn_k.weight"]), kv)
        v = read_blocks(t[p + "attn_v.weight"])
        base = f"/model/layers.{i}"
        out[f"{base}/attn/qkv_proj/MatMul"] = _cat([q, k, v])
        out[f"{base}/attn/q_proj/MatMul"], out[f"{base}/attn/k_proj/MatMul"] = q, k
        out[f"{base}/attn/v_proj/MatMul"] = v
        out[f"{base}/attn/o_proj/MatMul"] = read_blocks(t[p + "attn_output.weight"])
        out[f"{base}/mlp/gate_proj/MatMul"] = read_blocks(t[p + "ffn_gate.weight"])
        out[f"{base}/mlp/up_proj/MatMul"] = read_blocks(t[p + "ffn_up.weight"])
        out[f"{base}/mlp/down_proj/MatMul"] = read_blocks(t[p + "ffn_down.weight"])
    head = t.get("output.weight", t["token_embd.weight"])
    if head.tensor_type.name in CARRIED:
        out["/lm_head/MatMul"] = read_blocks(head)
    info = {"gguf_types": sorted({x.tensor_type.name for x in r.tensors}), "tied": "output.weight" not in t,
            "embedding_type": t["token_embd.weight"].tensor_type.name}
    return out, info


def _hf_weight(prefix: str, hf: dict[str, np.ndarray]) -> np.ndarray | None:
    """The fp32 [out, in] weight the builder quantised at ``prefix``, from the HF state dict."""
    if prefix == "/lm_head/MatMul":
        return hf.get("lm_head.weight", hf.get("model.embed_tokens.weight"))
    parts = prefix.strip("/").split("/")  # model, layers.3, attn, qkv_proj, MatMul
    layer, block, proj = parts[1], parts[2], parts[3]
    base = f"model.{layer}.{'self_attn' if block == 'attn' else 'mlp'}."
    if proj == "qkv_proj":
        return np.concatenate([hf[base + f"{n}_proj.weight"] for n in ("q", "k", "v")])
    return hf.get(base + f"{proj}.weight")


def carry_over(model_path: Path, gguf: Path, hf_dir: Path, accuracy_level: int,
               log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Rewrite the builder int4 graph at ``model_path`` (and its .data) with the GGUF's blocks."""
    import onnx
    from onnx import helper, numpy_helper

    from agent.llm.convert import save_external

    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise BuildError("carrying GGUF blocks over needs 'safetensors' (the build-hf extra)") from None
    model = onnx.load(str(model_path), load_external_data=True)
    g = model.graph
    mnb = [n for n in g.node if n.op_type == "MatMulNBits"]
    num_layers = sum(1 for n in mnb if n.name.endswith("/o_proj/MatMul_Q4") or "/o_proj/MatMul" in n.name)
    mats, info = gguf_matrices(gguf, num_layers)
    hf: dict[str, np.ndarray] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        hf.update(load_file(str(f)))
    new_inits: list[Any] = []
    new_nodes: dict[int, list[Any]] = {}   # nodes to insert after the node at this index
    blocksum: dict[str, str] = {}
    worst, counts = 0.0, dict[str, int]()
    for idx, node in enumerate(g.node):
        if node.op_type != "MatMulNBits":
            continue
        prefix = next((p for p in mats if node.name.startswith(p + "_") or node.name == p), None)
        if prefix is None:
            continue
        b = mats[prefix]
        n_out, nb = b.q.shape[0], b.q.shape[1]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if int(attrs["N"]) != n_out or int(attrs["K"]) != nb * BLOCK:
            raise BuildError(f"{node.name}: graph has N={attrs['N']} K={attrs['K']}, GGUF blocks give "
                             f"N={n_out} K={nb * BLOCK}")
        ref = _hf_weight(prefix, hf)
        if ref is None:
            raise BuildError(f"{node.name}: no matching weight in {hf_dir}")
        diff = float(np.abs(b.dequantize() - ref).max() / max(1e-12, float(np.abs(ref).max())))
        if diff > 1e-4:
            raise BuildError(f"{node.name}: the GGUF blocks do not reproduce the dequantised weights "
                             f"(max relative difference {diff:.3g}); wrong tensor mapping")
        worst = max(worst, diff)
        key = prefix.strip("/").replace("/", ".")
        bname, sname = f"{key}.gguf_{b.kind}", f"{key}.gguf_scales"
        new_inits += [numpy_helper.from_array(np.ascontiguousarray(b.q if b.bits == 8 else _pack4(b.q)), bname),
                      numpy_helper.from_array(np.ascontiguousarray(b.d), sname)]
        a, old = str(node.input[0]), [str(x) for x in node.input[1:] if x]
        del node.input[:]
        node.input.extend([a, bname, sname])
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("K", nb * BLOCK), helper.make_attribute("N", n_out),
                               helper.make_attribute("bits", b.bits), helper.make_attribute("block_size", BLOCK),
                               helper.make_attribute("accuracy_level", accuracy_level)])
        new_inits += _retarget_embedding(g, old, bname, sname, b)
        if b.m is not None:
            y, extra = str(node.output[0]), []
            if a not in blocksum:
                shp, ax = f"{key}.blocks_shape", f"{key}.blocks_axis"
                new_inits += [numpy_helper.from_array(np.asarray([0, 0, nb, BLOCK], np.int64), shp),
                              numpy_helper.from_array(np.asarray([-1], np.int64), ax)]
                extra += [helper.make_node("Reshape", [a, shp], [f"{key}/blocks"], name=f"{prefix}/gguf_blocks"),
                          helper.make_node("ReduceSum", [f"{key}/blocks", ax], [f"{key}/blocksum"],
                                           name=f"{prefix}/gguf_blocksum", keepdims=0)]
                blocksum[a] = f"{key}/blocksum"
            mname = f"{key}.gguf_min"
            new_inits.append(numpy_helper.from_array(np.ascontiguousarray((b.m + 8.0 * b.d).T), mname))
            node.output[0] = f"{y}/gguf_scaled"
            extra += [helper.make_node("MatMul", [blocksum[a], mname], [f"{y}/gguf_min"], name=f"{prefix}/gguf_min"),
                      helper.make_node("Add", [f"{y}/gguf_scaled", f"{y}/gguf_min"], [y], name=f"{prefix}/gguf_add")]
            new_nodes[idx] = extra
        counts[b.kind] = counts.get(b.kind, 0) + 1
    if not counts:
        raise BuildError(f"{model_path}: no MatMulNBits node matched the GGUF's tensors")
    nodes: list[Any] = []
    for idx, node in enumerate(g.node):
        nodes.append(node)
        nodes.extend(new_nodes.get(idx, []))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in list(g.initializer) + new_inits if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    save_external(model, model_path)
    log(f"carried {sum(counts.values())} GGUF matrices over ({counts}); max relative difference to the "
        f"dequantised weights {worst:.2e}")
    return {"carried_matrices": counts, "max_rel_diff_vs_dequantised": worst, **info}


def _retarget_embedding(g: Any, old: list[str], bname: str, sname: str, b: Blocks) -> list[Any]:
    """The tied embedding (GatherBlockQuantized over the LM head's data, through a Reshape) follows
    the LM head to the carried blocks; only Q8_0 and Q4_0 blocks have its layout."""
    from onnx import numpy_helper

    out: list[Any] = []
    if not old:
        return out
    for n in g.node:
        if n.op_type != "Reshape" or n.input[0] != old[0]:
            continue
        gbq = [m for m in g.node if m.op_type == "GatherBlockQuantized" and n.output[0] in m.input]
        if not gbq:
            continue
        if b.m is not None:
            raise BuildError("the tied embedding is Q4_1 in the GGUF; GatherBlockQuantized takes no float "
                             "minimums, so it cannot be carried over")
        rows, nb = b.q.shape[0], b.q.shape[1]
        shape = f"{bname}.embed_shape"
        out.append(numpy_helper.from_array(np.asarray([rows, nb * BLOCK * b.bits // 8], np.int64), shape))
        n.input[0], n.input[1] = bname, shape
        for m in gbq:
            m.input[2] = sname
            for a in m.attribute:
                if a.name == "bits":
                    a.i = b.bits
                elif a.name == "block_size":
                    a.i = BLOCK
    return out
