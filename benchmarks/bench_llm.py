"""LLM engine benchmarks on a built zoo model (default: smollm2).

    python benchmarks/bench_llm.py --zoo /tmp/llmzoo [--variants fp32 int8 int4] [--repeats 3] [--threads 2]
    python benchmarks/bench_llm.py --zoo /tmp/llmzoo --table      # the measured ladder as markdown

Measures, interleaving variants round-robin so machine noise hits them alike (medians, and ratios
against fp32 measured in the same run):

1. TTFT (chat prompt prefill) and decode tokens/s through ``LLMEngine.generate`` (EOS ignored);
2. the same decode loop written bare on ``onnxruntime`` (no engine: feeds, run, argmax) — the
   engine's overhead is the ratio engine / bare;
3. prefix cache: TTFT of a second question after a ~400-token system prompt, cold vs cached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.llm.engine import LLMEngine
from agent.zoo.manifest import load_manifest

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = ("You are a careful assistant for a hardware store. " +
          "Answer briefly, cite the aisle number, never invent prices, and ask before suggesting tools. " * 18)


def engine_for(m: Any, vid: str, threads: int, cache: int = 64 << 20) -> LLMEngine:
    path = m.path_of(m.variant(vid))
    cfg = {**m.llm, "eos_token_ids": []}
    return LLMEngine(path, path.parent / m.llm["tokenizer"], cfg, threads=threads, prefix_cache_bytes=cache)


def engine_run(e: LLMEngine, n: int) -> tuple[float, float]:
    e.prefix_cache.clear()
    evs = list(e.generate(QUESTION, {"max_tokens": n}))
    u = evs[-1].usage
    return u.ttft_ms, u.decode_tokens_per_s or 0.0


def bare_run(e: LLMEngine, n: int) -> float:
    """tokens/s of a minimal onnxruntime greedy loop on the same session."""
    sess, ids = e.session, e.encode(QUESTION)
    names = e.past_names
    feeds: dict[str, np.ndarray] = {"input_ids": np.asarray([ids], np.int64),
                                    "attention_mask": np.ones((1, len(ids)), np.int64),
                                    "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
    feeds.update({k: np.zeros((1, e.kv_heads, 0, e.head_dim), np.float32) for k in names})
    outs = ["logits"] + [k.replace("past_key_values", "present") for k in names]
    res = sess.run(outs, feeds)
    pos = len(ids)
    t = time.perf_counter()
    for _ in range(n):
        tok = int(res[0][0, -1].argmax())
        feeds = {"input_ids": np.asarray([[tok]], np.int64), "attention_mask": np.ones((1, pos + 1), np.int64),
                 "position_ids": np.asarray([[pos]], np.int64), **dict(zip(names, res[1:], strict=True))}
        res = sess.run(outs, feeds)
        pos += 1
    return n / (time.perf_counter() - t)


def prefix_cache_ttft(e: LLMEngine) -> tuple[float, float, int]:
    e.prefix_cache.clear()
    list(e.generate([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where are the nails?"}],
                    {"max_tokens": 1}))
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Do you sell hammers?"}]
    e.prefix_cache.clear()
    cold = list(e.generate(msgs, {"max_tokens": 1}))[-1].usage
    e.prefix_cache.clear()
    list(e.generate([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where are the nails?"}],
                    {"max_tokens": 1}))
    warm = list(e.generate(msgs, {"max_tokens": 1}))[-1].usage
    return cold.ttft_ms, warm.ttft_ms, warm.cached_tokens


def ladder_table(m: Any) -> str:
    rows = [("| variant | precision | method | size MB | perplexity | rel. quality | top-1 agree | TTFT ms | "
            "decode tok/s | peak RSS MB | build s |"), "|" + "---|" * 11]
    for v in m.variants:
        ms = v.measurements[0] if v.measurements else None
        ev = v.build.get("eval", {})
        rows.append("| {} | {} | {} | {:.0f} | {:.2f} | {:.3f} | {} | {:.0f} | {:.1f} | {:.0f} | {:.0f} |".format(
            v.id, v.precision, v.method, (v.size_bytes or 0) / 1e6, v.quality.value if v.quality else float("nan"),
            v.quality.relative if v.quality else float("nan"),
            f"{ev['top1_agreement']:.3f}" if "top1_agreement" in ev else "ref",
            ms.ttft_ms if ms and ms.ttft_ms else 0, ms.tokens_per_s if ms and ms.tokens_per_s else 0,
            (ms.peak_rss_bytes or 0) / 1e6 if ms else 0, v.build.get("build_s", 0)))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variants", nargs="*")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="print the measured ladder from the manifest and exit")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    m = load_manifest(a.zoo / a.model)
    if a.table:
        print(ladder_table(m))
        return 0
    vids = a.variants or m.variant_ids()
    engines = {v: engine_for(m, v, a.threads) for v in vids}
    res: dict[str, dict[str, list[float]]] = {v: {"ttft": [], "engine": [], "bare": []} for v in vids}
    for v in vids:  # warm-up
        engine_run(engines[v], 4)
    for _ in range(a.repeats):
        for v in vids:
            ttft, tps = engine_run(engines[v], a.tokens)
            res[v]["ttft"].append(ttft)
            res[v]["engine"].append(tps)
            res[v]["bare"].append(bare_run(engines[v], a.tokens))
    out: dict[str, Any] = {}
    base = statistics.median(res[vids[0]]["engine"])
    print(f"| variant | TTFT ms | engine tok/s | bare ORT loop tok/s | engine/bare | tok/s vs {vids[0]} |")
    print("|---|---|---|---|---|---|")
    for v in vids:
        t, e, b = (statistics.median(res[v][k]) for k in ("ttft", "engine", "bare"))
        out[v] = {"ttft_ms": t, "engine_tps": e, "bare_tps": b}
        print(f"| {v} | {t:.0f} | {e:.1f} | {b:.1f} | {e / b:.2f} | {e / base:.2f} |")
    cold, warm, cached = prefix_cache_ttft(engines[vids[0]])
    out["prefix_cache"] = {"variant": vids[0], "cold_ttft_ms": cold, "warm_ttft_ms": warm, "cached_tokens": cached}
    print(f"\nprefix cache ({vids[0]}): second question after a {cached}-token shared prefix: "
          f"TTFT {cold:.0f} ms cold -> {warm:.0f} ms cached ({cold / warm:.1f}x)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
