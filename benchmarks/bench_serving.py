"""Serving throughput, measured in one run with each baseline alongside (docs/SERVING.md).

    flock /work/bench.lock .venv/bin/python benchmarks/bench_serving.py [--rounds 5] [--json OUT]

Sections (``--sections ipc,cache,batching``), each interleaving its contenders in rounds (A B A B …)
so drift hits all alike; figures are medians over rounds of per-round medians / percentiles:

* **ipc** — a 1 KB (1x256) and a 1 MB (1024x256) float32 input of the test MLP (256->512->64), in
  process (``InferenceSession.run``, default options) against a blocking client through agentd: the
  default client (its requests go over a lane, straight to the worker: ``agent.ipc.lane``) and a client
  with ``lanes=False`` (client -> daemon -> worker frames). ``added`` and ``ratio`` are the lane's. After
  every block the bench waits until its own process is idle (``settle``): the in-process session's threads
  spin on after its last run and would otherwise tax the next contender's worker.
* **cache** — the same 1 KB request answered from the response cache (the worker's, on the lane),
  against a ``ping`` on the same lane (the bare round trip to that worker, no work); also the daemon's
  ``ping`` and the framed path's cache hit (the daemon's cache) for reference.
* **batching** — a wider MLP (768->3072->768, a BERT-base FFN block: weight-read bound like LLM decode)
  under 32 concurrent blocking clients, unbatched (default clients: lanes; and framed) against
  ``max_batch = 32, max_queue_delay_ms = 2``. The speedup is batched over the faster unbatched path of the
  same round. The clients run in load-generator processes (``--client-procs``, default 8 processes of 4
  threads; a comma list measures several layouts, the first gives the summary): one process of 32 threads
  was bound by its own GIL (docs/SERVING.md has the layouts side by side).

* **llm** (needs ``--llm DIR``: an int4 builder variant folder, e.g. a SmolLM2 zoo's ``int4``) — continuous
  batching, one greedy stream against 8 concurrent greedy streams (8 plain-completion prompts), first in
  process (the plain engine alone, then the engine with ``max_batch = 8``), then through agentd
  (``[serving] max_batch = 8``, 8 clients). One stream's decode tok/s = (tokens - 1) / (last token - first
  token); the batch's aggregate decode tok/s = tokens that arrived (all streams) while all 8 were decoding /
  that window. ``llm_batching_speedup`` = median of agentd's same-round ratios
  (``llm_batching_speedup_in_process``: the engine's). Every stream's text is compared with its prompt's
  greedy text from the plain engine; every prompt is used once (no prefix-cache hits).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIENTS = 32
MAX_BATCH = 32
DELAY_MS = 2.0
LLM_STREAMS = 8
LLM_PROMPTS = ["The history of the Roman Empire begins", "In a small village by the sea, there lived",
               "The main parts of a computer are", "Photosynthesis is the process by which",
               "Once upon a time, a young fox", "The best way to learn a new language is",
               "Water boils at a temperature of", "The three laws of motion state that"]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def med(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs)))


def build_zoo(zoo: Path) -> None:
    from agent.testing import make_tensor_zoo, set_serving

    for name in ("mlp", "mlp_cached"):
        make_tensor_zoo(zoo, name)
    set_serving(zoo / "mlp_cached", cache_bytes=16 << 20)
    for name in ("wide", "wide_batched"):
        make_tensor_zoo(zoo, name, in_features=768, hidden=3072, out_features=768)
    set_serving(zoo / "wide_batched", max_batch=MAX_BATCH, max_queue_delay_ms=DELAY_MS)


def timed(fn: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def settle(max_s: float = 0.3) -> None:
    """Wait until this process is idle: ONNX Runtime's intra-op threads (default options: they spin) keep
    spinning ~40 ms of CPU after the last ``run`` of a block, which took a core from the next contender's
    worker (the lane's 1 MB run 1637 -> 2430 µs when it followed an in-process block)."""
    end = time.monotonic() + max_s
    c = time.process_time()
    while time.monotonic() < end:
        time.sleep(0.01)
        c, prev = time.process_time(), c
        if c - prev < 0.5e-3:
            return


def bench_ipc(c: Any, framed: Any, zoo: Path, rounds: int, n: int) -> dict[str, Any]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(zoo / "mlp/fp32.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    for label, shape, k in (("1KB", (1, 256), n), ("1MB", (1024, 256), max(20, n // 20))):
        x = rng.standard_normal(shape).astype(np.float32)
        for _ in range(30):
            sess.run(None, {"x": x})
            framed.infer("mlp", {"x": x})
            got = c.infer("mlp", {"x": x})   # its first requests go framed (client.LANE_AFTER), then a lane
        assert got.extra.get("lane"), "the default client got no lane"
        t: dict[str, list[float]] = {k_: [] for k_ in ("inproc", "lane", "framed", "inproc99", "lane99", "framed99")}
        for _ in range(rounds):   # A B C, A B C, ...
            for name, fn in (("inproc", lambda x=x: sess.run(None, {"x": x})),
                             ("lane", lambda x=x: c.infer("mlp", {"x": x})),
                             ("framed", lambda x=x: framed.infer("mlp", {"x": x}))):
                xs = timed(fn, k)
                settle()   # after every block alike: nothing of one contender runs into the next one's
                t[name].append(med(xs))
                t[name + "99"].append(pct(xs, 99))
        r: dict[str, Any] = {"input_bytes": x.nbytes, "n_per_round": k}
        for name in ("inproc", "lane", "framed"):
            r[f"{name}_p50_us"], r[f"{name}_p99_us"] = med(t[name]), med(t[name + "99"])
        r["added_p50_us"] = r["lane_p50_us"] - r["inproc_p50_us"]
        r["ratio_p50"] = r["lane_p50_us"] / r["inproc_p50_us"]
        r["framed_added_p50_us"] = r["framed_p50_us"] - r["inproc_p50_us"]
        r["framed_ratio_p50"] = r["framed_p50_us"] / r["inproc_p50_us"]
        r["round_ratios"] = [round(b / a, 3) for a, b in zip(t["inproc"], t["lane"], strict=True)]
        r["round_ratios_framed"] = [round(b / a, 3) for a, b in zip(t["inproc"], t["framed"], strict=True)]
        out[label] = r
    return out


def bench_cache(c: Any, framed: Any, rounds: int, n: int) -> dict[str, Any]:
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    for cl in (c, framed):
        cl.infer("mlp_cached", {"x": x})
        r = cl.infer("mlp_cached", {"x": x})
        assert r.extra.get("cached") is True, "the cache did not answer"
    assert r.extra.get("lane") is None and c.infer("mlp_cached", {"x": x}).extra.get("lane") is True
    for _ in range(30):
        c.ping()
        c.lane_ping("mlp_cached")
    t: dict[str, list[float]] = {k: [] for k in ("lane_ping", "hit", "daemon_ping", "framed_hit", "uncached")}
    for _ in range(rounds):
        t["lane_ping"].append(med(timed(lambda: c.lane_ping("mlp_cached"), n)))
        t["hit"].append(med(timed(lambda: c.infer("mlp_cached", {"x": x}), n)))
        t["daemon_ping"].append(med(timed(c.ping, n)))
        t["framed_hit"].append(med(timed(lambda: framed.infer("mlp_cached", {"x": x}), n)))
        t["uncached"].append(med(timed(lambda: c.infer("mlp", {"x": x}), n)))
    out: dict[str, Any] = {f"{k}_p50_us": med(v) for k, v in t.items()}
    out["hit_vs_ping"] = med(t["hit"]) / med(t["lane_ping"])
    out["framed_hit_vs_daemon_ping"] = med(t["framed_hit"]) / med(t["daemon_ping"])
    out["round_ratios"] = [round(h / p, 3) for p, h in zip(t["lane_ping"], t["hit"], strict=True)]
    return out


def _clients(sock: str, threads: int, seed: int, model: str, lanes: bool, go_at: float, record_at: float,
             stop_at: float) -> dict[str, Any]:
    """``threads`` blocking clients of one load-generator process, each one request at a time from
    ``go_at`` (monotonic: the clock is the same in every process) to ``stop_at``; what completes after
    ``record_at`` (the warm-up is over) is kept."""
    from agent.client import Client

    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((1, 768)).astype(np.float32) for _ in range(threads)]
    rows: list[list[tuple[float, int, float, bool]]] = [[] for _ in range(threads)]
    errors: list[str] = []

    def client(i: int) -> None:
        with Client(sock, lanes=lanes) as c:
            while time.monotonic() < go_at:
                time.sleep(0.001)
            while True:
                t0 = time.perf_counter()
                try:
                    r = c.infer(model, {"x": xs[i]})
                except Exception as e:  # noqa: BLE001 - a benchmark records every failure (reported, not raised)
                    errors.append(repr(e))
                    if time.monotonic() >= stop_at:
                        return
                    continue
                now = time.monotonic()
                if now >= stop_at:
                    return
                if now >= record_at:
                    rows[i].append(((time.perf_counter() - t0) * 1e6, int(r.extra.get("batch", 1)), r.run_ms,
                                    bool(r.extra.get("lane"))))

    ts = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    return {"rows": [x for r in rows for x in r], "errors": errors[:5], "n_errors": len(errors)}


def _loadgen(conn: Any, sock: str, threads: int, seed: int) -> None:
    """One load-generator process: runs a phase per command until told to stop (None)."""
    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        conn.send(_clients(sock, threads, seed, **cmd))


class LoadGen:
    """``CLIENTS`` blocking clients spread over ``procs`` processes (threads in each). One process of 32
    threads measures its own GIL as much as the daemon (docs/SERVING.md has the layouts side by side)."""

    def __init__(self, sock: Path, procs: int, clients: int = CLIENTS) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")   # the bench process holds ORT sessions and threads: no fork
        per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        self.layout = f"{procs}x{per[0]}" if len(set(per)) == 1 else f"{procs} procs, {clients} clients"
        self.conns, self.procs = [], []
        for i, n in enumerate(per):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_loadgen, args=(b, str(sock), n, 2 + i), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)

    def phase(self, model: str, seconds: float, lanes: bool = True) -> dict[str, Any]:
        go = time.monotonic() + 1.0   # every process has connected its clients by then
        cmd = {"model": model, "lanes": lanes, "go_at": go, "record_at": go + 0.5, "stop_at": go + 0.5 + seconds}
        for c in self.conns:
            c.send(cmd)
        res = [c.recv() for c in self.conns]
        rows = [x for r in res for x in r["rows"]]
        lat = [x[0] for x in rows]
        b = [x[1] for x in rows]
        runs = [x[2] for x in rows if x[1] >= 2]
        return {"rps": len(rows) / seconds, "p50_us": pct(lat, 50), "p99_us": pct(lat, 99),
                "mean_batch": float(np.mean(b)) if b else 0.0, "max_batch": max(b, default=0),
                "batch_run_ms_p50": pct(runs, 50) if runs else None, "errors": sum(r["n_errors"] for r in res),
                "lane_share": sum(x[3] for x in rows) / max(1, len(rows))}

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except OSError:   # that load generator is gone already
                pass
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()


def bench_batching(sock: Path, rounds: int, seconds: float, layouts: list[int]) -> dict[str, Any]:
    """Rounds of (unbatched on lanes, unbatched framed, batched) under 32 clients, for each client layout
    (processes); the top-level figures are the first layout's."""
    out: dict[str, Any] = {"clients": CLIENTS, "max_batch": MAX_BATCH, "max_queue_delay_ms": DELAY_MS,
                           "model": "mlp 768->3072->768 fp32 (one transformer FFN block, 19 MB)",
                           "seconds_per_phase": seconds, "layouts": {}}
    for procs in layouts:
        gen = LoadGen(sock, procs)
        try:
            un, fr, ba = [], [], []
            for _ in range(rounds):
                un.append(gen.phase("wide", seconds))
                fr.append(gen.phase("wide", seconds, lanes=False))
                ba.append(gen.phase("wide_batched", seconds))
        finally:
            gen.close()
        speed = [b["rps"] / max(u["rps"], f["rps"]) for u, f, b in zip(un, fr, ba, strict=True)]
        r: dict[str, Any] = {"client_processes": procs}
        for name, rs in (("unbatched", un), ("unbatched_framed", fr), ("batched", ba)):
            r[name] = {k: med([x[k] for x in rs if x[k] is not None]) if any(x[k] is not None for x in rs) else None
                       for k in rs[0]}
        r["speedup"] = med(speed)
        r["round_speedups"] = [round(x, 3) for x in speed]
        r["p99_bound_us"] = (max(r["unbatched"]["p99_us"], r["unbatched_framed"]["p99_us"]) + DELAY_MS * 1e3
                             + (r["batched"]["batch_run_ms_p50"] or 0.0) * 1e3)
        r["p99_within_bound"] = r["batched"]["p99_us"] <= r["p99_bound_us"]
        out["layouts"][gen.layout] = r
        if len(out["layouts"]) == 1:
            out.update({k: v for k, v in r.items()})
            out["layout"] = gen.layout
    return out


def llm_zoo(zoo: Path, variant: Path) -> None:
    from agent.testing import make_causal_lm_zoo

    make_causal_lm_zoo(zoo, "llm", {"int4": variant}, llm_table(variant), max_batch=LLM_STREAMS)


def llm_table(variant: Path) -> dict[str, Any]:
    llm: dict[str, Any] = json.loads((variant / "llm.json").read_text())
    llm.setdefault("tokenizer", "tokenizer.json")
    return llm


def round_prompts(r: int) -> tuple[str, list[str]]:
    """Round ``r``'s prompts: one for the single stream, eight for the batch. Each is used once, and their
    first tokens differ, so no request reuses another's KV through the prefix cache (a hit computes the
    last prompt token on its own, which may flip a near tie: that would not be batching's doing)."""
    return f"[{r + 1}] {LLM_PROMPTS[r % LLM_STREAMS]}", [f"({r + 1}) {p}" for p in LLM_PROMPTS]


def decode_tps(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0


def concurrent(streams: list[Any]) -> dict[str, Any]:
    """Run the callables (each returns (stamps, text)) together; the aggregate decode tok/s = tokens that
    arrived while every stream was decoding / that window."""
    go = threading.Event()
    res: list[tuple[list[float], str] | None] = [None] * len(streams)
    errors: list[str] = []

    def run(i: int) -> None:
        go.wait()
        try:
            res[i] = streams[i]()
        except Exception as e:  # noqa: BLE001 - a benchmark records every failure
            errors.append(repr(e))

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(streams))]
    for t in ts:
        t.start()
    time.sleep(0.2)
    go.set()
    for t in ts:
        t.join(600)
    done = [r for r in res if r is not None and len(r[0]) > 1]
    if errors or len(done) < len(streams):
        return {"errors": errors, "aggregate_tps": None, "texts": [r[1] if r else None for r in res]}
    lo = max(st[0] for st, _ in done)    # every stream is decoding from here ...
    hi = min(st[-1] for st, _ in done)   # ... until the first one ends
    n = sum(1 for st, _ in done for t in st if lo < t <= hi)
    return {"errors": [], "aggregate_tps": n / (hi - lo) if hi > lo else None, "window_tokens": n,
            "texts": [t for _, t in done]}


def engine_stream(engine: Any, prompt: str, tokens: int) -> tuple[list[float], str]:
    stamps, parts = [], []
    for ev in engine.generate(prompt, {"max_tokens": tokens}):
        if ev.finish_reason is None:
            stamps.append(time.perf_counter())
        parts.append(ev.text)
    return stamps, "".join(parts)


def daemon_stream(sock: Path, prompt: str, tokens: int) -> tuple[list[float], str]:
    from agent.client import Client

    with Client(sock) as c:
        stamps, text = [], ""
        for ch in c.generate("llm", prompt=prompt, max_tokens=tokens):
            if ch.finish_reason is None:
                stamps.append(time.perf_counter())
            else:
                text = (ch.result or {})["text"]
    return stamps, text


def summarise(single: list[float], batched: list[dict[str, Any]], same: list[bool]) -> dict[str, Any]:
    ratios = [b["aggregate_tps"] / a for a, b in zip(single, batched, strict=True) if b["aggregate_tps"] and a]
    agg = [b["aggregate_tps"] for b in batched if b["aggregate_tps"]]
    return {"single_decode_tps": med(single), "batched_aggregate_tps": med(agg) if agg else None,
            "speedup": med(ratios) if ratios else None, "round_speedups": [round(x, 3) for x in ratios],
            "single_round_tps": [round(x, 2) for x in single], "batched_round_tps": [round(x, 2) for x in agg],
            "texts_identical_every_round": all(same) and len(same) > 0,
            "errors": [e for b in batched for e in b["errors"]]}


def bench_llm_engine(variant: Path, rounds: int, tokens: int) -> tuple[dict[str, Any], dict[str, str]]:
    """In process, rounds A B: each prompt alone on the plain engine (``max_batch = 1``: its greedy
    reference; one stream's tok/s = the median of the eight), a lone stream on the batching engine, then
    the eight together on it (``max_batch = 8``). Returns the figures and every prompt's reference text
    (the agentd section compares with them)."""
    from agent.llm.engine import LLMEngine

    def engine(max_batch: int) -> Any:
        return LLMEngine(variant / "model.onnx", variant / "tokenizer.json", llm_table(variant), prefix_cache_bytes=0,
                         max_batch=max_batch)

    plain, e = engine(1), engine(LLM_STREAMS)
    refs: dict[str, str] = {}
    single, lone, batched, same = [], [], [], []
    try:
        engine_stream(plain, "Hello", 8)
        engine_stream(e, "Hello", 8)
        for r in range(rounds):
            one, batch = round_prompts(r)
            refs[one] = engine_stream(plain, one, tokens)[1]
            runs = [engine_stream(plain, p, tokens) for p in batch]
            refs.update({p: t for p, (_, t) in zip(batch, runs, strict=True)})
            single.append(med([decode_tps(st) for st, _ in runs]))
            st, text = engine_stream(e, one, tokens)
            lone.append(decode_tps(st))
            b = concurrent([lambda p=p: engine_stream(e, p, tokens) for p in batch])
            batched.append(b)
            same.append(text == refs[one] and b["texts"] == [refs[p] for p in batch])
        stats = e.stats()["batching"]
    finally:
        e.close()
        plain.close()
    return {**summarise(single, batched, same), "lone_stream_on_batching_engine_tps": med(lone),
            "lone_round_tps": [round(x, 2) for x in lone], "batching_stats": stats}, refs


def bench_llm_daemon(sock: Path, rounds: int, tokens: int, refs: dict[str, str]) -> dict[str, Any]:
    """Through agentd, rounds A B: one stream, then eight concurrent streams; texts against ``refs``."""
    from agent.client import Client

    daemon_stream(sock, "Hello", 8)
    single, batched, same = [], [], []
    mismatched: list[str] = []
    for r in range(rounds):
        one, batch = round_prompts(r)
        stamps, text = daemon_stream(sock, one, tokens)
        single.append(decode_tps(stamps))
        b = concurrent([lambda p=p: daemon_stream(sock, p, tokens) for p in batch])
        batched.append(b)
        eq = [text == refs[one]] + [t == refs[p] for t, p in zip(b["texts"], batch, strict=True)]
        same.append(all(eq))
        mismatched += [p for p, ok in zip([one, *batch], eq, strict=True) if not ok]
    with Client(sock) as c:
        st = c.status()["models"]["llm"].get("llm") or {}
    return {**summarise(single, batched, same), "mismatched_prompts": mismatched,
            "batching_stats": st.get("batching")}


def bench_llm(sock: Path, variant: Path, rounds: int, tokens: int, refs: dict[str, str],
              engine: dict[str, Any]) -> dict[str, Any]:
    return {"streams": LLM_STREAMS, "tokens": tokens, "variant": str(variant), "engine": engine,
            "agentd": bench_llm_daemon(sock, rounds, tokens, refs)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=400, help="sequential requests per contender per round (1 KB)")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one concurrent load phase")
    ap.add_argument("--sections", default="ipc,cache,batching,llm")
    ap.add_argument("--client-procs", default="8",
                    help="batching: the 32 clients' processes, a comma list of layouts (the first gives the summary)")
    ap.add_argument("--llm", type=Path, default=None,
                    help="an int4 builder variant folder (model.onnx, tokenizer.json, llm.json) for the llm section")
    ap.add_argument("--llm-tokens", type=int, default=48, help="new tokens per stream in the llm section")
    ap.add_argument("--json", nargs="?", const="-", default=None,
                    help="write the results as JSON to this file (or stdout when given no file)")
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    if a.llm is None:
        sections.discard("llm")

    import onnxruntime as ort

    from agent.client import Client, wait_for_socket

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    build_zoo(tmp / "zoo")
    llm_engine: dict[str, Any] = {}
    refs: dict[str, str] = {}
    if "llm" in sections:   # in process first, before agentd's workers share the CPUs
        llm_zoo(tmp / "zoo", a.llm.resolve())
        llm_engine, refs = bench_llm_engine(a.llm.resolve(), a.rounds, a.llm_tokens)
    sock = tmp / "a.sock"
    access = tmp / "access.toml"   # 32 clients of one uid: above the default per-uid limits (8 / 16)
    access.write_text("[access]\nmax_concurrent = 256\nmax_connections = 64\n")
    up0 = os.getloadavg()
    proc = subprocess.Popen([sys.executable, "-m", "agent.daemon", "--zoo", str(tmp / "zoo"), "--socket", str(sock),
                             "--state-dir", str(tmp / "state"), "--log-level", "warning", "--spare-workers", "0",
                             "--access-config", str(access)])
    res: dict[str, Any] = {}
    try:
        wait_for_socket(sock, 120)
        with Client(sock) as c, Client(sock, lanes=False) as framed:
            if "ipc" in sections:
                res["ipc"] = bench_ipc(c, framed, tmp / "zoo", a.rounds, a.n)
            if "cache" in sections:
                res["cache"] = bench_cache(c, framed, a.rounds, a.n)
        if "batching" in sections:
            res["tensor_batching"] = bench_batching(sock, a.rounds, a.seconds,
                                                    [int(v) for v in a.client_procs.split(",")])
        if "llm" in sections:
            res["llm_batching"] = bench_llm(sock, a.llm.resolve(), a.rounds, a.llm_tokens, refs, llm_engine)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    ipc, cache, tb = res.get("ipc", {}), res.get("cache", {}), res.get("tensor_batching", {})
    lb = res.get("llm_batching", {}).get("agentd", {})
    lbe = res.get("llm_batching", {}).get("engine", {})
    res["summary"] = {
        "ipc_1kb_added_p50_us": ipc.get("1KB", {}).get("added_p50_us"),
        "ipc_1mb_ratio": ipc.get("1MB", {}).get("ratio_p50"),
        "ipc_1kb_framed_added_p50_us": ipc.get("1KB", {}).get("framed_added_p50_us"),
        "ipc_1mb_framed_ratio": ipc.get("1MB", {}).get("framed_ratio_p50"),
        "tensor_batching_speedup": tb.get("speedup"),
        "llm_batching_speedup": lb.get("speedup"),
        "llm_batching_texts_identical": lb.get("texts_identical_every_round"),
        "llm_batching_speedup_in_process": lbe.get("speedup"),
        "llm_batching_texts_identical_in_process": lbe.get("texts_identical_every_round"),
        "cache_hit_vs_ipc_ratio": cache.get("hit_vs_ping"),
    }
    s = res["summary"]
    res["targets"] = {
        "ipc_1kb_added_p50_us<=100": s["ipc_1kb_added_p50_us"] is not None and s["ipc_1kb_added_p50_us"] <= 100,
        "ipc_1mb_ratio<=1.10": s["ipc_1mb_ratio"] is not None and s["ipc_1mb_ratio"] <= 1.10,
        "tensor_batching_speedup>=3": s["tensor_batching_speedup"] is not None and s["tensor_batching_speedup"] >= 3,
        "tensor_batching_p99_within_bound": bool(tb.get("p99_within_bound")),
        "cache_hit_vs_ipc_ratio<=1.2": s["cache_hit_vs_ipc_ratio"] is not None and s["cache_hit_vs_ipc_ratio"] <= 1.2,
        "llm_batching_speedup>=3": None if s["llm_batching_speedup"] is None else s["llm_batching_speedup"] >= 3,
    }
    res["meta"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "ort": ort.__version__,
                   "loadavg_before": up0, "loadavg_after": os.getloadavg(), "rounds": a.rounds}
    _print(res)
    if a.json == "-":
        print(json.dumps(res, indent=2))
    elif a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


def _print(res: dict[str, Any]) -> None:
    out = sys.stderr
    if "ipc" in res:
        for label, r in res["ipc"].items():
            print(f"ipc {label}: in-process p50 {r['inproc_p50_us']:.1f} µs, lane p50 {r['lane_p50_us']:.1f} µs "
                  f"(added {r['added_p50_us']:.1f} µs, x{r['ratio_p50']:.2f}), framed p50 {r['framed_p50_us']:.1f} µs "
                  f"(added {r['framed_added_p50_us']:.1f} µs, x{r['framed_ratio_p50']:.2f})", file=out)
    if "cache" in res:
        r = res["cache"]
        print(f"cache: lane hit p50 {r['hit_p50_us']:.1f} µs, lane ping p50 {r['lane_ping_p50_us']:.1f} µs "
              f"(x{r['hit_vs_ping']:.2f}); framed hit {r['framed_hit_p50_us']:.1f} µs, daemon ping "
              f"{r['daemon_ping_p50_us']:.1f} µs (x{r['framed_hit_vs_daemon_ping']:.2f}); uncached infer p50 "
              f"{r['uncached_p50_us']:.1f} µs", file=out)
    if "tensor_batching" in res:
        r = res["tensor_batching"]
        for k in ("unbatched", "unbatched_framed", "batched"):
            x = r[k]
            print(f"{k:>9}: {x['rps']:.0f} req/s, p50 {x['p50_us'] / 1e3:.2f} ms, p99 {x['p99_us'] / 1e3:.2f} ms, "
                  f"mean batch {x['mean_batch']:.1f}, errors {x['errors']}", file=out)
        for name, x in r["layouts"].items():
            print(f"  clients {name}: batched {x['batched']['rps']:.0f} req/s against unbatched "
                  f"{max(x['unbatched']['rps'], x['unbatched_framed']['rps']):.0f}: x{x['speedup']:.2f}", file=out)
        print(f"batching speedup x{r['speedup']:.2f} (clients {r['layout']}); "
              f"p99 bound {r['p99_bound_us'] / 1e3:.2f} ms "
              f"({'met' if r['p99_within_bound'] else 'missed'})", file=out)
    if "llm_batching" in res:
        r = res["llm_batching"]
        for where in ("engine", "agentd"):
            x = r[where]
            print(f"llm batching {where} ({r['streams']} streams, {r['tokens']} tokens): one stream "
                  f"{x['single_decode_tps']:.1f} tok/s, batched aggregate {x['batched_aggregate_tps'] or 0:.1f} tok/s, "
                  f"speedup x{x['speedup'] or 0:.2f}, texts identical every round: "
                  f"{x['texts_identical_every_round']}", file=out)
    print("summary:", json.dumps(res["summary"]), file=out)
    print("targets:", json.dumps(res["targets"]), file=out)


if __name__ == "__main__":
    sys.exit(main())
