"""The cost of recomputing a prompt's tail on a prefix-cache hit (``PrefixCache.min_compute``).

    python benchmarks/bench_prefix_repeat.py --zoo ZOO [--model smollm2] [--variant int4] [--rounds 9]

A repeated prompt is served from the cache with its last ``min_compute`` tokens run again: 4 keeps the
greedy text identical to a cold prefill on int4 graphs (ONNX Runtime's MatMulNBits takes another path for
one to three rows), 1 was the old setting. Each round measures, interleaved: the hit's time to first token
with 1 and with 4, then a cold prompt. Prints medians and the median of the same-round ratios 4 / 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.llm.engine import LLMEngine
from agent.zoo.manifest import load_manifest

PROMPT = [{"role": "user", "content": "Explain in one sentence what a hash table is and why lookups are fast."}]


def first_token_ms(e: LLMEngine) -> float:
    t = time.perf_counter()
    for _ in e.generate(PROMPT, {"max_tokens": 1}):
        pass
    return (time.perf_counter() - t) * 1e3


def hit_ms(e: LLMEngine, min_compute: int) -> float:
    e.prefix_cache.min_compute = min_compute
    e.prefix_cache.clear()
    first_token_ms(e)              # cold: the prompt's KV goes into the cache
    return first_token_ms(e)       # the same prompt again: a hit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variant", default="int4")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    m = load_manifest(a.zoo / a.model, check_files=False)
    path = m.folder / m.variant(a.variant).file
    e = LLMEngine(path, path.parent / m.llm["tokenizer"], dict(m.llm), threads=a.threads,
                  prefix_cache_bytes=256 << 20)
    try:
        one, four, cold = [], [], []
        for _ in range(a.rounds):
            one.append(hit_ms(e, 1))
            four.append(hit_ms(e, 4))
            e.prefix_cache.clear()
            cold.append(first_token_ms(e))
        ratio = statistics.median(b / x for x, b in zip(one, four, strict=True))
        print(f"{a.model}/{a.variant}, {len(e.encode(PROMPT))}-token prompt, {a.rounds} rounds: hit TTFT median "
              f"min_compute=1 {statistics.median(one):.1f} ms, min_compute=4 {statistics.median(four):.1f} ms "
              f"(x{ratio:.2f} same-round); cold {statistics.median(cold):.1f} ms")
    finally:
        e.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
