"""Run the onnxruntime-genai model builder on a Hugging Face folder; describe what it wrote.

The builder (``python -m onnxruntime_genai.models.builder``) runs in a child process: it imports
torch and transformers and holds the whole fp32 model, and its own progress output is long. Its output
folder (model.onnx + model.onnx.data, genai_config.json, tokenizer files, chat template) is a variant
as it stands; :func:`llm_table_for` reads it into the manifest's ``[llm]`` table.

Graph contract (see docs/LLM.md): inputs ``input_ids`` [batch, seq] int64, ``attention_mask``
[batch, total_seq] int64, ``past_key_values.{i}.key/value`` [batch, kv_heads, past_seq, head_dim];
outputs ``logits``, ``present.{i}.key/value``; GroupQueryAttention, MatMulNBits, GatherBlockQuantized.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.errors import BuildError

PRECISIONS = ("fp32", "fp16", "int8", "int4")
MAIN = "model.onnx"
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<end_of_turn>", "<eos>", "<|end|>")


def builder_options(precision: str, params: Mapping[str, Any]) -> dict[str, str]:
    """``--extra_options`` for a variant from the recipe's params (weight-only precisions only)."""
    opts: dict[str, str] = {}
    if precision in ("int8", "int4"):
        opts["block_size"] = str(params["block_size"])
        opts["accuracy_level"] = str(params["accuracy_level"])
        opts["is_symmetric"] = "true" if params["symmetric"] else "false"
        if params["algo"] != "default":
            opts["algo_config"] = params["algo"]
    for kv in params.get("extra_options") or ():
        k, sep, v = kv.partition("=")
        if not sep or not k.strip():
            raise BuildError(f"extra_options: expected KEY=VALUE, got {kv!r}")
        opts[k.strip()] = v.strip()
    return opts


def run_builder(hf_dir: Path, out_dir: Path, precision: str, options: Mapping[str, str], cache_dir: Path,
                log: Callable[[str], None] = lambda s: None, timeout: float = 3600) -> float:
    """Build one graph into ``out_dir``; returns the builder's seconds. BuildError with its last error line."""
    import time

    if precision not in PRECISIONS:
        raise BuildError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "agent.llm.genai_shim", "-i", str(hf_dir), "-o", str(out_dir),
           "-p", precision, "-e", "cpu", "-c", str(cache_dir)]
    if options:
        cmd += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    log(f"onnxruntime-genai builder: -p {precision} " + " ".join(f"{k}={v}" for k, v in options.items()))
    logf = cache_dir / f"builder-{precision}.log"
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    try:
        with open(logf, "w", encoding="utf-8") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        raise BuildError(f"the onnxruntime-genai builder ran past {timeout:.0f}s (log: {logf})") from None
    except OSError as e:
        raise BuildError(f"cannot run the onnxruntime-genai builder: {e}") from None
    if r.returncode != 0:
        raise BuildError(f"the onnxruntime-genai builder failed: {_last_error(logf)} (log: {logf})")
    if not (out_dir / MAIN).is_file():
        raise BuildError(f"the onnxruntime-genai builder wrote no {MAIN} (log: {logf})")
    return time.perf_counter() - t0


def _last_error(logf: Path) -> str:
    try:
        lines = [ln.strip() for ln in logf.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    if any("No module named" in ln and "onnxruntime_genai" in ln for ln in lines):
        return "onnxruntime-genai is not installed: pip install 'ondevice-agent[build,build-hf]'"
    for ln in reversed(lines):
        if "Error" in ln or "error:" in ln or "Exception" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def graph_signature(model: Path) -> dict[str, Any]:
    """Input/output names and the KV dtype of a decoder graph (no weights loaded)."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    ins = {i.name: i for i in m.graph.input}
    outs = [o.name for o in m.graph.output]
    past = sorted((n for n in ins if n.startswith("past_key_values.")),
                  key=lambda n: (int(n.split(".")[1]), n.endswith(".value")))
    for need in ("input_ids", "attention_mask"):
        if need not in ins:
            raise BuildError(f"{model}: the decoder has no input {need!r}")
    if not past or "logits" not in outs:
        raise BuildError(f"{model}: expected past_key_values.* inputs and a logits output")
    t = ins[past[0]].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
    ops = sorted({n.op_type for n in m.graph.node})
    return {"inputs": sorted(ins), "kv_dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "num_layers": len(past) // 2, "num_kv_heads": dims[1], "head_dim": dims[3], "ops": ops,
            "logits_dtype": onnx.helper.tensor_dtype_to_np_dtype(
                next(o for o in m.graph.output if o.name == "logits").type.tensor_type.elem_type).name}


def _chat_template(folder: Path) -> str | None:
    p = folder / "chat_template.jinja"
    if p.is_file():
        return p.read_text(encoding="utf-8")
    try:
        tc = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    t = tc.get("chat_template")
    return t if isinstance(t, str) else None


def _ids(v: Any) -> list[int]:
    if v is None:
        return []
    return [int(x) for x in (v if isinstance(v, list) else [v])]


def llm_table_for(folder: Path, family: str, tokenizer_file: str = "tokenizer.json") -> dict[str, Any]:
    """The manifest's ``[llm]`` table for a builder output folder (see docs/LLM.md)."""
    from agent.llm.tokenizer import chat_settings_from_gguf_template, load_tokenizer

    try:
        gc = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))["model"]
    except (OSError, ValueError, KeyError) as e:
        raise BuildError(f"{folder}: missing or unreadable genai_config.json: {e}") from None
    sig = graph_signature(folder / MAIN)
    dec = gc.get("decoder", {})
    tok = load_tokenizer(folder / tokenizer_file)
    vocab = tok.get_vocab(with_added_tokens=True)
    eos = _ids(gc.get("eos_token_id"))
    try:
        eos += _ids(json.loads((folder / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id"))
    except (OSError, ValueError):
        pass
    eos += [vocab[t] for t in _END_TOKENS if t in vocab]
    eos = list(dict.fromkeys(eos))
    bos = gc.get("bos_token_id")
    bos_id = int(bos[0] if isinstance(bos, list) else bos) if bos is not None else -1
    probe = tok.encode("Hello", add_special_tokens=True).ids
    template = _chat_template(folder)
    chat = chat_settings_from_gguf_template(template)
    table: dict[str, Any] = {
        "tokenizer": tokenizer_file,
        "chat_template": chat["chat_template"],
        "default_system_prompt": chat["default_system_prompt"],
        "eos_token_ids": eos,
        "bos_token_id": bos_id,
        "add_bos": bool(bos_id >= 0 and probe[:1] == [bos_id]),
        "context_length": int(gc.get("context_length", 2048)),
        "vocab_size": int(gc.get("vocab_size", tok.get_vocab_size())),
        "num_layers": sig["num_layers"],
        "num_kv_heads": int(dec.get("num_key_value_heads", sig["num_kv_heads"])),
        "head_dim": int(dec.get("head_size", sig["head_dim"])),
        "kv_dtype": sig["kv_dtype"],
        "family": family,
        "graph": "onnxruntime-genai-builder",
        "genai_type": str(gc.get("type", "")),
        # GroupQueryAttention with a sliding window refuses a KV buffer shorter than the window: an
        # engine must allocate at least this many positions (0 = no minimum)
        "min_kv_capacity": int((dec.get("sliding_window") or {}).get("window_size", 0) or 0),
    }
    if template and chat["chat_template"] == "none":
        table["chat_template_source"] = template  # a template we do not render yet, kept for the record
    return table


def pad_dropped_layers(model_path: Path, keep: list[int], total: int) -> None:
    """Give a layer-pruned builder graph the full model's signature: the kept layers' KV tensors are
    renamed to their original indices, and every dropped layer gets its ``past_key_values.{i}.*``
    input passed through to ``present.{i}.*`` (Identity; it stays empty, or is the same buffer when the
    engine binds past and present in place). Only the protobuf is rewritten; the weights file stays."""
    import onnx
    from onnx import helper

    m = onnx.load(str(model_path), load_external_data=False)
    g = m.graph
    names: dict[str, str] = {}
    for j, i in enumerate(keep):
        for kind in ("key", "value"):
            names[f"past_key_values.{j}.{kind}"] = f"past_key_values.{i}.{kind}"
            names[f"present.{j}.{kind}"] = f"present.{i}.{kind}"
    for n in g.node:
        for seq in (n.input, n.output):
            for k, x in enumerate(seq):
                if x in names:
                    seq[k] = names[x]
    for vi in list(g.input) + list(g.output):
        if vi.name in names:
            vi.name = names[vi.name]
    proto_in = next(x for x in g.input if x.name.startswith("past_key_values."))
    proto_out = next(x for x in g.output if x.name.startswith("present."))
    for i in sorted(set(range(total)) - set(keep)):
        for kind in ("key", "value"):
            a, b = f"past_key_values.{i}.{kind}", f"present.{i}.{kind}"
            vin, vout = onnx.ValueInfoProto(), onnx.ValueInfoProto()
            vin.CopyFrom(proto_in)
            vin.name = a
            vout.CopyFrom(proto_out)
            vout.name = b
            g.input.append(vin)
            g.output.append(vout)
            g.node.append(helper.make_node("Identity", [a], [b], name=f"/model/layers.{i}/dropped/{kind}"))

    def key(v: Any) -> tuple[int, int, bool]:
        return (0 if not v.name.startswith(("past_key_values.", "present.")) else 1,
                int(v.name.split(".")[1]) if v.name.startswith(("past_key_values.", "present.")) else 0,
                v.name.endswith(".value"))

    for seq in (g.input, g.output):
        items = sorted(seq, key=key)
        del seq[:]
        seq.extend(items)
    onnx.save_model(m, str(model_path))
    cfg_path = model_path.parent / "genai_config.json"
    if cfg_path.is_file():
        gc = json.loads(cfg_path.read_text(encoding="utf-8"))
        gc["model"]["decoder"]["num_hidden_layers"] = total
        cfg_path.write_text(json.dumps(gc, indent=4), encoding="utf-8")
