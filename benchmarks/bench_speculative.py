"""Speculative decoding through agentd: a variant served with its draft against the same variant served plainly.

    flock /work/bench.lock .venv/bin/python benchmarks/bench_speculative.py --zoo ZOO --model smollm2 [--json]

One daemon serves two models made from ``ZOO/MODEL`` (files hard-linked into a private zoo): ``MODEL``
with the manifest's ``[llm.speculative]`` (or ``--draft``), and ``MODEL_plain`` without it, both pinned to
``--variant`` (default: the first variant the table gives a draft). Every prompt of the shipped chat set
(agent/llm/data/chat_prompts.jsonl; ``--prompts N`` for the first N) is generated greedily on both,
alternating per prompt (plain, drafted, plain, drafted, …), for ``--rounds`` passes. Decode tokens/s is
timed at the client from the first to the last streamed token. Reported: medians, the median of the
same-prompt ratios (drafted / plain) with quartiles, how many outputs are identical (streamed text), and the
draft's acceptance from ``status``; ``uptime`` before and after. ``--no-share-kv`` makes the draft
prefill the prompt itself (the behaviour before the KV handoff), for an A/B.
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def two_models(src_zoo: Path, model: str, variant: str, draft: str, k: int, share_kv: bool,
               dst_zoo: Path) -> None:
    """``dst_zoo/model`` (variant + its draft, ``[llm.speculative]``) and ``dst_zoo/model_plain`` (the same
    files, no table)."""
    from bench_llm_serving import private_zoo

    from agent.zoo.manifest import load_manifest, save_manifest

    folder = private_zoo(src_zoo, model, [variant, draft], dst_zoo)
    m = load_manifest(folder)
    llm = {key: val for key, val in (m.llm or {}).items() if key != "speculative"}
    save_manifest(replace(m, llm={**llm, "speculative": {"k": k, "share_kv": share_kv, "drafts": {variant: draft}}}))
    plain = dst_zoo / f"{model}_plain"
    shutil.copytree(folder, plain, copy_function=os.link, ignore=shutil.ignore_patterns("manifest.toml"))
    save_manifest(replace(m, folder=plain, name=f"{model}_plain", llm=llm))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variant", help="the served variant (default: the first with a draft in the manifest)")
    ap.add_argument("--draft", help="its draft variant (default: the manifest's)")
    ap.add_argument("--k", type=int, help="proposals per round (default: the manifest's, else 4)")
    ap.add_argument("--no-share-kv", action="store_true", help="the draft prefills the prompt itself")
    ap.add_argument("--prompts", type=int, default=0, help="the first N shipped prompts (default: all)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the prompt set")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from bench_llm_serving import time_stream

    from agent.llm.quality import load_prompts
    from agent.llm.speculative import draft_for
    from agent.zoo.manifest import load_manifest
    from tests.conftest import start_daemon  # the test suite's way of starting a real agentd

    m = load_manifest(a.zoo / a.model)
    ids = set(m.variant_ids())
    variant = a.variant or next((v.id for v in m.variants if draft_for(m.llm, v.id, ids)), None)
    if variant is None:
        ap.error(f"{a.zoo / a.model}: no [llm.speculative] draft in the manifest; give --variant and --draft")
    plan = draft_for(m.llm, variant, ids)
    draft = a.draft or (plan.variant if plan else None)
    if draft is None:
        ap.error(f"no draft for {variant}: give --draft")
    k = a.k or (plan.k if plan else 4)
    ps = load_prompts()
    ps = ps[: a.prompts] if a.prompts else ps
    res: dict[str, Any] = {"model": a.model, "variant": variant, "draft": draft, "k": k,
                           "share_kv": not a.no_share_kv, "prompts": len(ps), "tokens": a.tokens,
                           "rounds": a.rounds, "threads": a.threads, "loadavg_before": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="bench-spec-"))
    try:
        zoo = tmp / "zoo"
        two_models(a.zoo, a.model, variant, draft, k, not a.no_share_kv, zoo)
        d = start_daemon(zoo, tmp, "--threads", str(a.threads), "--spare-workers", "0")
        rows: dict[str, list[float]] = {"plain": [], "drafted": []}
        ratios: list[float] = []
        same = total = 0
        try:
            with d.client(timeout=600) as c:
                names = {"plain": f"{a.model}_plain", "drafted": a.model}
                for name in names.values():
                    c.pin(name, variant)
                    for _ in c.generate(name, messages=[{"role": "user", "content": "Hello"}], max_tokens=2):
                        pass
                for _ in range(a.rounds):
                    for p in ps:
                        msgs = [dict(x) for x in p.messages]
                        got: dict[str, tuple[str, float]] = {}
                        for label, name in names.items():
                            t0 = time.perf_counter()
                            chunks: list[Any] = []

                            def kept(it: Any, out: list[Any] = chunks) -> Any:
                                for ch in it:
                                    out.append(ch)
                                    yield ch
                            r = time_stream(kept(c.generate(name, messages=msgs, max_tokens=a.tokens)), t0)
                            got[label] = ("".join(ch.text for ch in chunks if ch.finish_reason is None), r["tok_s"])
                        total += 1
                        same += got["plain"][0] == got["drafted"][0]
                        for label in names:
                            rows[label].append(got[label][1])
                        ratios.append(got["drafted"][1] / got["plain"][1])
                st = c.status()["models"][a.model]["llm"]
                res["speculative"] = st.get("speculative")
        finally:
            d.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    res.update({"plain_tok_s": statistics.median(rows["plain"]), "drafted_tok_s": statistics.median(rows["drafted"]),
                "speedup": statistics.median(ratios), "speedup_q1": q[0], "speedup_q3": q[2],
                "identical": f"{same}/{total}", "loadavg_after": os.getloadavg()})
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        sp = res.get("speculative") or {}
        print(f"{a.model} {variant} drafted by {draft} (k={k}, share_kv={res['share_kv']}), {len(ps)} prompts x "
              f"{a.rounds}, {a.tokens} tokens, through agentd: plain {res['plain_tok_s']:.1f} tok/s, drafted "
              f"{res['drafted_tok_s']:.1f} tok/s; speed-up (median of same-prompt ratios) {res['speedup']:.3f} "
              f"(quartiles {q[0]:.3f}-{q[2]:.3f}); identical {res['identical']}; acceptance "
              f"{sp.get('acceptance')}, tokens/round {sp.get('tokens_per_round')}; load "
              f"{res['loadavg_before'][0]:.2f} -> {res['loadavg_after'][0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
