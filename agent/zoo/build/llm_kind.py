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
    prompts = "builtin"          # chat prompt set for greedy agreement (builtin = agent/llm/data), or a file
    questions = "builtin"        # short-answer question set for exact match, or a file
    agreement_tokens = 32        # greedy tokens compared per prompt
    answer_tokens = 24           # greedy tokens of each reply to a question

Quality (agent.llm.quality): metric ``answers``; ``relative`` = ``value`` =
``(agreement + min(1, exact_match / exact_match_ref)) / 2``; the quality table also keeps
``perplexity``, ``perplexity_rel`` (reference perplexity / variant perplexity), ``agreement``,
``mean_prefix``, ``exact_match`` and ``exact_match_rel``. Top-1 agreement on the perplexity text goes
to ``[variants.build.eval]``. Floors (``[variants.floors]``) may bound any of those figures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.errors import BuildError, ConfigError
from agent.tomlfile import Checker
from agent.zoo.build.registry import KindPlugin, MeasureContext, MeasureResult, register_kind
from agent.zoo.manifest import Measurement, Quality, TensorSpec, Variant

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
    prompts: str = "builtin"
    questions: str = "builtin"
    agreement_tokens: int = 32
    answer_tokens: int = 24
    base: str = ""

    def data_path(self, which: str) -> Path:
        """The prompt or question file (``builtin`` = the shipped one; relative = to the recipe)."""
        from agent.llm import quality as Q

        name = getattr(self, which)
        if name == "builtin":
            return Q.data_file(Q.PROMPTS if which == "prompts" else Q.QUESTIONS)
        p = Path(name).expanduser()
        return p if p.is_absolute() or not self.base else Path(self.base) / p


FLOORS = ("quality_rel", "perplexity_rel", "agreement", "mean_prefix", "exact_match", "exact_match_rel")


def parse_eval(c: Checker, base: Path) -> LLMEval:
    c.only({"text", "tokens", "window", "calibration", "calibration_tokens", "prompt", "decode_tokens", "prompts",
            "questions", "agreement_tokens", "answer_tokens"})
    d = LLMEval()
    ev = LLMEval(
        text=c.str("text", required=False) or d.text,
        tokens=c.num("tokens", required=False, lo=16, hi=1_000_000, integer=True) or d.tokens,
        window=c.num("window", required=False, lo=8, hi=8192, integer=True) or d.window,
        calibration=c.str("calibration", required=False) or d.calibration,
        calibration_tokens=c.num("calibration_tokens", required=False, lo=256, hi=10_000_000, integer=True)
        or d.calibration_tokens,
        prompt=c.str("prompt", required=False) or d.prompt,
        decode_tokens=c.num("decode_tokens", required=False, lo=4, hi=4096, integer=True) or d.decode_tokens,
        prompts=c.str("prompts", required=False) or d.prompts,
        questions=c.str("questions", required=False) or d.questions,
        agreement_tokens=c.num("agreement_tokens", required=False, lo=1, hi=1024, integer=True) or d.agreement_tokens,
        answer_tokens=c.num("answer_tokens", required=False, lo=1, hi=1024, integer=True) or d.answer_tokens,
        base=str(base),
    )
    from agent.llm import quality as Q

    for key, load in (("prompts", Q.load_prompts), ("questions", Q.load_questions)):
        try:
            load(ev.data_path(key))   # a malformed data file fails the recipe, before any build
        except ConfigError as e:
            raise c.error(key, str(e)) from None
    return ev


def fingerprint(ev: LLMEval) -> str:
    from agent.llm.evaldata import fingerprint as fp
    from agent.llm.evaldata import load_text

    base = Path(ev.base) if ev.base else None
    from agent.llm.quality import SCORING_VERSION

    d = {k: v for k, v in asdict(ev).items() if k != "base"}
    d["scoring"] = SCORING_VERSION
    data = [ev.data_path(k).read_text(encoding="utf-8") for k in ("prompts", "questions")]
    return fp(json.dumps(d, sort_keys=True), load_text(ev.text, base), load_text(ev.calibration, base), *data)


def run_evaluate(req: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
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


def _reference_perplexity(ref: Variant | None, default: float) -> float:
    q = ref.quality if ref is not None else None
    if q is None:
        return default
    if q.perplexity is not None:
        return q.perplexity
    return q.value if q.metric == "perplexity" else default


def answer_quality(res: dict[str, Any], ppl: float, ref_ppl: float) -> Quality:
    """The manifest's quality table from a measurement (see agent.llm.quality for the formula)."""
    from agent.llm import quality as Q

    agree, em, em_ref = float(res["agreement"]), float(res["exact_match"]), float(res["exact_match_ref"])
    rel = round(Q.quality_rel(agree, em, em_ref), 4)
    return Quality("answers", rel, rel, perplexity=round(ppl, 4), perplexity_rel=round(ref_ppl / ppl, 4),
                   agreement=round(agree, 4), mean_prefix=round(float(res["mean_prefix"]), 3),
                   exact_match=round(em, 4), exact_match_rel=round(Q.em_rel(em, em_ref), 4))


def measure(ctx: MeasureContext) -> MeasureResult:
    ev: LLMEval = ctx.recipe.eval
    ms = ctx.recipe.measure
    llm = read_sidecar(ctx.model_path)
    ctx.log(f"measuring {ctx.variant_id}: perplexity on {ev.tokens} tokens of {ev.text}, greedy agreement and "
            f"exact match on the prompt/question sets, TTFT, decode tokens/s")
    res = run_evaluate({
        "model": str(ctx.model_path), "tokenizer": str(ctx.model_path.parent / llm["tokenizer"]), "llm": llm,
        "reference": str(ctx.reference_path) if ctx.reference_path else None, "threads": ms.threads,
        "text": ev.text, "base": ev.base, "tokens": ev.tokens, "window": ev.window, "prompt": ev.prompt,
        "decode_tokens": ev.decode_tokens, "prompts": str(ev.data_path("prompts")),
        "questions": str(ev.data_path("questions")), "agreement_tokens": ev.agreement_tokens,
        "answer_tokens": ev.answer_tokens,
    })
    ppl = float(res["perplexity"])
    info: dict[str, Any] = {"perplexity": round(ppl, 4), "eval_tokens": res["eval_tokens"], "text": ev.text,
                            "decode_ms_p50": round(res["decode_ms_p50"], 3), "baseline_rss": res["baseline_rss"],
                            "eval_peak_rss": res["eval_peak_rss"]}
    if ctx.reference is not None:
        info["top1_agreement"] = round(float(res["top1_agreement"]), 4)
        info["reference_outputs_cached"] = bool(res.get("reference_outputs_cached"))
    info["own_outputs_cached"] = bool(res.get("own_outputs_cached"))
    info["answers_s"] = round(float(res.get("answers_s", 0.0)), 1)          # the variant's own greedy runs
    info["answers_cpu_s"] = round(float(res.get("answers_cpu_s", 0.0)), 1)
    quality = answer_quality(res, ppl, _reference_perplexity(ctx.reference, ppl))
    m = Measurement(device="cpu", provider="CPUExecutionProvider",
                    latency_ms_p50=round(res["decode_ms_p50"], 3), latency_ms_p95=round(res["decode_ms_p95"], 3),
                    load_ms=round(res["load_ms"], 1), peak_rss_bytes=int(res["peak_rss"]),
                    energy_j=round(res["decode_cpu_s_per_token"] * ms.cpu_watts, 5), meter="model",
                    ttft_ms=round(res["ttft_ms"], 2), tokens_per_s=round(res["tokens_per_s"], 2))

    def specs(rows: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(r["name"], r["dtype"], tuple(r["shape"])) for r in rows)

    return MeasureResult(measurement=m, quality=quality, inputs=specs(res["inputs"]), outputs=specs(res["outputs"]),
                         info=info)


register_kind(KindPlugin(kind="causal-lm", parse_eval=parse_eval, measure=measure, eval_fingerprint=fingerprint,
                         floors=FLOORS))
