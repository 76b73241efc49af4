"""One cost point of one variant, in its own process: ``python -m agent.zoo.build.cost_worker``.

Reads a JSON request on stdin and prints one JSON line. Before loading anything it joins the CPU limit it
was given (``join``: a cgroup's ``cgroup.procs`` to write its own pid to, or ``affinity``: CPUs to pin to),
so the whole measurement runs under the quota. Then it times ``requests`` requests back to back:

* ``kind = "tensor"``: one request = one ``session.run`` on the recipe's held-out feeds;
* ``kind = "causal-lm"``: one request = one greedy ``LLMEngine.generate`` of up to ``tokens`` new tokens on
  a chat prompt, on the path agentd's worker serves: its session options, the KV buffers shared in place
  and, when the manifest serves the variant with a draft (``draft``), speculative decoding with that draft.
  The figures are per token (first to last token / tokens after the first), the first token as ``ttft_ms``.

CPU time is this process's (``time.process_time``: every ORT thread included) per request / token.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any


def _join(req: dict[str, Any]) -> None:
    if req.get("join"):
        with open(req["join"], "w") as f:
            f.write(f"{os.getpid()}\n")
    if req.get("affinity"):
        os.sched_setaffinity(0, set(req["affinity"]))


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _tensor(req: dict[str, Any]) -> dict[str, Any]:
    from agent.zoo.build import evaldata
    from agent.zoo.build.measure_worker import _session, _sig
    from agent.zoo.recipe import load_eval

    ev = load_eval(req["recipe"], "tensor")
    sess = _session(req["model"], req.get("threads"))
    ins = _sig(sess.get_inputs())
    inputs = [(s["name"], s["dtype"], s["shape"]) for s in ins]
    out_names = [o.name for o in sess.get_outputs()]
    _, held = evaldata.streams(ev, inputs)
    feeds: list[dict[str, Any]] = []
    for s in held:
        f, _ = evaldata.run_stream(sess, ev, s, inputs, out_names)
        feeds.extend(f)
    for i in range(min(len(feeds), max(1, req.get("warmup", 5)))):
        sess.run(out_names, feeds[i])
    lat: list[float] = []
    cpu0 = time.process_time()
    t_end = time.perf_counter() + float(req.get("min_s", 1.0))
    i = 0
    while i < req["requests"] or time.perf_counter() < t_end:
        t = time.perf_counter()
        sess.run(out_names, feeds[i % len(feeds)])
        lat.append((time.perf_counter() - t) * 1000)
        i += 1
    cpu_ms = (time.process_time() - cpu0) * 1000 / len(lat)
    return {"p50": statistics.median(lat), "p95": _pct(lat, 0.95), "mean": statistics.fmean(lat),
            "cpu_ms": cpu_ms, "n": len(lat)}


PROMPT = "Tell me a long story about a lighthouse keeper and the sea."   # long greedy answers, no early EOS


def _llm(req: dict[str, Any]) -> dict[str, Any]:
    from agent.llm.engine import LLMEngine
    from agent.llm.speculative import SESSION_CONFIG, set_draft_from
    from agent.runtime.backends.llm import LLM_SESSION_CONFIG

    draft = req.get("draft")
    config = SESSION_CONFIG if draft else LLM_SESSION_CONFIG   # as the worker opens them (backends.llm)
    threads = req.get("threads")

    def engine(path: str) -> Any:
        return LLMEngine(path, req["tokenizer"], req["llm"], threads=threads, prefix_cache_bytes=0,
                         session_options=config)

    eng = engine(req["model"])
    if draft:
        set_draft_from(eng, engine(draft["path"]), draft)
    msgs = [{"role": "user", "content": req.get("prompt", PROMPT)}]
    n_tok = int(req.get("tokens", 16))

    def one() -> tuple[float, float]:
        t0 = time.perf_counter()
        stamps = [time.perf_counter() for ev in eng.generate(msgs, {"max_tokens": n_tok}) if ev.token_id is not None]
        ttft = (stamps[0] - t0) * 1000
        per_tok = (stamps[-1] - stamps[0]) * 1000 / (len(stamps) - 1) if len(stamps) > 1 else ttft
        return ttft, per_tok

    one()   # warm-up
    ttfts, per_tok = [], []
    cpu0 = time.process_time()
    for _ in range(int(req["requests"])):
        a, b = one()
        ttfts.append(a)
        per_tok.append(b)
    cpu_ms = (time.process_time() - cpu0) * 1000 / (len(per_tok) * n_tok)   # prefill CPU spread over tokens
    spec = eng.stats()["speculative"]
    eng.close()
    out = {"p50": statistics.median(per_tok), "p95": _pct(per_tok, 0.95), "mean": statistics.fmean(per_tok),
           "ttft_ms": statistics.median(ttfts), "cpu_ms": cpu_ms, "n": len(per_tok)}
    if spec is not None:
        out["acceptance"] = spec["acceptance"]
    return out


def main() -> int:
    req = json.loads(sys.stdin.read())
    try:
        _join(req)
        res = _llm(req) if req["kind"] == "causal-lm" else _tensor(req)
    except Exception as e:  # noqa: BLE001 - any failure becomes one JSON error line
        res = {"error": f"{type(e).__name__}: " + " ".join(str(e).split())[:400]}
    sys.stdout.write(json.dumps(res) + "\n")
    return 0 if "error" not in res else 2


if __name__ == "__main__":
    raise SystemExit(main())
