"""LLM serving cost: the daemon's streaming path against the same engine loop in process.

    .venv/bin/python benchmarks/bench_llm_serving.py                        # the tiny random llama
    .venv/bin/python benchmarks/bench_llm_serving.py --zoo ZOO --model smollm2 --variants fp32,int8

For each variant, in the same run:

1. **In process**: ``LLMEngine.generate`` (the loop the worker runs), ``--reps`` greedy generations of
   ``--tokens`` new tokens. Time to first token (TTFT) = call -> first token event; decode tokens/s =
   (tokens - 1) / (last token - first token).
2. **Through agentd**: the same prompts and engine settings (``--threads``) via ``Client.generate``
   over the Unix socket, the variant pinned; timed at the client as each streamed chunk arrives.
   Ratio = daemon median tokens/s / in-process median tokens/s (target >= 0.95).
3. **Prefix cache** (through agentd): a chat with a long system prompt; request 1 (cache miss) and
   request 2 (same system prompt, another question: the shared prefix's KV is reused). Speed-up =
   median TTFT 1 / median TTFT 2, over ``--reps`` distinct system prompts.

Both sides use the same prompts (each new, so neither hits the prefix cache) and run one after the
other in alternating blocks, never interleaved run by run (ONNX Runtime's idle threads spin after each
run; two processes doing that on a 2-core machine disturb each other far more than the IPC path costs).
Decode tokens/s is timed at the client from the first to the last token; end-to-end tokens/s = tokens /
(request -> last token).

An external zoo is never used in place: the chosen variants are hard-linked (or copied) into a private
temporary zoo with a manifest holding only them. Medians over ``--reps``; timings on a shared machine
are noisy, trust the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "serving"))

LONG_SYSTEM = ("You are a careful assistant for a field engineer. Answer briefly and precisely. "
               "Prefer metric units, say when you are unsure, and never invent part numbers. "
               "The engineer services pumps, valves, compressors and heat exchangers in remote sites "
               "with little connectivity, so answers must be self-contained and practical. ")


def private_zoo(src_zoo: Path, model: str, variants: list[str], dst_zoo: Path) -> Path:
    """A zoo holding only ``variants`` of ``src_zoo/model`` (files hard-linked when possible)."""
    from agent.zoo.manifest import load_manifest, save_manifest

    m = load_manifest(src_zoo / model)
    keep = tuple(m.variant(v) for v in variants)
    folder = dst_zoo / model
    for v in keep:
        src_dir = m.path_of(v).parent
        rel_dir = Path(v.file).parent
        for f in src_dir.iterdir():
            if f.is_file():
                dst = folder / rel_dir / f.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(f, dst)
                except OSError:
                    shutil.copy2(f, dst)
    save_manifest(replace(m, folder=folder, variants=keep, reference=variants[0]))
    return folder


def time_stream(events: Any, t0: float) -> dict[str, Any]:
    """TTFT, decode tokens/s and end-to-end tokens/s of an iterator of token events (the last one has a
    finish_reason and carries no token)."""
    stamps = []
    last = None
    for ev in events:
        last = ev
        if getattr(ev, "finish_reason", None) is None:
            stamps.append(time.perf_counter())
    t_end = time.perf_counter()
    n = len(stamps)
    return {"ttft_ms": (stamps[0] - t0) * 1e3 if stamps else None, "tokens": n,
            "tok_s": (n - 1) / (stamps[-1] - stamps[0]) if n > 1 and stamps[-1] > stamps[0] else None,
            "e2e_tok_s": n / (t_end - t0) if n else None, "last": last}


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def prompts(n: int) -> list[str]:
    # the varying word comes first, so no two prompts share a cacheable prefix
    words = ["Pumps", "Valves", "Rivers", "Clouds", "Engines", "Forests", "Bridges", "Planets", "Castles", "Oceans",
             "Deserts", "Islands", "Gardens", "Rockets", "Museums", "Glaciers"]
    return [f"{words[i % len(words)]} {'and ' * (i // len(words))}are interesting because" for i in range(n)]


def load_engine(folder: Path, variant: str, threads: int | None) -> Any:
    from agent.llm.engine import LLMEngine
    from agent.zoo.manifest import load_manifest

    m = load_manifest(folder)
    path = m.path_of(m.variant(variant))
    cfg = dict(m.llm or {})
    e = LLMEngine(path, path.parent / cfg["tokenizer"], cfg, threads=threads)
    for _ in e.generate("Hello", {"max_tokens": 2}):   # the worker warms up the same way
        pass
    return e


def inproc_child(spec: dict[str, Any]) -> None:
    """Child side of the in-process runs: a fresh interpreter, like the worker, running the engine loop
    directly; prints one JSON list of timing rows."""
    import threading

    e = load_engine(Path(spec["folder"]), spec["variant"], spec["threads"])
    rows = []

    def loop() -> None:
        for p in spec["prompts"]:
            t0 = time.perf_counter()
            r = time_stream(e.generate(p, {"max_tokens": spec["tokens"]}), t0)
            r.pop("last")
            rows.append(r)
    if os.environ.get("BENCH_MAIN_THREAD"):
        loop()
    else:   # as in the worker: the generation runs on a thread of its own
        t = threading.Thread(target=loop)
        t.start()
        t.join()
    print(json.dumps(rows))


def run_inproc(folder: Path, variant: str, threads: int | None, tokens: int, ps: list[str]) -> list[dict[str, Any]]:
    import subprocess

    spec = {"folder": str(folder), "variant": variant, "threads": threads, "tokens": tokens, "prompts": ps}
    r = subprocess.run([sys.executable, __file__, "--inproc-child", json.dumps(spec)], capture_output=True,
                       text=True, timeout=1800, check=False)
    if r.returncode != 0:
        raise SystemExit(f"in-process run failed: {r.stderr[-2000:]}")
    rows: list[dict[str, Any]] = json.loads(r.stdout.strip().splitlines()[-1])
    return rows


def bench_pair(folder: Path, threads: int | None, client: Any, model: str, variant: str, tokens: int, reps: int,
               rounds: int = 3) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same prompts in process and through the daemon, in alternating blocks (``rounds`` each) so
    both sides see the same machine load. The in-process side runs in a fresh interpreter too (as the
    worker does), so process start-up state is not what differs. Never interleaved run by run: ONNX
    Runtime's idle threads spin for a while after each run, and two processes spinning on a 2-core
    machine slow each other down far more than the IPC path does."""
    inproc: list[dict[str, Any]] = []
    daemon: list[dict[str, Any]] = []
    ps = prompts(reps)
    per = max(1, -(-reps // rounds))
    for k in range(0, reps, per):
        block = ps[k:k + per]
        inproc += run_inproc(folder, variant, threads, tokens, block)
        time.sleep(0.3)
        for p in block:
            t0 = time.perf_counter()
            r = time_stream(client.generate(model, p, max_tokens=tokens), t0)
            assert r["last"].variant == variant, r["last"]
            r["server_tok_s"] = (r["last"].usage or {}).get("decode_tokens_per_s")
            daemon.append(r)
        time.sleep(0.3)
    return inproc, daemon


def bench_prefix(client: Any, model: str, reps: int, system_chars: int) -> dict[str, Any]:
    first, second, cached = [], [], []
    for i in range(reps):
        system = f"Session {i}. " + (LONG_SYSTEM * (system_chars // len(LONG_SYSTEM) + 1))[:system_chars]
        for j, (q, out) in enumerate((("How do I bleed air from a pump?", first),
                                      ("What torque for an M8 bolt?", second))):
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": q}]
            t0 = time.perf_counter()
            chunks = []
            for ch in client.generate(model, messages=msgs, max_tokens=4):
                chunks.append(ch)
                if len(chunks) == 1:
                    out.append((time.perf_counter() - t0) * 1e3)
            if j == 1:
                cached.append((chunks[-1].usage or {}).get("cached_tokens", 0))
        prompt_tokens = (chunks[-1].usage or {}).get("prompt_tokens")
    t1, t2 = statistics.median(first), statistics.median(second)
    return {"ttft_first_ms": t1, "ttft_second_ms": t2, "speedup": t1 / t2 if t2 else None,
            "cached_tokens_median": statistics.median(cached), "prompt_tokens": prompt_tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, help="a zoo with a causal-lm model (default: build the tiny llama)")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--variants", default="fp32,int8")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (both sides)")
    ap.add_argument("--system-chars", type=int, default=0,
                    help="length of the long system prompt (default: 150 for the tiny model's 256-token "
                         "byte-level context, 1200 otherwise)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--inproc-child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.inproc_child:
        inproc_child(json.loads(a.inproc_child))
        return 0
    variants = [v for v in a.variants.split(",") if v]
    tmp = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    from tests.conftest import start_daemon  # the test suite's way of starting a real agentd

    try:
        zoo = tmp / "zoo"
        if a.zoo is None:
            from tinyzoo import make_tiny_llm_zoo

            make_tiny_llm_zoo(zoo, a.model, tuple(variants))
            source = "tiny random llama (3 layers, d=64, vocab 265), built here"
        else:
            private_zoo(a.zoo, a.model, variants, zoo)
            source = f"{a.zoo}/{a.model}"
        rep = a.system_chars or (150 if a.zoo is None else 1200)
        results: dict[str, Any] = {"source": source, "tokens": a.tokens, "reps": a.reps, "threads": a.threads,
                                   "cpus": os.cpu_count(), "variants": {}}
        d = start_daemon(zoo, tmp, "--threads", str(a.threads), "--spare-workers", "0")
        try:
            with d.client(timeout=600) as c:
                for v in variants:
                    c.pin(a.model, v)
                    for _ in c.generate(a.model, "Hello", max_tokens=2):   # first request on the new worker
                        pass
                    irows, drows = bench_pair(zoo / a.model, a.threads, c, a.model, v, a.tokens, a.reps)
                    r: dict[str, Any] = {"in_process": {k: med(irows, k) for k in ("ttft_ms", "tok_s", "e2e_tok_s")},
                                         "daemon": {k: med(drows, k) for k in ("ttft_ms", "tok_s", "e2e_tok_s",
                                                                               "server_tok_s")}}
                    for k in ("tok_s", "e2e_tok_s"):
                        ip, dm = r["in_process"][k], r["daemon"][k]
                        r[f"ratio_{k}"] = dm / ip if dm and ip else None
                    results["variants"][v] = r
                c.pin(a.model, variants[0])
                results["prefix_cache"] = {"variant": variants[0], **bench_prefix(c, a.model, a.reps, rep)}
                results["llm_stats"] = c.status()["models"][a.model]["llm"]["prefix_cache"]
        finally:
            d.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"model: {results['source']}; {a.tokens} tokens x {a.reps} reps, {a.threads} threads, "
          f"{results['cpus']} CPUs (medians)")
    print(f"{'variant':<9}{'TTFT in-proc':>13}{'daemon':>10}{'decode tok/s in-proc':>22}{'daemon':>9}{'ratio':>7}"
          f"{'end-to-end tok/s in-proc':>26}{'daemon':>9}{'ratio':>7}")
    for v, r in results["variants"].items():
        ip, dm = r["in_process"], r["daemon"]
        print(f"{v:<9}{ip['ttft_ms']:>10.1f} ms{dm['ttft_ms']:>7.1f} ms{ip['tok_s']:>22.1f}{dm['tok_s']:>9.1f}"
              f"{r['ratio_tok_s']:>7.3f}{ip['e2e_tok_s']:>26.1f}{dm['e2e_tok_s']:>9.1f}{r['ratio_e2e_tok_s']:>7.3f}")
    pc = results["prefix_cache"]
    print(f"prefix cache ({pc['variant']}, {pc['prompt_tokens']}-token chat, {pc['cached_tokens_median']} reused): "
          f"TTFT first {pc['ttft_first_ms']:.1f} ms, second {pc['ttft_second_ms']:.1f} ms, "
          f"speed-up {pc['speedup']:.2f}x")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
