"""Live proof: throttle agentd's own cgroup CPU quota while a client sends requests with a deadline.

    python -m agent.throttle --zoo ZOO [--model smollm2] [--deadline-ms MS] [--tokens 16]
        [--phase-s 40] [--quota-cores 0.5] [--out result.json]

One agentd is started **inside a child cgroup** (made by :func:`agent.cpulimit.make_limiter`: cgroup v2
``cpu.max`` or v1 ``cpu.cfs_quota_us``; the threads fallback cannot throttle a running process, so it is
refused), with ``policies/quality-first.toml`` (best quality that meets the requests' deadlines). Then two
arms run the same schedule - full CPU, the quota stepping down (60 %, 40 % of the machine) as a thermal
governor would, ``--quota-cores`` for ``--phase-s``, full CPU again - with one client sending generations
back to back, each with ``deadline_ms``:

* ``static-fp32``: the model pinned to fp32 (a static choice);
* ``policy``: unpinned; the live sensors read the cgroup's quota (``cpu.quota_cores``), decide() reads the
  measured cost curves at that compute state, and the runtime swaps.

Every request is classified met / late (also a ``Timeout``: the daemon cut it off at its deadline) /
refused (``DeadlineInfeasible``: no loaded variant could make it, said at once) / failed (any other error);
the policy arm's swaps come from telemetry with their reasons.
The result (JSON) has per arm and per phase counts, the miss rates, and the swaps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.cpulimit import CpuLimiter, make_limiter
from agent.errors import AgentError, CpuLimitError, DeadlineInfeasible, Timeout, exit_code

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "quality-first.toml"
JOIN = ("import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


@dataclass
class Arm:
    name: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    swaps: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": len(self.requests)}
        for k in ("met", "late", "refused", "failed"):
            out[k] = sum(1 for r in self.requests if r["outcome"] == k)
        n = len(self.requests) or 1
        out["met_rate"] = out["met"] / n
        out["miss_rate"] = 1 - out["met_rate"]
        phases: dict[str, dict[str, int]] = {}
        for r in self.requests:
            p = phases.setdefault(r["phase"], {"met": 0, "late": 0, "refused": 0, "failed": 0})
            p[r["outcome"]] += 1
        out["phases"] = phases
        out["variants"] = sorted({r["variant"] for r in self.requests if r.get("variant")})
        out["standby_served"] = sum(1 for r in self.requests if r.get("standby"))   # routed to the warm standby
        # every request that missed (the first 50): when, in which phase, on what, how long, why
        out["misses"] = [{k: r.get(k) for k in ("t", "phase", "outcome", "variant", "latency_ms", "error")}
                         for r in self.requests if r["outcome"] != "met"][:50]
        toks = [r["tokens"] for r in self.requests if r.get("tokens") is not None]
        out["mean_tokens"] = sum(toks) / len(toks) if toks else None
        for ph in phases:
            lat = sorted(r["latency_ms"] for r in self.requests if r["phase"] == ph and r.get("variant"))
            phases[ph]["p50_ms"] = lat[len(lat) // 2] if lat else None  # type: ignore[assignment]
        out["swaps"] = [{"to": s.get("to"), "from": s.get("from"), "ts": s.get("ts"), "why": _why(s.get("reason"))}
                        for s in sorted(self.swaps, key=lambda s: float(s.get("ts") or 0))]
        return out


def _why(reason: Any) -> Any:
    try:
        r = json.loads(reason) if isinstance(reason, str) else reason
    except ValueError:
        return reason
    return r.get("explanation", r) if isinstance(r, dict) else r


def error_outcome(e: AgentError) -> str:
    """How a request that raised ``e`` counts: ``refused`` (DeadlineInfeasible: no loaded variant could make
    the deadline, said at once), ``late`` (Timeout: the daemon cut the generation off when its deadline
    passed, i.e. it missed the deadline), else ``failed``."""
    if isinstance(e, DeadlineInfeasible):
        return "refused"
    if isinstance(e, Timeout):
        return "late"
    return "failed"


def spawn_logged(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout and stderr to ``log_path``; the child keeps its copy of the file, ours is
    closed here (left open, it leaked for the life of the harness: a ResourceWarning, an error under pytest)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def start_agentd(lim: CpuLimiter, zoo: Path, workdir: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    if not lim.kind.startswith("cgroup"):
        raise CpuLimitError(f"a live throttle needs a writable cgroup; only {lim.describe()} is available")
    sock = Path(tempfile.mkdtemp(prefix="thr", dir="/tmp")) / "a.sock"
    procs = str(lim.path / "cgroup.procs")  # type: ignore[attr-defined]
    cmd = [sys.executable, "-c", JOIN, procs, "-m", "agent.daemon", "--zoo", str(zoo), "--socket", str(sock),
           "--state-dir", str(workdir / "state"), "--policy", str(POLICY), "--sample-interval", "0.5", *extra]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = spawn_logged(cmd, env, workdir / "agentd.log")
    from agent.client import wait_for_socket

    wait_for_socket(sock, timeout=120)
    return p, sock


def run_arm(name: str, sock: Path, lim: CpuLimiter, model: str, schedule: list[tuple[str, float, float | None]],
            deadline_ms: float, tokens: int, prompt: str, log: Any = print) -> Arm:
    from agent.client import Client

    arm = Arm(name)
    stop = threading.Event()
    phase = {"name": schedule[0][0]}

    def client_loop() -> None:
        with Client(str(sock), timeout=600) as c:
            while not stop.is_set():
                ph = phase["name"]
                t0 = time.perf_counter()
                rec: dict[str, Any] = {"phase": ph, "t": time.time()}
                try:
                    final = c.complete(model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens,
                                       deadline_ms=deadline_ms)
                    ms = (time.perf_counter() - t0) * 1000
                    rec.update(variant=final.variant, latency_ms=round(ms, 1),
                               standby=bool((final.result or {}).get("standby")),
                               tokens=(final.usage or {}).get("completion_tokens"),
                               outcome="met" if ms <= deadline_ms else "late")
                except AgentError as e:
                    rec.update(outcome=error_outcome(e), error=f"{type(e).__name__}: {e}",
                               latency_ms=round((time.perf_counter() - t0) * 1000, 1))
                    time.sleep(0.2)
                arm.requests.append(rec)

    th = threading.Thread(target=client_loop, daemon=True)
    t_start = time.time()
    th.start()
    for ph, dur, cores in schedule:
        lim.set_cores(cores)
        phase["name"] = ph
        log(f"[{name}] phase {ph}: {'no limit' if cores is None else f'{cores:g} cores'} for {dur:g}s")
        time.sleep(dur)
    stop.set()
    th.join(timeout=600)
    lim.set_cores(None)
    with Client(str(sock), timeout=60) as c:
        hist = c.history(since=f"{int(time.time() - t_start) + 5}s", tables=["swaps"])
    arm.swaps = [s for s in (hist.get("swaps") or []) if s.get("model") in (None, model)
                 and float(s.get("ts") or s.get("t") or t_start) >= t_start]
    return arm


def pick_deadline(zoo: Path, model: str, tokens: int, quota_cores: float, slack: float = 1.25) -> float:
    """The deadline both arms run under, from the zoo's measured rows (see :func:`deadline_from_rows`)."""
    from agent.policy.cli import zoo_table

    rows = [r for r in zoo_table(zoo)[0] if r.model == model]
    return deadline_from_rows(rows, tokens, quota_cores, float(os.cpu_count() or 1), slack)


def deadline_from_rows(rows: list[Any], tokens: int, quota_cores: float, ncpu: float, slack: float = 1.25) -> float:
    """A deadline that separates static fp32 from the policy, from the measured request latencies (p95 at
    ``tokens``): fp32 meets it at full CPU with ``slack`` (fp32's full-CPU p95 x slack) and the fastest
    variant meets it at the cut quota with the same slack (its p95 there x slack), whichever is larger; fp32's
    typical (p50) request at the cut must still miss it. Raises CpuLimitError when no such deadline exists
    (then the cut does not separate the arms)."""
    from agent.policy.costs import NOMINAL, ComputeState

    ref = next((r for r in rows if r.variant == "fp32"), None)
    if ref is None:
        raise CpuLimitError(f"model {rows[0].model if rows else '?'!r} has no measured fp32 row")
    full = float(ref.at(NOMINAL).request_ms(tokens) or 0.0)
    c = quota_cores / ncpu
    cut = ComputeState(c, 0.0, c, 1.0)
    fastest = min(rows, key=lambda r: float(r.at(cut).request_ms(tokens) or 1e18))
    fastest_ms = float(fastest.at(cut).request_ms(tokens) or 1e18)
    ref_cut_p50 = float(ref.at(cut).request_ms(tokens, 50) or 0.0)
    d = round(max(full, fastest_ms) * slack, -1)
    if not (fastest_ms < d < ref_cut_p50):
        raise CpuLimitError(f"no deadline separates the arms: fp32 needs {full:.0f} ms at full CPU and "
                            f"{ref_cut_p50:.0f} ms (p50) at {quota_cores:g} cores, the fastest variant "
                            f"({fastest.variant}) {fastest_ms:.0f} ms at {quota_cores:g} cores; "
                            f"x {slack:g} = {d:.0f} ms")
    return d


def run(zoo: Path, model: str = "smollm2", deadline_ms: float | None = None, tokens: int = 16, phase_s: float = 40.0,
        quota_cores: float = 0.5, prompt: str = "Tell me a long story about a robot who learns to paint.",
        workdir: Path | None = None, mechanism: str | None = None, log: Any = print,
        spare_workers: int = 0) -> dict[str, Any]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="throttle-"))
    if deadline_ms is None:
        deadline_ms = pick_deadline(zoo, model, tokens, quota_cores)
        log(f"deadline {deadline_ms:g} ms (measured p95 request latency x 1.25: the larger of fp32 at full CPU "
            f"and the fastest variant at {quota_cores:g} cores)")
    lim = make_limiter(f"agentd-throttle-{os.getpid()}", prefer=mechanism)
    proc = None
    try:
        proc, sock = start_agentd(lim, zoo, workdir, ["--spare-workers", str(spare_workers)])
        # the quota falls in steps, as a thermal governor clocks down, holds, then comes back at once
        ncpu = float(os.cpu_count() or 1)
        steps = [round(ncpu * f, 2) for f in (0.6, 0.4) if ncpu * f > quota_cores]
        schedule: list[tuple[str, float, float | None]] = [("full", phase_s * 0.5, None)]
        schedule += [(f"ramp-{c:g}", phase_s * 0.25, c) for c in steps]
        schedule += [("throttled", phase_s, quota_cores), ("restored", phase_s * 0.75, None)]
        from agent.client import Client

        with Client(str(sock), timeout=600) as c:
            c.pin(model, "fp32")
        static = run_arm("static-fp32", sock, lim, model, schedule, deadline_ms, tokens, prompt, log)
        with Client(str(sock), timeout=600) as c:
            c.unpin(model)
        time.sleep(3)
        policy = run_arm("policy", sock, lim, model, schedule, deadline_ms, tokens, prompt, log)
        res = {"mechanism": lim.kind, "limiter": lim.describe(), "deadline_ms": deadline_ms, "tokens": tokens,
               "quota_cores": quota_cores, "cpus": os.cpu_count(), "phase_s": phase_s,
               "arms": {a.name: a.summary() for a in (static, policy)}, "log": str(workdir / "agentd.log")}
        sw = policy.summary()["swaps"]
        res["policy_swaps_down"] = sum(1 for s in sw if s["to"] != "fp32")
        res["policy_swaps_up"] = sum(1 for s in sw if s["to"] == "fp32")
        return res
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        lim.set_cores(None)
        lim.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.throttle", description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--deadline-ms", type=float,
                    help="default: x 1.25 the larger measured p95 request latency of fp32 at full CPU and of the "
                         "fastest variant at --quota-cores")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--phase-s", type=float, default=40.0)
    ap.add_argument("--quota-cores", type=float, default=0.5)
    ap.add_argument("--mechanism", choices=("cgroup2", "cgroup1"))
    ap.add_argument("--spare-workers", type=int, default=0,
                    help="agentd's pre-started idle workers (agentd's own default is 1; default here: %(default)s)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.spare_workers < 0:
        ap.error(f"--spare-workers: expected 0 or more, got {a.spare_workers}")
    try:
        res = run(a.zoo, a.model, a.deadline_ms, a.tokens, a.phase_s, a.quota_cores, mechanism=a.mechanism,
                  spare_workers=a.spare_workers)
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
