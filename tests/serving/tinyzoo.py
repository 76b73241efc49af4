"""A zoo holding the tiny random llama (tests/llm/tiny.py) as a ``causal-lm`` model: fp32 + int8.

The decoders are written by the project's own converter (``agent.llm.convert``), the manifest by
``agent.zoo.manifest.save_manifest``, exactly as the zoo builders would. Also used by
``benchmarks/bench_llm_serving.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL = "tiny"
VARIANTS = ("fp32", "int8")


def make_tiny_llm_zoo(zoo: Path, name: str = MODEL, variants: tuple[str, ...] = VARIANTS,
                      eos: bool = False, **shape: int) -> Path:
    """Write ``zoo/name`` (decoders, tokenizer.json, manifest.toml); returns the model folder.

    ``eos=False`` empties the EOS list: a random model would stop at arbitrary points, and tests want
    every generation to run to ``max_tokens`` so their lengths are comparable."""
    import logging

    from agent.llm.convert import export_variant, llm_table, write_tokenizer
    from agent.llm.gguf_source import GGUFModel
    from agent.zoo.manifest import Manifest, TensorSpec, Variant, save_manifest, sha256_file
    from tests.llm.tiny import make_tiny_gguf

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    folder = zoo / name
    folder.mkdir(parents=True, exist_ok=True)
    t = make_tiny_gguf(folder.parent / f".{name}.gguf", **shape)
    g = GGUFModel(t.path)
    write_tokenizer(g, folder / "tokenizer.json")
    table: dict[str, Any] = llm_table(g)
    if not eos:
        table["eos_token_ids"] = []
    vs = []
    for p in variants:
        path = export_variant(t.cfg, t.weights, p, folder / f"{p}.onnx")
        vs.append(Variant(id=p, file=path.name, precision=p, derived_from="source" if p == "fp32" else "fp32",
                          method="agent.llm.convert.export_variant", sha256=sha256_file(path),
                          size_bytes=path.stat().st_size))
    m = Manifest(name=name, kind="causal-lm", reference=variants[0],
                 inputs=(TensorSpec("input_ids", "int64", ("batch", "seq")),),
                 outputs=(TensorSpec("logits", "float32", ("batch", "seq", t.cfg.vocab_size)),),
                 variants=tuple(vs), folder=folder, description="tiny random llama for tests", llm=table)
    save_manifest(m)
    t.path.unlink()
    return folder


def llm_config(folder: Path) -> dict[str, Any]:
    from agent.zoo.manifest import load_manifest

    m = load_manifest(folder)
    assert m.llm is not None
    return dict(m.llm)


def engine_for(folder: Path, variant: str, threads: int | None = None) -> Any:
    """The same engine the worker builds, in this process (the reference for daemon output)."""
    from agent.llm.engine import LLMEngine

    cfg = llm_config(folder)
    return LLMEngine(folder / f"{variant}.onnx", folder / cfg["tokenizer"], cfg, threads=threads)


def greedy_text(engine: Any, prompt: Any, max_tokens: int) -> tuple[str, list[int]]:
    parts, ids = [], []
    for ev in engine.generate(prompt, {"max_tokens": max_tokens}):
        parts.append(ev.text)
        if ev.token_id is not None:
            ids.append(ev.token_id)
    return "".join(parts), ids


if __name__ == "__main__":  # quick manual check: python tests/serving/tinyzoo.py ZOO_DIR
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    f = make_tiny_llm_zoo(Path(sys.argv[1]))
    print(json.dumps(llm_config(f))[:300])
