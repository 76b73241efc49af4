"""Regenerate tests/llm/data/tiny_builder_{fp32,int4}: the tiny random llama of ``tiny.py`` written as a
Hugging Face folder and converted by the onnxruntime-genai model builder (the graph family the zoo ships).

Needs the build tools (torch, transformers, onnxruntime-genai); the tests only read the committed output:

    PYTHONPATH=. python tests/llm/make_tiny_builder.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))


def main() -> None:
    import torch
    from tiny import make_tiny_gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = make_tiny_gguf(tmp / "tiny.gguf")
        c, w = t.cfg, t.weights
        cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden, intermediate_size=c.ffn,
                          num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
                          num_key_value_heads=c.num_kv_heads, max_position_embeddings=c.context_length,
                          rms_norm_eps=c.rms_eps, rope_theta=c.rope_theta, tie_word_embeddings=True,
                          bos_token_id=1, eos_token_id=2, torch_dtype="float32")
        m = LlamaForCausalLM(cfg)
        sd = {"model.embed_tokens.weight": w.embed, "model.norm.weight": w.final_norm, "lm_head.weight": w.embed}
        for i, L in enumerate(w.layers):
            p = f"model.layers.{i}."
            sd |= {p + "input_layernorm.weight": L.attn_norm, p + "post_attention_layernorm.weight": L.ffn_norm,
                   p + "self_attn.q_proj.weight": L.wq, p + "self_attn.k_proj.weight": L.wk,
                   p + "self_attn.v_proj.weight": L.wv, p + "self_attn.o_proj.weight": L.wo,
                   p + "mlp.gate_proj.weight": L.w_gate, p + "mlp.up_proj.weight": L.w_up,
                   p + "mlp.down_proj.weight": L.w_down}
        m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()})
        hf = tmp / "hf"
        m.save_pretrained(hf)
        from agent.llm.convert import write_tokenizer
        from agent.llm.gguf_source import GGUFModel

        write_tokenizer(GGUFModel(t.path), hf / "tokenizer.json")
        (hf / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
        for prec in ("fp32", "int4"):
            out = HERE / "data" / f"tiny_builder_{prec}"
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                            "-p", prec, "-e", "cpu", "-c", str(tmp / "cache")], check=True)
            for f in out.iterdir():
                if f.name not in ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"):
                    f.unlink()
            print(out, sorted(p.name for p in out.iterdir()), json.loads((out / "genai_config.json").read_text())
                  ["model"]["decoder"]["num_hidden_layers"])


if __name__ == "__main__":
    main()
