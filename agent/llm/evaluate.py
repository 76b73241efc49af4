"""Measure a decoder variant: perplexity and top-1 agreement on held-out text, TTFT, decode speed.

``python -m agent.llm.evaluate`` reads one JSON request on stdin and prints one JSON line, so the zoo
measures every variant in a fresh process (honest peak RSS)::

    {"model": ..., "tokenizer": ..., "llm": {...}, "reference": null | path, "threads": 2,
     "text": "pydoc-topics", "base": dir, "tokens": 2048, "window": 512,
     "prompt": "What is the capital of France?", "decode_tokens": 64,
     "prompts": path | null, "questions": path | null, "agreement_tokens": 32, "answer_tokens": 24}

With ``prompts`` and ``questions`` it also measures answer quality (agent.llm.quality): the greedy
outputs of a model go to ``MODEL.onnx.answers.json`` next to its file, keyed by what they depend on
(data files, lengths, model size, threads, onnxruntime version), and are reused while the key holds:
the reference's by every other variant, a variant's own when it is re-measured (scoring only).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import AgentError


def eval_windows(engine: Any, text: str, tokens: int, window: int) -> list[list[int]]:
    ids = engine.tokenizer.encode(text, add_special_tokens=False).ids[: tokens]
    if len(ids) < 2 * window and len(ids) < tokens:
        window = max(2, len(ids) // 2)
    return [ids[i:i + window] for i in range(0, len(ids) - 1, window) if len(ids[i:i + window]) > 1]


def window_logits(engine: Any, windows: list[list[int]]) -> list[np.ndarray]:
    """Logits for every window position; a model that expects BOS (``add_bos``, e.g. Gemma) sees it
    first, as it does when serving (its row is dropped)."""
    bos = [engine.bos_id] if engine.add_bos and engine.bos_id >= 0 else []
    return [engine.forward(bos + w, 0, engine.empty_kv())[0][len(bos):] for w in windows]


def nll_and_argmax(engine: Any, windows: list[list[int]]) -> tuple[float, int, list[np.ndarray]]:
    """Sum of next-token negative log-likelihoods, token count, and argmax per window."""
    total, count, tops = 0.0, 0, []
    for w, logits in zip(windows, window_logits(engine, windows), strict=True):
        x = logits[:-1].astype(np.float64)
        m = x.max(-1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(x - m).sum(-1)))
        tgt = np.asarray(w[1:])
        total += float((lse - x[np.arange(len(tgt)), tgt]).sum())
        count += len(tgt)
        tops.append(logits[:-1].argmax(-1))
    return total, count, tops


def timing(engine: Any, prompt: str, decode_tokens: int, repeats: int = 3) -> dict[str, float]:
    """Median TTFT (prefill of the chat prompt) and per-token decode latency (greedy, EOS ignored)."""
    ids = engine.encode([{"role": "user", "content": prompt}])
    dec = engine.decoder   # the serving loop's runner (shared KV buffers on builder graphs)
    ttfts, steps = [], []
    for _ in range(repeats):
        st = dec.new_state(len(ids) + decode_tokens)
        t = time.perf_counter()
        logits = dec.run(st, ids)
        ttfts.append((time.perf_counter() - t) * 1000)
    tok = int(np.argmax(logits[-1]))
    cpu0 = time.process_time()
    for _ in range(decode_tokens):
        t = time.perf_counter()
        logits = dec.run(st, [tok])
        steps.append((time.perf_counter() - t) * 1000)
        tok = int(np.argmax(logits[-1]))
    dec.release(st)
    cpu_per_token = (time.process_time() - cpu0) / max(1, decode_tokens)
    steps = steps[2:] if len(steps) > 4 else steps
    p50 = statistics.median(steps)
    return {"ttft_ms": statistics.median(ttfts), "decode_ms_p50": p50,
            "decode_ms_p95": float(np.percentile(steps, 95)), "tokens_per_s": 1000.0 / p50,
            "decode_cpu_s_per_token": cpu_per_token}


OUTPUTS = ".answers.json"      # suffix: MODEL.onnx.answers.json next to the model file


def outputs_path(model: str | Path) -> Path:
    return Path(model).with_name(Path(model).name + OUTPUTS)


def greedy(engine: Any, messages: Any, n: int) -> tuple[list[int], bool, str]:
    """(tokens, stopped at end of turn, text) of a greedy chat generation of at most ``n`` tokens."""
    toks: list[int] = []
    text: list[str] = []
    stopped = False
    for ev in engine.generate([dict(m) for m in messages], {"max_tokens": n, "temperature": 0.0}):
        if ev.token_id is not None:
            toks.append(int(ev.token_id))
        text.append(ev.text)
        if ev.finish_reason is not None:
            stopped = ev.finish_reason == "stop"
    return toks, stopped, "".join(text)


def answer_outputs(engine: Any, req: dict[str, Any]) -> dict[str, Any]:
    """The greedy token sequences over the prompt set and the replies to the question set."""
    from agent.llm import quality as Q

    n_agree, n_answer = int(req["agreement_tokens"]), int(req["answer_tokens"])
    seqs = []
    for p in Q.load_prompts(Path(req["prompts"])):
        toks, stopped, _ = greedy(engine, p.messages, n_agree)
        seqs.append(Q.padded(toks, stopped, n_agree))
    replies = [greedy(engine, [{"role": "user", "content": q.question}], n_answer)[2]
               for q in Q.load_questions(Path(req["questions"]))]
    return {"sequences": seqs, "replies": replies}


def _outputs_key(req: dict[str, Any], model: str) -> dict[str, Any]:
    """What the greedy outputs depend on: the data and lengths, the model file, threads, onnxruntime."""
    import onnxruntime

    from agent.llm import quality as Q

    return {"data": Q.data_fingerprint(Path(req["prompts"]), Path(req["questions"]), int(req["agreement_tokens"]),
                                       int(req["answer_tokens"])),
            "model_bytes": Path(model).stat().st_size, "threads": req.get("threads"),
            "onnxruntime": onnxruntime.__version__}


def cached_outputs(req: dict[str, Any], model: str) -> dict[str, Any] | None:
    p = outputs_path(model)
    try:
        d: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if d.get("key") == _outputs_key(req, model) else None


def store_outputs(req: dict[str, Any], model: str, outs: dict[str, Any]) -> None:
    """Best effort: a read-only zoo only loses the cache."""
    p = outputs_path(model)
    try:
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": _outputs_key(req, model), **outs}), encoding="utf-8")
        tmp.replace(p)
    except OSError:
        pass


def answer_figures(mine: dict[str, Any], ref: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
    from agent.llm import quality as Q

    questions = Q.load_questions(Path(req["questions"]))
    agree, prefix = Q.agreement(ref["sequences"], mine["sequences"], int(req["agreement_tokens"]))
    em, em_ref = Q.exact_match(mine["replies"], questions), Q.exact_match(ref["replies"], questions)
    return {"agreement": agree, "mean_prefix": prefix, "exact_match": em, "exact_match_ref": em_ref,
            "prompts": len(mine["sequences"]), "questions": len(questions)}


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it does not inherit the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(req: dict[str, Any]) -> dict[str, Any]:
    from agent.llm.engine import LLMEngine
    from agent.llm.evaldata import load_text
    from agent.zoo.manifest import ORT_TYPES

    base_rss = peak_rss_bytes()
    cpu0 = time.process_time()
    t = time.perf_counter()
    eng = LLMEngine(req["model"], req["tokenizer"], req["llm"], threads=req.get("threads"), prefix_cache_bytes=0)
    load_ms = (time.perf_counter() - t) * 1000
    tm = timing(eng, req.get("prompt", "What is the capital of France?"), int(req.get("decode_tokens", 64)))
    serve_peak = peak_rss_bytes()  # loading + generating; the evaluation below holds big logit arrays
    text = load_text(req.get("text", "pydoc-topics"), Path(req["base"]) if req.get("base") else None)
    windows = eval_windows(eng, text, int(req.get("tokens", 2048)), int(req.get("window", 512)))
    nll, count, tops = nll_and_argmax(eng, windows)
    eval_peak = peak_rss_bytes()
    cpu_s = time.process_time() - cpu0

    def spec(args: list[Any]) -> list[dict[str, Any]]:
        return [{"name": a.name, "dtype": ORT_TYPES.get(a.type, "float32"),
                 "shape": [d if isinstance(d, int) else str(d) for d in a.shape]} for a in args]

    out: dict[str, Any] = {
        "load_ms": load_ms, **tm, "perplexity": float(np.exp(nll / count)), "eval_tokens": count,
        "peak_rss": int(serve_peak), "eval_peak_rss": int(eval_peak), "baseline_rss": int(base_rss), "cpu_s": cpu_s,
        "inputs": spec(eng.session.get_inputs()), "outputs": spec(eng.session.get_outputs()),
    }
    answers = bool(req.get("prompts") and req.get("questions"))
    mine = None
    if answers:
        t, c0 = time.perf_counter(), time.process_time()
        mine = cached_outputs(req, req["model"])     # greedy outputs are deterministic for a key
        out["own_outputs_cached"] = mine is not None
        if mine is None:
            mine = answer_outputs(eng, req)
            store_outputs(req, req["model"], mine)
        out["answers_s"], out["answers_cpu_s"] = time.perf_counter() - t, time.process_time() - c0
    eng.close()
    ref_outs = mine
    if req.get("reference"):
        ref = LLMEngine(req["reference"], req["tokenizer"], req["llm"], threads=req.get("threads"),
                        prefix_cache_bytes=0)
        _, _, ref_tops = nll_and_argmax(ref, windows)
        agree = sum(int((a == b).sum()) for a, b in zip(tops, ref_tops, strict=True))
        out["top1_agreement"] = agree / count
        if answers:
            ref_outs = cached_outputs(req, req["reference"])
            out["reference_outputs_cached"] = ref_outs is not None
            if ref_outs is None:
                ref_outs = answer_outputs(ref, req)
                store_outputs(req, req["reference"], ref_outs)
        ref.close()
    if mine is not None and ref_outs is not None:
        out.update(answer_figures(mine, ref_outs, req))
    return out


def main() -> int:
    try:
        req = json.loads(sys.stdin.read())
        res = run(req)
    except AgentError as e:
        print(json.dumps({"error": e.message}))
        return 1
    except Exception as e:  # noqa: BLE001 - report any failure as one JSON line
        print(json.dumps({"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}))
        return 1
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
