"""Builders for causal-lm recipes (see docs/LLM.md).

- ``genai-builder``     the onnxruntime-genai model builder's decoder at the variant's precision
                        (fp32 | fp16 | int8 | int4), from a GGUF (dequantised through transformers) or a
                        Hugging Face folder, any architecture the builder exports. ``gguf_blocks = true``
                        (int4 from a Q4_0/Q4_1/Q8_0 GGUF) carries the source's own blocks over.
                        The variant directory is the builder's output folder (model.onnx + .data,
                        genai_config.json, tokenizer, chat template) plus ``llm.json``.
- ``gguf-onnx``         the decoder at the variant's precision: fp32 | fp16 | int8 | int4
                        (int8/int4: MatMulNBits, block 32, symmetric, accuracy_level 4; the LM head int8
                        and the embedding table fp16 in both). fp32/fp16 are cross-checked against the
                        numpy reference (max |logit diff| in the build info).
- ``gguf-layer-prune``  drop the ``drop`` layers whose single removal hurts calibration perplexity least;
                        with ``distill = true`` heal the kept layers by layer-wise distillation from the
                        full model (torch, time-boxed); then export at the variant's precision.

Every variant directory holds ``model.onnx``, ``tokenizer.json`` and ``llm.json`` (the [llm] table).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from agent.errors import BuildError
from agent.zoo.build.registry import BuildContext, BuildResult, Param, register_builder

TOOLS = ("onnxruntime", "onnx", "onnx-ir", "gguf", "tokenizers", "numpy")
GENAI_TOOLS = ("onnxruntime", "onnxruntime-genai", "onnx", "onnx-ir", "transformers", "torch", "gguf",
               "tokenizers", "safetensors")
INT4_ALGOS = ("default", "rtn", "k_quant", "k_quant_mixed", "k_quant_last", "rtn_last")
MAIN = "model.onnx"
_RANK_MEMO: dict[str, tuple[float, dict[int, float]]] = {}


def _prepare(ctx: BuildContext) -> tuple[Any, Any, Any, dict[str, Any]]:
    from agent.llm.convert import TOKENIZER_FILE, llm_table, write_tokenizer
    from agent.llm.gguf_source import GGUFModel
    from agent.llm.tokenizer import load_tokenizer

    if ctx.spec.precision not in ("fp32", "fp16", "int8", "int4"):
        raise BuildError(f"precision: expected fp32, fp16, int8 or int4, got {ctx.spec.precision!r}")
    ctx.log(f"reading {ctx.input_path.name}")
    g = GGUFModel(ctx.input_path)
    w = g.weights()
    write_tokenizer(g, ctx.out_dir / TOKENIZER_FILE)
    table = llm_table(g)
    (ctx.out_dir / "llm.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    return g, w, load_tokenizer(ctx.out_dir / TOKENIZER_FILE), table


def _export(ctx: BuildContext, g: Any, w: Any, keep: list[int] | None, info: dict[str, Any]) -> None:
    from agent.llm.convert import export_variant

    prec = ctx.spec.precision
    ctx.log(f"writing the {prec} decoder" + (f" ({len(keep)} of {g.config.num_layers} layers)" if keep else ""))
    export_variant(g.config, w, prec, ctx.out_dir / MAIN, keep_layers=keep, block_size=ctx.params["block_size"])
    if prec in ("int8", "int4"):
        info["weight_only"] = {"bits": 8 if prec == "int8" else 4, "lm_head_bits": 8, "embedding": "fp16",
                               "block_size": ctx.params["block_size"], "accuracy_level": 4, "symmetric": True}


@register_builder("gguf-onnx", precision="fp32", accepts=("gguf",), tools=TOOLS, version=1, params={
    "block_size": Param(int, 32, "weight-only quantization block size", lo=16, hi=256),
    "check_tokens": Param(int, 12, "tokens cross-checked against the numpy reference (0 = skip)", lo=0, hi=128),
})
def gguf_onnx(ctx: BuildContext) -> BuildResult:
    """Convert a llama GGUF to an ONNX decoder with KV cache at the variant's precision."""
    from agent.llm.convert import cross_check

    g, w, tok, table = _prepare(ctx)
    info: dict[str, Any] = {"config": g.config.to_dict()}
    _export(ctx, g, w, None, info)
    n = ctx.params["check_tokens"]
    if n and ctx.spec.precision == "fp32":
        ids = tok.encode("The capital of France is Paris. In 1889 the Eiffel Tower opened",
                         add_special_tokens=False).ids
        diff = cross_check(ctx.out_dir / MAIN, g.config, w, ids[:n])
        info["max_abs_logit_diff_vs_numpy"] = diff
        ctx.log(f"cross-check against the numpy reference: max |logit diff| {diff:.2e}")
        if diff > 1e-2:
            raise BuildError(f"the ONNX decoder disagrees with the numpy reference (max |logit diff| {diff:.3g})")
    return BuildResult(main=MAIN, precision=ctx.spec.precision, info=info, llm=table)


def _calibration(ctx: BuildContext, tok: Any, count: int, skip: int = 0) -> list[int]:
    from agent.llm.evaldata import load_text

    ev = ctx.recipe.eval
    text = load_text(ev.calibration, Path(ev.base) if ev.base else None)
    start = len(text) // 3  # past the opening chapters that small models have memorised
    ids = tok.encode(text[start:start + 12 * (count + skip) + 1000], add_special_tokens=False).ids[skip:skip + count]
    if len(ids) < count:
        raise BuildError(f"calibration text {ev.calibration!r} gave {len(ids)} tokens, {count} needed")
    return list(ids)


PRUNE_PARAMS = {
    "drop": Param(int, 4, "layers to drop", lo=1, hi=64),
    "rank_tokens": Param(int, 256, "calibration tokens used to rank layers", lo=32, hi=8192),
    "distill": Param(bool, False, "heal the kept layers by distillation (needs torch)"),
    "distill_minutes": Param(float, 8.0, "time box for distillation", lo=0.1, hi=600),
    "distill_tokens": Param(int, 8192, "calibration tokens for distillation", lo=256, hi=1_000_000),
    "distill_lr": Param(float, 3e-4, "learning rate", lo=1e-7, hi=1.0),
    "distill_epochs": Param(int, 3, "passes over the distillation windows per layer", lo=1, hi=1000),
    "distill_layers_per_gap": Param(int, 1, "kept layers retrained after each gap", lo=1, hi=64),
    "block_size": Param(int, 32, "weight-only quantization block size", lo=16, hi=256),
}


def _prune(ctx: BuildContext, g: Any, w: Any, tok: Any) -> tuple[Any, list[int], dict[str, Any]]:
    """Rank the layers on calibration text, choose the ones to drop, optionally distill: the (healed)
    weights, the kept layer indices and the build info."""
    from agent.llm.prune import choose_drop, rank_layers

    p = ctx.params
    rank_ids = _calibration(ctx, tok, p["rank_tokens"])
    windows = [rank_ids[i:i + 128] for i in range(0, len(rank_ids), 128) if len(rank_ids[i:i + 128]) > 8]
    memo_key = hashlib.sha256(json.dumps([str(ctx.input_path), ctx.input_path.stat().st_size,
                                          rank_ids]).encode()).hexdigest()
    memo_file = ctx.input_path.parent / f".layer-rank-{memo_key[:16]}.json"
    if memo_key not in _RANK_MEMO and memo_file.is_file():
        try:
            d = json.loads(memo_file.read_text())
            _RANK_MEMO[memo_key] = (float(d["base"]), {int(k): float(v) for k, v in d["scores"].items()})
        except (OSError, ValueError, KeyError):
            pass
    if memo_key not in _RANK_MEMO:
        ctx.log(f"ranking {g.config.num_layers} layers by calibration perplexity ({len(rank_ids)} tokens)")
        _RANK_MEMO[memo_key] = rank_layers(g.config, w, windows, ctx.log)
        try:  # next to the cached source (the zoo's .cache): a rebuild need not rank again
            memo_file.write_text(json.dumps({"base": _RANK_MEMO[memo_key][0], "scores": _RANK_MEMO[memo_key][1]}))
        except OSError:
            pass
    base, scores = _RANK_MEMO[memo_key]
    dropped = choose_drop(scores, p["drop"])
    keep = [i for i in range(g.config.num_layers) if i not in dropped]
    ctx.log(f"dropping layers {dropped}")
    info: dict[str, Any] = {"dropped_layers": dropped, "calibration_perplexity_full": round(base, 3),
                            "single_drop_perplexity": {str(i): round(s, 3) for i, s in scores.items()}}
    if p["distill"]:
        from agent.llm.distill import distill

        d_ids = _calibration(ctx, tok, p["distill_tokens"], skip=p["rank_tokens"])
        ctx.log(f"distilling on {len(d_ids)} tokens for at most {p['distill_minutes']} min")
        w, dinfo = distill(g.config, w, keep, d_ids, minutes=p["distill_minutes"], lr=p["distill_lr"],
                           epochs=p["distill_epochs"], layers_per_gap=p["distill_layers_per_gap"], log=ctx.log)
        info["distill"] = dinfo
    return w, keep, info


@register_builder("gguf-layer-prune", precision="int8", accepts=("gguf",), uses_eval=True,
                  tools=(*TOOLS, "torch"), version=2, params=PRUNE_PARAMS)
def gguf_layer_prune(ctx: BuildContext) -> BuildResult:
    """Drop the layers that matter least (measured), optionally heal by distillation, export."""
    g, w, tok, table = _prepare(ctx)
    w, keep, info = _prune(ctx, g, w, tok)
    _export(ctx, g, w, keep, info)
    return BuildResult(main=MAIN, precision=ctx.spec.precision, info=info, llm=table)


def _sha256(p: Path) -> str:
    from agent.zoo.manifest import sha256_file

    return sha256_file(p)


def hf_source(ctx: BuildContext) -> tuple[Path, dict[str, Any]]:
    """The Hugging Face folder the builder reads: the source itself, or one made from the GGUF (cached
    in the zoo's ``.cache/hf/<sha>`` so the variants of one build convert it once)."""
    from agent.llm.hf_export import check_hf_folder, gguf_to_hf

    src = ctx.input_path
    if src.is_dir():
        cfg = check_hf_folder(src)
        return src, {"source_format": "hf", "model_type": cfg.get("model_type")}
    sha = _sha256(src)
    cache = ctx.out_dir.parent.parent / ".cache" / "hf" / sha[:16]
    info: dict[str, Any] = {"source_format": "gguf", "hf_cache": str(cache)}
    meta = cache / "ondevice-source.json"
    if meta.is_file():
        info.update(json.loads(meta.read_text(encoding="utf-8")))
        ctx.log(f"using the dequantised Hugging Face folder {cache}")
    else:
        info.update(gguf_to_hf(src, cache, ctx.log))
        meta.write_text(json.dumps({k: v for k, v in info.items() if k != "hf_cache"}), encoding="utf-8")
    cfg = check_hf_folder(cache)
    info["model_type"] = cfg.get("model_type")
    return cache, info


@register_builder("genai-builder", precision="fp32", accepts=("gguf", "hf"), tools=GENAI_TOOLS, version=1, params={
    "block_size": Param(int, 32, "weight-only block size (int8/int4)", lo=16, hi=256),
    "accuracy_level": Param(int, 4, "MatMulNBits activation precision: 4 = int8 (fast on CPU), 0-3 float",
                            lo=0, hi=4),
    "symmetric": Param(bool, True, "symmetric weight-only quantization (no zero points)"),
    "algo": Param(str, "default", "weight-only method; *_mixed / *_last keep sensitive MatMuls at 8 bits",
                  choices=INT4_ALGOS),
    "gguf_blocks": Param(bool, False, "int4 from a GGUF: carry its own Q4_0/Q4_1/Q8_0 blocks over"),
    "extra_options": Param(list, [], "more KEY=VALUE options passed to the builder as they are"),
})
def genai_builder(ctx: BuildContext) -> BuildResult:
    """The onnxruntime-genai builder's decoder (GQA, MatMulNBits) from a GGUF or a Hugging Face folder."""
    from agent.llm.genai_build import MAIN as GMAIN
    from agent.llm.genai_build import builder_options, llm_table_for, run_builder

    prec, p = ctx.spec.precision, ctx.params
    if prec not in ("fp32", "fp16", "int8", "int4"):
        raise BuildError(f"precision: expected fp32, fp16, int8 or int4, got {prec!r}")
    if p["gguf_blocks"]:
        if prec != "int4" or ctx.input_path.is_dir():
            raise BuildError("gguf_blocks: expected precision int4 from a GGUF source")
        if p["block_size"] != 32:
            raise BuildError(f"gguf_blocks: GGUF blocks are 32 weights, got block_size = {p['block_size']}")
    hf_dir, info = hf_source(ctx)
    opts = builder_options(prec, p)
    cache = ctx.out_dir.parent.parent / ".cache" / "genai"
    info["builder_s"] = round(run_builder(hf_dir, ctx.out_dir, prec, opts, cache, ctx.log), 2)
    info["builder_options"] = opts
    if p["gguf_blocks"]:
        from agent.llm.gguf_blocks import carry_over

        info["gguf_blocks"] = carry_over(ctx.out_dir / GMAIN, ctx.input_path, hf_dir, p["accuracy_level"], ctx.log)
    family = str(info.get("model_type") or "unknown")
    table = llm_table_for(ctx.out_dir, family)
    (ctx.out_dir / "llm.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    info["weights_bytes"] = sum(f.stat().st_size for f in ctx.out_dir.glob("model.onnx*"))
    return BuildResult(main=GMAIN, precision=prec, info=info, llm=table)


@register_builder("genai-layer-prune", precision="int8", accepts=("gguf",), uses_eval=True, tools=GENAI_TOOLS,
                  version=1, params={**PRUNE_PARAMS,
                                     "accuracy_level": Param(int, 4, "MatMulNBits activation precision", lo=0, hi=4),
                                     "symmetric": Param(bool, True, "symmetric weight-only quantization"),
                                     "algo": Param(str, "default", "weight-only method", choices=INT4_ALGOS)})
def genai_layer_prune(ctx: BuildContext) -> BuildResult:
    """Layer-pruned (optionally distilled) llama rebuilt as an onnxruntime-genai builder graph; the dropped
    layers keep their KV inputs/outputs (passed through), so the signature equals the full model's."""
    import shutil
    import tempfile

    from agent.llm.genai_build import MAIN as GMAIN
    from agent.llm.genai_build import builder_options, llm_table_for, pad_dropped_layers, run_builder
    from agent.llm.hf_export import llama_weights_to_hf

    prec, p = ctx.spec.precision, ctx.params
    g, w, tok, _ = _prepare(ctx)
    w, keep, info = _prune(ctx, g, w, tok)
    base_hf, src_info = hf_source(ctx)
    tmp = Path(tempfile.mkdtemp(dir=ctx.out_dir.parent, prefix=".tmp-hf-"))
    try:
        llama_weights_to_hf(w, keep, base_hf, tmp)
        opts = builder_options(prec, {**p, "extra_options": []})
        cache = ctx.out_dir.parent.parent / ".cache" / "genai"
        info["builder_s"] = round(run_builder(tmp, ctx.out_dir, prec, opts, cache, ctx.log), 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pad_dropped_layers(ctx.out_dir / GMAIN, keep, g.config.num_layers)
    table = llm_table_for(ctx.out_dir, str(src_info.get("model_type") or "llama"))
    (ctx.out_dir / "llm.json").write_text(json.dumps(table, indent=1), encoding="utf-8")
    info["builder_options"] = opts
    info["weights_bytes"] = sum(f.stat().st_size for f in ctx.out_dir.glob("model.onnx*"))
    return BuildResult(main=GMAIN, precision=prec, info=info, llm=table)
