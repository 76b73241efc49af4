"""Soak and chaos: many hot swaps under continuous load, with fault-injection rounds; prints a JSON report.

    flock /work/bench.lock nice -n 10 python benchmarks/soak.py --swaps 1000 --llm-zoo /work/shared-zoo/smollm2

One real agentd serves a tensor model (``mlp``, fp32 + int8, built here) and, with ``--llm-zoo``, SmolLM2.
``--clients`` threads (default 4) send ``infer`` requests without pause and check every output's shape;
one more thread streams SmolLM2 generations (short ones). An admin client pins ``mlp`` to fp32 and int8
in turn, ``--swaps`` times (each pin is one make-before-break swap; a few SmolLM2 swaps are mixed in
with ``--llm-swaps``). Every ``--fault-every`` swaps one fault round runs, in this order, round robin:

* ``sigkill``   – SIGKILL the active mlp worker (the request in flight is retried, the worker restarted);
* ``sigstop``   – SIGSTOP it (missed heartbeats: declared hung, killed, replaced; requests retried);
* ``zoo_file``  – remove the int8 variant's file under load: pins to int8 fail (LoadError), fp32 keeps
  serving; the file is put back;
* ``disk_full`` – the state directory is a small tmpfs (root only; else this round is skipped): fill it
  until ENOSPC, keep serving and swapping, free it;
* ``read_only`` – remount that tmpfs read-only under load, then read-write again.

Reported: requests served / failed (with the first errors), swaps done / refused, agentd and worker RSS
at the start (after a warm-up) and at the end, agentd's open fds and shared-memory segments (memfds) at
start and end, and worker processes left after agentd exits. Exit status 0 when nothing failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

IN_FEATURES = 256
FAULTS = ("sigkill", "sigstop", "zoo_file", "disk_full", "read_only")


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def fds(pid: int) -> tuple[int, int]:
    """(open fds, of which memfds) of a process."""
    n = shm = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        n += 1
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                shm += 1
    return n, shm


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def dev_shm() -> int:
    return len(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else 0


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.errors: list[str] = []
        self.retried = 0
        self.variants: Counter[str] = Counter()

    def good(self, kind: str, variant: str, retried: bool = False) -> None:
        with self.lock:
            self.ok[kind] += 1
            self.variants[f"{kind}:{variant}"] += 1
            self.retried += retried

    def bad(self, kind: str, e: BaseException) -> None:
        with self.lock:
            self.failed[kind] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {kind}: {type(e).__name__}: {e}")


def tensor_client(sock: Path, stop: threading.Event, st: Stats, seed: int) -> None:
    from agent.client import Client

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, IN_FEATURES)).astype(np.float32)
    c = Client(sock, timeout=60)
    while not stop.is_set():
        try:
            r = c.infer("mlp", {"x": x})
            if r.outputs["y"].shape != (4, 64) or not np.isfinite(r.outputs["y"]).all():
                raise AssertionError(f"bad output {r.outputs['y'].shape} from {r.variant}")
            st.good("infer", r.variant, r.retried)
        except Exception as e:  # noqa: BLE001 - every failure counts (recorded in the report)
            st.bad("infer", e)
            c.close()
            time.sleep(0.05)
            c = Client(sock, timeout=60)
    c.close()


def llm_client(sock: Path, stop: threading.Event, st: Stats, model: str) -> None:
    from agent.client import Client

    prompts = ["What is the capital of France?", "Name a colour.", "Count to three.", "Say hello."]
    i = 0
    c = Client(sock, timeout=120)
    while not stop.is_set():
        try:
            last = None
            for chunk in c.generate(model, prompts[i % len(prompts)], max_tokens=8, temperature=0.0):
                last = chunk
            if last is None or last.finish_reason is None:
                raise AssertionError("stream ended without a finish_reason")
            st.good("generate", last.variant or "?")
        except Exception as e:  # noqa: BLE001 - every failure counts (recorded in the report)
            st.bad("generate", e)
            c.close()
            time.sleep(0.2)
            c = Client(sock, timeout=120)
        i += 1
    c.close()


class Soak:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.work = Path(a.work or tempfile.mkdtemp(prefix="soak-", dir=a.tmp))
        self.work.mkdir(parents=True, exist_ok=True)
        self.zoo = self.work / "zoo"
        self.state = self.work / "state"
        self.sock = Path(tempfile.mkdtemp(prefix="sk", dir="/tmp")) / "a.sock"
        self.tmpfs = False
        self.faults: list[dict[str, Any]] = []
        self.workers_seen: set[int] = set()

    # -- setup --------------------------------------------------------------------------------------
    def build(self) -> None:
        from agent.testing import make_tensor_zoo

        make_tensor_zoo(self.zoo, "mlp", in_features=IN_FEATURES, hidden=512, out_features=64)
        if self.a.llm_zoo:
            (self.zoo / "smollm2").symlink_to(Path(self.a.llm_zoo).resolve())
        self.state.mkdir(exist_ok=True)
        if os.geteuid() == 0 and not self.a.no_tmpfs:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.a.state_mb}m", "tmpfs", str(self.state)],
                               capture_output=True, text=True, check=False)
            self.tmpfs = r.returncode == 0
            if not self.tmpfs:
                print(f"soak: no tmpfs for the state dir ({r.stderr.strip()}); disk rounds skipped", file=sys.stderr)

    def start(self) -> subprocess.Popen[bytes]:
        from agent.client import wait_for_socket

        cmd = [sys.executable, "-m", "agent.daemon", "--zoo", str(self.zoo), "--socket", str(self.sock),
               "--state-dir", str(self.state), "--log-level", "warning", "--drain-timeout", "30"]
        self.log = open(self.work / "agentd.log", "wb")
        p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_socket(self.sock, 300)
        return p

    def snapshot(self, agentd: int) -> dict[str, Any]:
        from agent.client import Client

        with Client(self.sock, timeout=60) as c:
            models = c.status()["models"]
        workers = {m: (s["active"] or {}).get("pid") for m, s in models.items()}
        kids = children(agentd)
        n, shm = fds(agentd)
        return {"agentd_rss_mib": round(rss(agentd) / 2**20, 1),
                "workers_rss_mib": {m: round(rss(p) / 2**20, 1) if p else None for m, p in workers.items()},
                "all_children_rss_mib": round(sum(rss(k) for k in kids) / 2**20, 1),
                "children": len(kids), "agentd_fds": n, "agentd_memfds": shm, "dev_shm": dev_shm()}

    # -- faults -------------------------------------------------------------------------------------
    def active_pid(self, model: str = "mlp") -> int | None:
        from agent.client import Client

        with Client(self.sock, timeout=60) as c:
            a = c.status()["models"][model]["active"]
        return a["pid"] if a else None

    def fault(self, kind: str, admin: Any, swap: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        rec: dict[str, Any] = {"fault": kind, "at": time.strftime("%H:%M:%S")}
        if kind in ("sigkill", "sigstop"):
            pid = self.active_pid()
            if pid is None:
                return {**rec, "skipped": "no active worker"}
            os.kill(pid, signal.SIGKILL if kind == "sigkill" else signal.SIGSTOP)
            end = time.monotonic() + 30
            while time.monotonic() < end:
                new = self.active_pid()
                if new is not None and new != pid:
                    break
                time.sleep(0.1)
            else:
                rec["error"] = "not replaced within 30 s"
            with contextlib.suppress(ProcessLookupError):
                if kind == "sigstop":
                    os.kill(pid, signal.SIGCONT)   # only matters if it was not killed
            rec["replaced_in_s"] = round(time.monotonic() - t0, 2)
        elif kind == "zoo_file":
            f = self.zoo / "mlp" / "int8.onnx"
            saved = f.read_bytes()
            f.unlink()
            refused = 0
            for _ in range(3):
                try:
                    swap("int8")
                except Exception:  # noqa: BLE001 - the fault expects the pin refused, whatever the error
                    refused += 1
                swap("fp32")
            f.write_bytes(saved)
            rec["refused_pins"] = refused
        elif kind in ("disk_full", "read_only"):
            if not self.tmpfs:
                return {**rec, "skipped": "state dir is not a tmpfs"}
            if kind == "disk_full":
                filler = self.state / "filler"
                with open(filler, "wb") as fh, contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * (1 << 20))
                rec["free_bytes_left"] = shutil.disk_usage(self.state).free
            else:
                # a read-only mount stacked on the state dir: new files and opens there fail (EROFS);
                # what agentd already has open keeps its descriptors (a remount of the tmpfs itself
                # is refused with EBUSY while the telemetry database is open for writing)
                subprocess.run(["mount", "--bind", "-o", "ro", str(self.state), str(self.state)], check=True)
            try:
                for i in range(6):
                    swap("int8" if i % 2 == 0 else "fp32")
                    time.sleep(0.3)
                try:   # opens the telemetry database anew: must answer, with rows or an error
                    admin.history("1m", ["swaps"])
                    rec["history"] = "ok"
                except Exception as e:  # noqa: BLE001 - an error answer is acceptable here: recorded
                    rec["history"] = f"{type(e).__name__}: {str(e)[:120]}"
            finally:
                if kind == "disk_full":
                    (self.state / "filler").unlink()
                else:
                    subprocess.run(["umount", str(self.state)], check=True)   # the stacked ro mount
        rec["seconds"] = round(time.monotonic() - t0, 2)
        return rec

    # -- the run ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from agent.client import Client

        a = self.a
        self.build()
        proc = self.start()
        st = Stats()
        stop = threading.Event()
        threads = [threading.Thread(target=tensor_client, args=(self.sock, stop, st, i), daemon=True)
                   for i in range(a.clients)]
        if a.llm_zoo:
            threads.append(threading.Thread(target=llm_client, args=(self.sock, stop, st, "smollm2"), daemon=True))
        for t in threads:
            t.start()
        admin = Client(self.sock, timeout=300)
        swaps = refused = llm_swaps = 0
        swap_ms: list[float] = []
        current = {"mlp": ""}

        def swap(variant: str, model: str = "mlp") -> None:
            nonlocal swaps, refused, llm_swaps
            t = time.perf_counter()
            try:
                res = admin.pin(model, variant)
            except Exception:
                refused += 1
                raise
            if model == "mlp":
                current["mlp"] = variant
            if res.get("changed"):
                if model == "mlp":
                    swaps += 1
                    swap_ms.append((time.perf_counter() - t) * 1e3)
                else:
                    llm_swaps += 1

        def flip() -> None:
            swap("fp32" if current["mlp"] == "int8" else "int8")

        started = time.time()
        t0 = time.monotonic()
        cut = threading.Event()   # SIGTERM/SIGINT: stop swapping, then measure and report as usual
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: cut.set())
        # warm-up: the first swaps and requests allocate what a steady state keeps (arenas, caches)
        for _ in range(a.warmup_swaps):
            flip()
        time.sleep(2)
        start = self.snapshot(proc.pid)
        start_ok = dict(st.ok)
        llm_variants = ["int8", "fp16"]
        k = 0
        next_fault = a.fault_every
        llm_every = max(1, a.swaps // (a.llm_swaps + 1)) if a.llm_zoo and a.llm_swaps else 0
        next_llm = a.warmup_swaps + llm_every
        while swaps < a.swaps + a.warmup_swaps and not cut.is_set():
            with contextlib.suppress(Exception):   # refused pins are counted in swap()
                flip()
            if llm_every and swaps >= next_llm and llm_swaps < a.llm_swaps:
                next_llm += llm_every
                v = llm_variants[llm_swaps % 2]
                t = time.monotonic()
                try:
                    swap(v, "smollm2")
                    self.faults.append({"fault": "llm_swap", "to": v, "seconds": round(time.monotonic() - t, 1)})
                except Exception as e:  # noqa: BLE001 - a failed swap is recorded in the report
                    self.faults.append({"fault": "llm_swap", "to": v, "error": str(e)})
            if a.fault_every and swaps - a.warmup_swaps >= next_fault:
                next_fault += a.fault_every
                kind = FAULTS[k % len(FAULTS)]
                k += 1
                try:
                    self.faults.append(self.fault(kind, admin, swap))
                except Exception as e:  # noqa: BLE001 - a fault that fails to inject is recorded, the soak goes on
                    self.faults.append({"fault": kind, "error": f"{type(e).__name__}: {e}"})
            if refused > 50 + a.swaps // 10:
                self.faults.append({"fault": "aborted", "error": f"{refused} pins refused"})
                break
            if a.progress and swaps % 100 == 0:
                print(f"soak: {swaps} swaps, {sum(st.ok.values())} ok, {sum(st.failed.values())} failed, "
                      f"{time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            admin.unpin("mlp")
        time.sleep(2)   # drains finish, spares refill
        end = self.snapshot(proc.pid)
        stop.set()
        for t in threads:
            t.join(60)
        admin.close()
        time.sleep(1)
        end_idle = self.snapshot(proc.pid)
        kids = children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        time.sleep(0.5)
        left = [k for k in kids if rss(k) > 0]
        if self.tmpfs:
            subprocess.run(["umount", str(self.state)], check=False)

        def growth(key: str) -> float | None:
            return round((end[key] - start[key]) / start[key] * 100, 2) if start[key] else None

        report = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "seconds": round(time.monotonic() - t0, 1), "swaps": swaps, "swaps_after_warmup": swaps - a.warmup_swaps,
            "llm_swaps": llm_swaps, "cut_short": cut.is_set(),
            "refused_pins": refused,
            "swap_ms_median": round(float(np.median(swap_ms)), 1) if swap_ms else None,
            "requests_ok": dict(st.ok),
            "requests_ok_after_warmup": {k_: st.ok[k_] - start_ok.get(k_, 0) for k_ in st.ok},
            "requests_failed": dict(st.failed), "retried": st.retried, "first_errors": st.errors,
            "served_by": dict(st.variants), "faults": self.faults,
            "start": start, "end": end, "end_idle": end_idle,
            "agentd_rss_growth_pct": growth("agentd_rss_mib"),
            "children_rss_growth_pct": growth("all_children_rss_mib"),
            "workers_left_after_exit": left, "agentd_exit": rc, "work": str(self.work),
        }
        return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--swaps", type=int, default=1000, help="timed mlp swaps after the warm-up")
    ap.add_argument("--warmup-swaps", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4, help="tensor clients (a SmolLM2 stream comes on top)")
    ap.add_argument("--llm-zoo", help="a SmolLM2 model folder (e.g. /work/shared-zoo/smollm2)")
    ap.add_argument("--llm-swaps", type=int, default=2, help="SmolLM2 swaps (int8 <-> fp16) mixed in")
    ap.add_argument("--fault-every", type=int, default=100, help="swaps between fault rounds (0: none)")
    ap.add_argument("--state-mb", type=int, default=256, help="size of the tmpfs state directory")
    ap.add_argument("--no-tmpfs", action="store_true")
    ap.add_argument("--work", help="working directory (default: a new one under --tmp)")
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON report here")
    a = ap.parse_args(argv)
    rep = Soak(a).run()
    text = json.dumps(rep, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text)
    ok = not rep["requests_failed"] and not rep["workers_left_after_exit"] and rep["agentd_exit"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
