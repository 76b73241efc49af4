"""``python -m agent.llm.genai_shim ARGS``: the onnxruntime-genai builder's command line, with config fixes.

transformers 5 writes Gemma 3's rotary settings per layer type (``rope_parameters = {"full_attention":
{...}, "sliding_attention": {...}}``) and drops ``rope_local_base_freq``; the builder (0.18) reads the
flat form and that attribute. This shim adds both to the loaded config (values unchanged) and then
runs the builder's own ``__main__``. Build-time only.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any


def compat(cfg: Any) -> Any:
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and isinstance(rp.get("sliding_attention"), dict):
        full = rp.get("full_attention") or rp["sliding_attention"]
        rp.setdefault("rope_type", full.get("rope_type", "default"))
        rp.setdefault("rope_theta", full.get("rope_theta"))
        if getattr(cfg, "rope_local_base_freq", None) is None:
            cfg.rope_local_base_freq = rp["sliding_attention"]["rope_theta"]
        if getattr(cfg, "rope_theta", None) is None:
            cfg.rope_theta = full.get("rope_theta")
    return cfg


def main() -> None:
    import transformers

    original = transformers.AutoConfig.from_pretrained

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        return compat(original(*args, **kwargs))

    transformers.AutoConfig.from_pretrained = from_pretrained  # type: ignore[method-assign]
    sys.argv = ["onnxruntime_genai.models.builder", *sys.argv[1:]]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
