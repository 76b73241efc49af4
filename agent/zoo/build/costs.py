"""The quota sweep: measure each variant's cost curve under less CPU and under a competing load.

    python -m agent.zoo.build.costs ZOO/MODEL [--variants fp32,int8] [--requests 5] [--tokens 16]
           [--mechanism cgroup2|cgroup1|threads] [--rounds 1]

For every (variant, cpu) of the model and every condition in :data:`CONDITIONS` (CPU quota 100/50/25 % of
the machine; full quota with one busy spinner per core competing), one fresh process
(``agent.zoo.build.cost_worker``) joins the limit, loads the variant and times ``requests`` requests. The
quota is applied by :func:`agent.cpulimit.make_limiter` (cgroup v2 ``cpu.max``, else v1
``cpu.cfs_quota_us``, else thread count + affinity); the mechanism is written to the file. A causal-lm
variant is timed on the path agentd serves it on (its worker's session options, with the draft the manifest's
``[llm.speculative]`` gives it, named in the entry's ``info.draft``). Energy per
request/token = the worker's CPU time x ``cpu_watts`` per busy core (meter ``model``, the same model as the
manifest's figures). With ``--rounds N`` conditions are interleaved (variant x condition, N times) and the
medians kept. Results go to ``ZOO/MODEL/costs.toml`` (see :mod:`agent.policy.costs`), keyed by the variant's
sha256 so a rebuilt variant's old curve is ignored.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.cpulimit import CpuLimiter, make_limiter
from agent.errors import AgentError, BuildError
from agent.policy.costs import CostCurve, CostPoint, CurveEntry, save_costs
from agent.zoo.manifest import load_manifest

CONDITIONS: tuple[tuple[float, float], ...] = ((1.0, 0.0), (0.5, 0.0), (0.25, 0.0), (1.0, 1.0))  # (compute, load)
SPIN = "while True: pass"


def _drafts(m: Any) -> dict[str, dict[str, Any]]:
    """Served variant -> the draft agentd loads beside it (manifest ``[llm.speculative]``)."""
    from agent.llm.speculative import draft_request

    out = {v.id: draft_request(m, v.id) for v in m.variants}
    return {vid: d for vid, d in out.items() if d is not None}


def _spinners(n: int) -> list[subprocess.Popen[bytes]]:
    return [subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            for _ in range(n)]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _recipe_info(m: Any, recipe: Path | None) -> tuple[Path | None, float, int | None]:
    from agent.zoo.recipe import load_recipe

    path = recipe
    if path is None:
        for v in m.variants:
            if v.build.get("recipe"):
                p = Path(v.build["recipe"])
                if p.exists():
                    path = p
                    break
    if path is None:
        return None, 10.0, None
    r = load_recipe(path)
    return path, r.measure.cpu_watts, r.measure.threads


def sweep(folder: Path, *, variants: Sequence[str] | None = None, requests: int = 5, tokens: int = 16,
          mechanism: str | None = None, rounds: int = 1, recipe: Path | None = None,
          conditions: Sequence[tuple[float, float]] = CONDITIONS, cgroup_root: Path | str = "/sys/fs/cgroup",
          log: Callable[[str], None] = print) -> Path:
    from agent.zoo.build.tensor_kind import run_worker

    m = load_manifest(folder)
    recipe_path, watts, threads = _recipe_info(m, recipe)
    if m.kind == "tensor" and recipe_path is None:
        raise BuildError(f"{folder}: a tensor model needs its recipe (for the eval feeds): pass --recipe")
    todo = [v for v in m.variants if (not variants or v.id in variants) and v.measurement("cpu") is not None
            and not getattr(v, "unfit", None)]
    if variants:
        missing = set(variants) - {v.id for v in todo}
        if missing:
            raise BuildError(f"{folder}: no measured cpu variant {sorted(missing)[0]!r}")
    ncpu = os.cpu_count() or 1
    lim: CpuLimiter = make_limiter(f"agent-costs-{os.getpid()}", cgroup_root, prefer=mechanism)
    log(f"quota mechanism: {lim.describe()}; {ncpu} cpus; {len(todo)} variants x {len(conditions)} conditions "
        f"x {rounds} rounds")
    got: dict[tuple[str, float, float], list[dict[str, Any]]] = {}
    drafts = _drafts(m) if m.kind == "causal-lm" else {}
    try:
        for _ in range(rounds):
            for v in todo:
                for compute, load in conditions:
                    cores = None if compute >= 1.0 else compute * ncpu
                    lim.set_cores(cores)
                    req: dict[str, Any] = {"kind": m.kind, "model": str(m.path_of(v)), "requests": requests,
                                           "tokens": tokens, "threads": lim.threads_for(cores) or threads}
                    if lim.kind.startswith("cgroup"):
                        req["join"] = str(lim.path / "cgroup.procs")  # type: ignore[attr-defined]
                    elif cores is not None:
                        req["affinity"] = sorted(os.sched_getaffinity(0))[:max(1, math.ceil(cores))]
                    if m.kind == "causal-lm":
                        llm = dict(m.llm or {})
                        req.update({"tokenizer": str(m.path_of(v).parent / llm.get("tokenizer", "tokenizer.json")),
                                    "llm": llm})
                        if v.id in drafts:   # timed as agentd serves it: with its draft
                            req["draft"] = drafts[v.id]
                    else:
                        req["recipe"] = str(recipe_path)
                    spin = _spinners(round(load * ncpu)) if load > 0 else []
                    try:
                        res = run_worker(req, timeout=900, module="agent.zoo.build.cost_worker")
                    finally:
                        _stop(spin)
                    got.setdefault((v.id, compute, load), []).append(res)
                    log(f"{v.id} compute {compute:.2f} load {load:.2f}: p50 {res['p50']:.3f} ms, "
                        f"p95 {res['p95']:.3f} ms, cpu {res['cpu_ms']:.3f} ms"
                        + (f", ttft {res['ttft_ms']:.1f} ms" if 'ttft_ms' in res else ""))
    finally:
        lim.set_cores(None)
        lim.close()
    entries = []
    for v in todo:
        pts = []
        for compute, load in conditions:
            rs = got[(v.id, compute, load)]

            def med(k: str, rs: list[dict[str, Any]] = rs) -> float | None:
                xs = [r[k] for r in rs if r.get(k) is not None]
                return statistics.median(xs) if xs else None

            cpu_ms = med("cpu_ms") or 0.0
            pts.append(CostPoint(compute, load, float(med("p50") or 0.0), float(med("p95") or 0.0),
                                 cpu_ms / 1000 * watts, cpu_ms, med("ttft_ms")))
        entries.append(CurveEntry(v.id, "cpu", v.sha256, "token" if m.kind == "causal-lm" else "request",
                                  CostCurve(tuple(pts), lim.kind, "model"),
                                  {"requests": requests, "rounds": rounds,
                                   **({"tokens": tokens} if m.kind == "causal-lm" else {}),
                                   **({"draft": drafts[v.id]["variant"]} if v.id in drafts else {})}))
    return save_costs(folder, m.name, entries, {
        "mechanism": lim.kind, "cores": ncpu, "cpu_watts": watts, "host": platform.node(),
        "measured_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "note": "energy = worker CPU time x cpu_watts per busy core (meter model); load = share of cores spun by "
                "competing busy loops"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.zoo.build.costs", description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="a model folder of a zoo (with manifest.toml)")
    ap.add_argument("--variants", help="comma-separated variant ids (default: every measured one)")
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=16, help="decode tokens per causal-lm request")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--mechanism", choices=("cgroup2", "cgroup1", "threads"))
    ap.add_argument("--recipe", type=Path, help="the recipe (tensor models: eval feeds; default: the manifest's)")
    a = ap.parse_args(argv)
    if a.requests < 1 or a.tokens < 1 or a.rounds < 1:
        print("error: --requests, --tokens and --rounds must be >= 1", file=sys.stderr)
        return 2
    try:
        out = sweep(a.folder, variants=a.variants.split(",") if a.variants else None, requests=a.requests,
                    tokens=a.tokens, mechanism=a.mechanism, rounds=a.rounds, recipe=a.recipe)
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, BuildError) else 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
