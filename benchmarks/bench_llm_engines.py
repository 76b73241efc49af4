"""LLM decode engines side by side, in one process tree, interleaved rounds (issue 10's acceptance).

    flock /work/bench.lock .venv/bin/python benchmarks/bench_llm_engines.py --json \\
        --int4 B_INT4 --int8 B_INT8 [--fp32 B_FP32] --table ZOO/smollm2/manifest.toml --gguf SOURCE.gguf

B_* are onnxruntime-genai model-builder output folders (model.onnx + .data + genai_config.json). Contenders,
all with ``--threads`` threads, the same 40-token prompt (token ids) and ``--tokens`` greedy new tokens:

* ``agentd int4`` / ``agentd int8``: the project's engine through a real agentd (one daemon, one model
  per variant so both stay loaded; the graph gets ``logits_to_keep``, ``agent.llm.graph_edit``), timed at
  the client as chunks arrive over the Unix socket;
* ``engine int4``: the same engine and graph in this process (no daemon);
* ``genai int4`` / ``genai int8``: onnxruntime-genai's Generator on the unedited builder graphs, with
  ``intra_op_num_threads`` written into a copy of genai_config.json (its default ran single-threaded);
* ``llama.cpp``: llama-cpp-python on the source GGUF, ``n_threads`` = ``--threads``.

Each round runs every contender once (A B C … A B C …, ``--rounds`` rounds, short pauses between, so
ORT's spinning threads settle). Reported: medians of TTFT and decode tok/s (from first to last token),
same-round ratios (median of the per-round ratio), and the memory-bandwidth bound: weight bytes read
per token (every MatMul/MatMulNBits/Gemm weight + scales of the graph, or every GGUF tensor, the
embedding included because the tied LM head reads it) × tok/s ÷ the read bandwidth of a 2-thread numpy
sum over 1 GiB, measured in the same run. Also: the prefix cache through agentd (TTFT with a long
system prompt, miss then hit) and, with ``--fp32``, speculative decoding in process (fp32 and int8
served, int4 drafts: tok/s plain vs speculative, accepted tokens per round, token identity).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT_WORDS = ("Write a long and detailed story about a brave knight who travels across the kingdom to "
                "find a lost dragon, and describe every village, forest and river that he sees on the way "
                "there and back again")
LONG_SYSTEM = ("You are a careful assistant for a field engineer. Answer briefly and precisely. "
               "Prefer metric units, say when you are unsure, and never invent part numbers. "
               "The engineer services pumps, valves, compressors and heat exchangers in remote sites "
               "with little connectivity, so answers must be self-contained and practical. ")


# -- measurement helpers --------------------------------------------------------------------------
def read_bandwidth(gib: float = 1.0, threads: int = 2, reps: int = 5) -> float:
    """GB/s of ``threads`` numpy threads summing disjoint halves of a ``gib`` GiB float32 array."""
    a = np.ones(int(gib * (1 << 30)) // 4, np.float32)
    parts = np.array_split(a, threads)
    out = []
    for _ in range(reps):
        ts = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out.append(a.nbytes / (time.perf_counter() - t0) / 1e9)
    return statistics.median(out)


def onnx_weight_bytes(model: Path) -> int:
    """Bytes of the weights a decode step reads: initializers feeding MatMul/MatMulNBits/Gemm nodes."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    sizes = {}
    for t in m.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        sizes[t.name] = n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    used = {i for n in m.graph.node if n.op_type in ("MatMul", "MatMulNBits", "Gemm") for i in n.input[1:]}
    return int(sum(sizes.get(i, 0) for i in used))


def gguf_weight_bytes(path: Path) -> int:
    import gguf

    return int(sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors))


def timed(tokens: Any, t0: float) -> dict[str, Any]:
    stamps = []
    for _ in tokens:
        stamps.append(time.perf_counter())
    n = len(stamps)
    return {"ttft_ms": (stamps[0] - t0) * 1e3 if n else None, "tokens": n,
            "tok_s": (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else None}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(xs: list[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


# -- contenders -------------------------------------------------------------------------------------
def genai_folder(src: Path, dst: Path, threads: int) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "genai_config.json":
            os.link(f, dst / f.name)
    cfg = json.loads((src / "genai_config.json").read_text())
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    so["intra_op_num_threads"] = threads
    so["inter_op_num_threads"] = 1
    (dst / "genai_config.json").write_text(json.dumps(cfg, indent=1))
    return dst


def genai_contender(folder: Path, ids: list[int], n: int) -> Callable[[], dict[str, Any]]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))

    def run() -> dict[str, Any]:
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False)
        g = og.Generator(model, p)
        t0 = time.perf_counter()
        g.append_tokens(ids)

        def toks() -> Any:
            while not g.is_done():
                g.generate_next_token()
                yield int(g.get_next_tokens()[0])
        return timed(toks(), t0)
    return run


def llama_contender(gguf_path: Path, ids: list[int], n: int, threads: int) -> Callable[[], dict[str, Any]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_threads=threads, n_threads_batch=threads, n_ctx=512,
                n_batch=512, verbose=False)
    eos = llm.token_eos()

    def run() -> dict[str, Any]:
        llm.reset()   # no prompt cache between rounds, like every other contender
        t0 = time.perf_counter()
        it = llm.create_completion(ids, max_tokens=n, temperature=0.0, top_k=1, stream=True,
                                   logit_bias={eos: -1e9})
        return timed((ch for ch in it if ch["choices"][0].get("finish_reason") is None), t0)
    return run


def engine_contender(model: Path, tok: Path, table: dict[str, Any], ids: list[int], n: int,
                     threads: int) -> Callable[[], dict[str, Any]]:
    from agent.llm.engine import LLMEngine

    e = LLMEngine(model, tok, table, threads=threads, prefix_cache_bytes=0)
    text = e.decode(ids)

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        return timed((ev for ev in e.generate(text, {"max_tokens": n}) if ev.token_id is not None), t0)
    return run


def agentd_contender(client: Any, model: str, text: str, n: int) -> Callable[[], dict[str, Any]]:
    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        return timed((ch for ch in client.generate(model, text, max_tokens=n) if ch.finish_reason is None), t0)
    return run


# -- agentd -----------------------------------------------------------------------------------------
def make_zoo(zoo: Path, variants: dict[str, Path], tok: Path, table: dict[str, Any]) -> None:
    """One model per variant (``smollm2_int4`` …) so one daemon keeps them all loaded."""
    from agent.llm.graph_edit import add_logits_to_keep
    from agent.zoo.manifest import Manifest, TensorSpec, Variant, save_manifest, sha256_file

    for vid, src in variants.items():
        folder = zoo / f"m_{vid}"
        d = folder / vid
        d.mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file() and f.name not in ("model.onnx", "tokenizer.json"):
                os.link(f, d / f.name)
        shutil.copy2(src / "model.onnx", d / "model.onnx")
        shutil.copy2(tok, d / "tokenizer.json")
        add_logits_to_keep(d / "model.onnx")
        f = d / "model.onnx"
        save_manifest(Manifest(
            name=folder.name, kind="causal-lm", reference=vid,
            inputs=(TensorSpec("input_ids", "int64", ("batch", "seq")),),
            outputs=(TensorSpec("logits", "float32", ("batch", "seq", int(table["vocab_size"]))),),
            variants=(Variant(id=vid, file=f"{vid}/model.onnx", precision=vid, derived_from="source",
                              method="onnxruntime_genai.models.builder", sha256=sha256_file(f),
                              size_bytes=f.stat().st_size),),
            folder=folder, description="bench", llm={**table, "tokenizer": "tokenizer.json"}))


def start_agentd(zoo: Path, tmp: Path, threads: int) -> tuple[subprocess.Popen[bytes], Path]:
    from agent.client import wait_for_socket

    sock = Path(tempfile.mkdtemp(prefix="bench", dir="/tmp")) / "a.sock"
    log = open(tmp / "agentd.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent.daemon", "--zoo", str(zoo), "--socket", str(sock),
                             "--state-dir", str(tmp / "state"), "--threads", str(threads)],
                            stdout=log, stderr=subprocess.STDOUT)
    wait_for_socket(sock, timeout=120)
    return proc, sock


def prefix_cache_ttft(client: Any, model: str, reps: int = 3, chars: int = 1200) -> dict[str, Any]:
    first, second, cached, prompt = [], [], [], 0
    for i in range(reps):
        system = f"Session {i}. " + (LONG_SYSTEM * (chars // len(LONG_SYSTEM) + 1))[:chars]
        for j, q in enumerate(("How do I bleed air from a pump?", "What torque for an M8 bolt?")):
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": q}]
            t0 = time.perf_counter()
            chunks = list(client.generate(model, messages=msgs, max_tokens=2))
            (first if j == 0 else second).append((chunks[-1].usage or {}).get("ttft_ms"))
            if j:
                cached.append((chunks[-1].usage or {}).get("cached_tokens", 0))
            prompt = (chunks[-1].usage or {}).get("prompt_tokens", 0)
            del t0
    t1, t2 = med(first), med(second)
    return {"prompt_tokens": prompt, "cached_tokens": med(cached), "ttft_miss_ms": t1, "ttft_hit_ms": t2,
            "speedup": t1 / t2 if t1 and t2 else None}


# -- speculative ------------------------------------------------------------------------------------
def speculative(targets: dict[str, Path], draft: Path, tok: Path, table: dict[str, Any], threads: int,
                prompts: list[str], n: int, k: int, rounds: int, min_p: float = 0.0) -> dict[str, Any]:
    from agent.llm.engine import LLMEngine
    from agent.llm.speculative import SESSION_CONFIG

    out: dict[str, Any] = {}
    for name, path in targets.items():
        plain = LLMEngine(path, tok, table, threads=threads, prefix_cache_bytes=0)
        # the session config agentd's worker uses for a variant served with a draft
        spec = LLMEngine(path, tok, table, threads=threads, prefix_cache_bytes=0, session_options=SESSION_CONFIG)
        spec.set_draft(LLMEngine(draft, tok, table, threads=threads, prefix_cache_bytes=0,
                                 session_options=SESSION_CONFIG), k, min_p)
        rows: dict[str, list[float | None]] = {"plain": [], "spec": [], "ratio": []}
        same = total = 0
        for _ in range(rounds):
            for p in prompts:
                msgs = [{"role": "user", "content": p}]
                res = {}
                for label, e in (("plain", plain), ("spec", spec)):
                    t0 = time.perf_counter()
                    evs = list(e.generate(msgs, {"max_tokens": n}))
                    res[label] = ([ev.token_id for ev in evs if ev.token_id is not None],
                                  evs[-1].usage.decode_tokens_per_s if evs[-1].usage else None)
                    del t0
                    time.sleep(0.2)
                total += 1
                same += res["plain"][0] == res["spec"][0]
                rows["plain"].append(res["plain"][1])
                rows["spec"].append(res["spec"][1])
                if res["plain"][1] and res["spec"][1]:
                    rows["ratio"].append(res["spec"][1] / res["plain"][1])
        st = spec.stats()["speculative"]
        log(f"speculative {name}: plain {rows['plain']} spec {rows['spec']} identical {same}/{total}")
        out[name] = {"plain_tok_s": med(rows["plain"]), "spec_tok_s": med(rows["spec"]),
                     "speedup": med(rows["ratio"]), "identical": f"{same}/{total}", "k": k,
                     "tokens_per_round": st["tokens_per_round"], "acceptance": st["acceptance"]}
        plain.close()
        spec.close()
    return out


# -- main -------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int4", type=Path, required=True, help="builder output folder, int4")
    ap.add_argument("--int8", type=Path, required=True, help="builder output folder, int8")
    ap.add_argument("--fp32", type=Path, help="builder output folder, fp32 (speculative section)")
    ap.add_argument("--table", type=Path, required=True, help="a manifest.toml whose [llm] table to use")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: next to --table's reference)")
    ap.add_argument("--gguf", type=Path, help="source GGUF for llama.cpp (skipped when absent)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spec-k", type=int, default=4)
    ap.add_argument("--spec-prompts", type=int, default=5)
    ap.add_argument("--spec-min-p", type=float, default=0.0)
    ap.add_argument("--spec-tokens", type=int, default=64)
    ap.add_argument("--spec-rounds", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated contenders to leave out")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args(argv)

    import tomllib

    from agent.client import Client
    from agent.llm.tokenizer import load_tokenizer

    man = tomllib.loads(a.table.read_text())
    table = dict(man["llm"])
    table.pop("speculative", None)
    tok = a.tokenizer or a.table.parent / Path(man["variants"][0]["file"]).parent / table["tokenizer"]
    ids = load_tokenizer(tok).encode(PROMPT_WORDS * 3, add_special_tokens=False).ids[: a.prompt_tokens]
    skip = set(filter(None, a.skip.split(",")))
    uptime0 = os.getloadavg()
    bw = read_bandwidth(threads=a.threads)
    res: dict[str, Any] = {"threads": a.threads, "prompt_tokens": len(ids), "new_tokens": a.tokens,
                           "rounds": a.rounds, "loadavg_before": uptime0, "read_bandwidth_gb_s": bw}
    wbytes = {"agentd int4": onnx_weight_bytes(a.int4 / "model.onnx"),
              "agentd int8": onnx_weight_bytes(a.int8 / "model.onnx")}
    wbytes["engine int4"] = wbytes["genai int4"] = wbytes["agentd int4"]
    wbytes["genai int8"] = wbytes["agentd int8"]
    with tempfile.TemporaryDirectory(prefix="bench_engines") as td:
        tmp = Path(td)
        make_zoo(tmp / "zoo", {"int4": a.int4, "int8": a.int8}, tok, table)
        proc, sock = start_agentd(tmp / "zoo", tmp, a.threads)
        try:
            with Client(sock, timeout=600) as c:
                text = load_tokenizer(tok).decode(ids)
                runs: dict[str, Callable[[], dict[str, Any]]] = {}
                for v in ("int4", "int8"):
                    c.pin(f"m_{v}", v)
                    runs[f"agentd {v}"] = agentd_contender(c, f"m_{v}", text, a.tokens)
                if "engine" not in skip:
                    runs["engine int4"] = engine_contender(tmp / "zoo" / "m_int4" / "int4" / "model.onnx",
                                                           tok, table, ids, a.tokens, a.threads)
                if "genai" not in skip:
                    for v, src in (("int4", a.int4), ("int8", a.int8)):
                        runs[f"genai {v}"] = genai_contender(genai_folder(src, tmp / f"genai_{v}", a.threads),
                                                             ids, a.tokens)
                if a.gguf and "llama.cpp" not in skip:
                    try:
                        runs["llama.cpp"] = llama_contender(a.gguf, ids, a.tokens, a.threads)
                        wbytes["llama.cpp"] = gguf_weight_bytes(a.gguf)
                    except ImportError as e:
                        res["llama.cpp"] = f"not run: {e}"
                for r in runs.values():  # warm-up, untimed
                    r()
                rows: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
                for i in range(a.rounds):
                    for k, r in runs.items():
                        rows[k].append(r())
                        log(f"round {i + 1} {k}: {rows[k][-1]}")
                        time.sleep(0.3)
                res["prefix_cache_agentd_int4"] = prefix_cache_ttft(c, "m_int4")
                log(f"prefix cache: {res['prefix_cache_agentd_int4']}")
        finally:
            proc.terminate()
            proc.wait(30)
        table_out = {}
        for k, rs in rows.items():
            tps = med([r["tok_s"] for r in rs])
            table_out[k] = {"ttft_ms": med([r["ttft_ms"] for r in rs]), "tok_s": tps,
                            "tokens": med([r["tokens"] for r in rs]),
                            "weight_mb": wbytes.get(k, 0) / 1e6,
                            "bound_share": wbytes[k] * tps / (bw * 1e9) if tps and k in wbytes else None}
        res["contenders"] = table_out

        def ratio(x: str, y: str, key: str) -> float | None:
            if x not in rows or y not in rows:
                return None
            return med([(p[key] / q[key]) if p[key] and q[key] else None
                        for p, q in zip(rows[x], rows[y], strict=False)])
        res["ratios"] = {
            "agentd int4 / llama.cpp decode": ratio("agentd int4", "llama.cpp", "tok_s"),
            "agentd int8 / llama.cpp decode": ratio("agentd int8", "llama.cpp", "tok_s"),
            "agentd int4 / genai int4 decode": ratio("agentd int4", "genai int4", "tok_s"),
            "agentd int8 / genai int8 decode": ratio("agentd int8", "genai int8", "tok_s"),
            "agentd int4 / engine int4 decode": ratio("agentd int4", "engine int4", "tok_s"),
            "agentd int4 / llama.cpp TTFT": ratio("agentd int4", "llama.cpp", "ttft_ms"),
        }
        r4 = res["ratios"]
        bs = table_out.get("agentd int4", {}).get("bound_share")
        log(f"contenders: {json.dumps(table_out)}")
        log(f"ratios: {json.dumps(res['ratios'])}")
        res["targets"] = {
            "agentd int4 >= 1.8x llama.cpp": None if r4["agentd int4 / llama.cpp decode"] is None
            else r4["agentd int4 / llama.cpp decode"] >= 1.8,
            "agentd int4 >= 0.95x same graph in process (genai)": None if r4["agentd int4 / genai int4 decode"]
            is None else r4["agentd int4 / genai int4 decode"] >= 0.95,
            "agentd int4 >= 75% of bound": None if bs is None else bs >= 0.75,
            "agentd int4 TTFT <= llama.cpp (40-token prompt)": None if r4["agentd int4 / llama.cpp TTFT"] is None
            else r4["agentd int4 / llama.cpp TTFT"] <= 1.0,
        }
        if a.fp32 is not None and "spec" not in skip:
            ps = ["Tell me about the history of Rome.", "What is the capital of France?",
                  "Explain how a pump works.", "Write a short poem about the sea.",
                  "List three uses of copper."][: a.spec_prompts]
            tdirs = {}
            for v, src in (("fp32", a.fp32), ("int8", a.int8), ("int4", a.int4)):
                d = tmp / f"spec_{v}"
                d.mkdir()
                for f in src.iterdir():
                    if f.is_file() and f.name != "model.onnx":
                        os.link(f, d / f.name)
                shutil.copy2(src / "model.onnx", d / "model.onnx")
                from agent.llm.graph_edit import add_logits_to_keep
                add_logits_to_keep(d / "model.onnx")
                tdirs[v] = d / "model.onnx"
            res["speculative"] = speculative({"fp32": tdirs["fp32"], "int8": tdirs["int8"]}, tdirs["int4"], tok,
                                             table, a.threads, ps, a.spec_tokens, a.spec_k, a.spec_rounds,
                                             a.spec_min_p)
    res["loadavg_after"] = os.getloadavg()
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
