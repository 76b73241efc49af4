"""Sources for the onnxruntime-genai builder: a Hugging Face folder, or one made from a GGUF.

Build-time only (``build-hf`` extra: torch, transformers, accelerate); the daemon never imports this.

* :func:`check_hf_folder` reads a folder's ``config.json`` and refuses, in one line, an architecture
  the builder does not export.
* :func:`gguf_to_hf` dequantises a GGUF through transformers' GGUF loader and writes an fp32 HF
  folder (weights, config, tokenizer, chat template). transformers refuses ``save_pretrained`` on a
  GGUF-loaded model, so a fresh model is built from the config and given the state dict. Its GGUF
  tokenizer drops SmolLM's digit-splitting pre-tokenizer step (llama.cpp's ``smollm`` pre-tokenizer):
  it is put back, or "2024" would tokenize differently from the model's training.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import BuildError

# config.json "architectures"[0] values that onnxruntime_genai.models.builder exports as decoders (0.18)
SUPPORTED_ARCHITECTURES = (
    "ChatGLMModel", "ChatGLMForConditionalGeneration", "Ernie4_5ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "GraniteForCausalLM",
    "InternLM2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "NemotronForCausalLM", "OlmoForCausalLM",
    "PhiForCausalLM", "Phi3ForCausalLM", "Phi3SmallForCausalLM", "PhiMoEForCausalLM", "Qwen2ForCausalLM",
    "Qwen3ForCausalLM", "SmolLM3ForCausalLM",
)
# GGUF pre-tokenizers that split every digit on its own before the byte-level regex
_DIGIT_SPLIT_PRE = ("smollm",)


def _missing(what: str) -> BuildError:
    return BuildError(f"{what} needs torch and transformers: pip install 'ondevice-agent[build-hf]' "
                      f"(torch==2.13.0, the CPU wheel)")


def family_of(architecture: str) -> str:
    """``LlamaForCausalLM`` -> ``llama``; ``Gemma3ForCausalLM`` -> ``gemma3``."""
    for suffix in ("ForCausalLM", "ForConditionalGeneration", "Model"):
        if architecture.endswith(suffix):
            return architecture[: -len(suffix)].lower()
    return architecture.lower()


def check_hf_folder(path: Path) -> dict[str, Any]:
    """The folder's config.json; BuildError (one line) for a missing folder or an unsupported architecture."""
    cfg_path = path / "config.json"
    if not path.is_dir():
        raise BuildError(f"{path}: expected a Hugging Face model folder, got no such directory")
    try:
        cfg: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildError(f"{cfg_path}: missing or unreadable config.json: {e}") from None
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    if arch not in SUPPORTED_ARCHITECTURES:
        raise BuildError(f"{path}: architecture {arch!r} (model_type {cfg.get('model_type')!r}) is not supported "
                         f"by the onnxruntime-genai builder; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return cfg


def gguf_architecture(gguf: Path) -> str:
    from agent.llm.gguf_source import _open_reader

    r = _open_reader(gguf)
    f = r.fields.get("general.architecture")
    if f is None:
        raise BuildError(f"{gguf}: GGUF metadata has no 'general.architecture'")
    return str(f.contents())


def _fix_tokenizer(out: Path, pre: str) -> bool:
    """Put SmolLM's digit splitting back into tokenizer.json; True when it changed the file."""
    if pre not in _DIGIT_SPLIT_PRE:
        return False
    p = out / "tokenizer.json"
    tok = json.loads(p.read_text(encoding="utf-8"))
    cur = tok.get("pre_tokenizer") or {}
    steps = cur.get("pretokenizers", [cur]) if cur.get("type") == "Sequence" else [cur]
    if any(s.get("type") == "Digits" for s in steps):
        return False
    tok["pre_tokenizer"] = {"type": "Sequence",
                            "pretokenizers": [{"type": "Digits", "individual_digits": True}, *steps]}
    p.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return True


def gguf_to_hf(gguf: Path, out: Path, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Write an fp32 Hugging Face folder for ``gguf`` at ``out`` (atomically: a temp dir renamed)."""
    arch = gguf_architecture(gguf)
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise _missing("reading a GGUF for the onnxruntime-genai builder") from None
    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise BuildError(f"{gguf}: GGUF architecture {arch!r} is not supported by transformers' GGUF loader "
                         f"(supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})")
    from agent.llm.gguf_source import _open_reader

    hf_logging.disable_progress_bar()
    pre_field = _open_reader(gguf).fields.get("tokenizer.ggml.pre")
    pre = str(pre_field.contents()) if pre_field is not None else "default"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        log(f"dequantising {gguf.name} ({arch}) through transformers' GGUF loader")
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - transformers raises many types; one line at the boundary
            raise BuildError(f"{gguf}: transformers cannot load it: {type(e).__name__}: "
                             f"{' '.join(str(e).split())[:300]}") from None
        cfg = loaded.config.to_dict()
        cfg.pop("quantization_config", None)
        fresh = type(loaded)(type(loaded.config).from_dict(cfg))
        res = fresh.load_state_dict(loaded.state_dict(), strict=False)
        if res.missing_keys:
            raise BuildError(f"{gguf}: the dequantised state dict lacks {res.missing_keys[:3]}")
        if getattr(fresh.config, "tie_word_embeddings", False):
            fresh.tie_weights()
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del loaded, fresh
        fixed = _fix_tokenizer(tmp, pre)
        if fixed:
            log(f"tokenizer: restored the digit-splitting pre-tokenizer step ({pre!r})")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"gguf_architecture": arch, "gguf_pre_tokenizer": pre, "digit_split_restored": fixed}


def llama_weights_to_hf(w: Any, keep: list[int], base: Path, dest: Path) -> Path:
    """A llama HF folder at ``dest`` holding only the ``keep`` layers of ``w`` (LlamaWeights, HF layout),
    renumbered 0..len(keep)-1; config, tokenizer and chat template copied from ``base``."""
    import numpy as np

    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise _missing("writing a pruned model for the onnxruntime-genai builder") from None
    cfg = check_hf_folder(base)
    if cfg.get("model_type") != "llama":
        raise BuildError(f"{base}: layer pruning rebuilds llama models, got model_type {cfg.get('model_type')!r}")
    dest.mkdir(parents=True, exist_ok=True)
    sd: dict[str, np.ndarray] = {"model.embed_tokens.weight": w.embed, "model.norm.weight": w.final_norm}
    if not cfg.get("tie_word_embeddings", False):
        sd["lm_head.weight"] = w.lm_head
    for j, i in enumerate(keep):
        L, p = w.layers[i], f"model.layers.{j}."
        sd |= {p + "input_layernorm.weight": L.attn_norm, p + "post_attention_layernorm.weight": L.ffn_norm,
               p + "self_attn.q_proj.weight": L.wq, p + "self_attn.k_proj.weight": L.wk,
               p + "self_attn.v_proj.weight": L.wv, p + "self_attn.o_proj.weight": L.wo,
               p + "mlp.gate_proj.weight": L.w_gate, p + "mlp.up_proj.weight": L.w_up,
               p + "mlp.down_proj.weight": L.w_down}
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}, str(dest / "model.safetensors"))
    cfg = {**cfg, "num_hidden_layers": len(keep)}
    if isinstance(cfg.get("layer_types"), list):
        cfg["layer_types"] = [cfg["layer_types"][i] for i in keep]
    (dest / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja"):
        if (base / name).is_file():
            shutil.copy2(base / name, dest / name)
    return dest
