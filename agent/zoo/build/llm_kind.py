"""Kind plugin ``causal-lm``: measure decoder variants on held-out text (see docs/LLM.md).

Recipe ``[eval]`` (all keys optional)::

    [eval]
    text = "pydoc-topics"        # held-out evaluation text: pydoc-topics | kjv-nt | kjv-ot | a file path
    tokens = 2048                # evaluation tokens (perplexity, top-1 agreement with the reference)
    window = 512                 # tokens per independent evaluation window
    calibration = "kjv-ot"       # text for layer selection and distillation (never evaluated on)
    calibration_tokens = 8192
    prompt = "What is the capital of France?"   # chat prompt for time to first token
    decode_tokens = 64           # greedy steps timed for decode tokens/s

Quality: metric ``perplexity``; ``relative`` = reference perplexity / variant perplexity (1.0 = equal,
lower is worse); top-1 agreement with the reference goes to ``[variants.build.eval]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import BuildError
from agent.tomlfile import Checker
from agent.zoo.build.registry import KindPlugin, MeasureContext, MeasureResult, register_kind
from agent.zoo.manifest import Measurement, Quality, TensorSpec

SIDECAR_LLM = "llm.json"


@dataclass(frozen=True)
class LLMEval:
    text: str = "pydoc-topics"
    tokens: int = 2048
    window: int = 512
    calibration: str = "kjv-ot"
    calibration_tokens: int = 8192
    prompt: str = "What is the capital of France?"
    decode_tokens: int = 64
    base: str = ""


def parse_eval(c: Checker, base: Path) -> LLMEval:
    c.only({"text", "tokens", "window", "calibration", "calibration_tokens", "prompt", "decode_tokens"})
    d = LLMEval()
    return LLMEval(
        text=c.str("text", required=False) or d.text,
        tokens=c.num("tokens", required=False, lo=16, hi=1_000_000, integer=True) or d.tokens,
        window=c.num("window", required=False, lo=8, hi=8192, integer=True) or d.window,
        calibration=c.str("calibration", required=False) or d.calibration,
        calibration_tokens=c.num("calibration_tokens", required=False, lo=256, hi=10_000_000, integer=True)
        or d.calibration_tokens,
        prompt=c.str("prompt", required=False) or d.prompt,
        decode_tokens=c.num("decode_tokens", required=False, lo=4, hi=4096, integer=True) or d.decode_tokens,
        base=str(base),
    )


def fingerprint(ev: LLMEval) -> str:
    from agent.llm.evaldata import fingerprint as fp
    from agent.llm.evaldata import load_text

    base = Path(ev.base) if ev.base else None
    d = {k: v for k, v in asdict(ev).items() if k != "base"}
    return fp(json.dumps(d, sort_keys=True), load_text(ev.text, base), load_text(ev.calibration, base))


def run_evaluate(req: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """``python -m agent.llm.evaluate`` in a fresh interpreter; its JSON answer (BuildError on error)."""
    from agent.zoo.build.tensor_kind import run_worker

    return run_worker(req, timeout, module="agent.llm.evaluate")


def read_sidecar(model_path: Path) -> dict[str, Any]:
    p = model_path.parent / SIDECAR_LLM
    try:
        data: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError) as e:
        raise BuildError(f"{p}: missing or unreadable [llm] sidecar: {e}") from None


def measure(ctx: MeasureContext) -> MeasureResult:
    ev: LLMEval = ctx.recipe.eval
    ms = ctx.recipe.measure
    llm = read_sidecar(ctx.model_path)
    ctx.log(f"measuring {ctx.variant_id}: perplexity on {ev.tokens} tokens of {ev.text}, TTFT, decode tokens/s")
    res = run_evaluate({
        "model": str(ctx.model_path), "tokenizer": str(ctx.model_path.parent / llm["tokenizer"]), "llm": llm,
        "reference": str(ctx.reference_path) if ctx.reference_path else None, "threads": ms.threads,
        "text": ev.text, "base": ev.base, "tokens": ev.tokens, "window": ev.window, "prompt": ev.prompt,
        "decode_tokens": ev.decode_tokens,
    })
    ppl = float(res["perplexity"])
    info: dict[str, Any] = {"perplexity": round(ppl, 4), "eval_tokens": res["eval_tokens"], "text": ev.text,
                            "decode_ms_p50": round(res["decode_ms_p50"], 3), "baseline_rss": res["baseline_rss"],
                            "eval_peak_rss": res["eval_peak_rss"]}
    if ctx.reference is None:
        quality = Quality("perplexity", round(ppl, 4), 1.0)
    else:
        ref_ppl = ctx.reference.quality.value if ctx.reference.quality else ppl
        quality = Quality("perplexity", round(ppl, 4), round(ref_ppl / ppl, 4))
        info["top1_agreement"] = round(float(res["top1_agreement"]), 4)
    m = Measurement(device="cpu", provider="CPUExecutionProvider",
                    latency_ms_p50=round(res["decode_ms_p50"], 3), latency_ms_p95=round(res["decode_ms_p95"], 3),
                    load_ms=round(res["load_ms"], 1), peak_rss_bytes=int(res["peak_rss"]),
                    energy_j=round(res["decode_cpu_s_per_token"] * ms.cpu_watts, 5), meter="model",
                    ttft_ms=round(res["ttft_ms"], 2), tokens_per_s=round(res["tokens_per_s"], 2))

    def specs(rows: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(r["name"], r["dtype"], tuple(r["shape"])) for r in rows)

    return MeasureResult(measurement=m, quality=quality, inputs=specs(res["inputs"]), outputs=specs(res["outputs"]),
                         info=info)


register_kind(KindPlugin(kind="causal-lm", parse_eval=parse_eval, measure=measure, eval_fingerprint=fingerprint))
