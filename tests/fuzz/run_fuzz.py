"""Fuzz a real agentd with generated frames and check every one is answered; prints the counts as JSON.

    python tests/fuzz/run_fuzz.py --frames 1000000          # the full run (minutes)
    python tests/fuzz/run_fuzz.py --frames 20000 --seed 7   # CI-sized

It builds the small ``mlp`` zoo in a temporary directory, starts agentd (``--max-frame 65536`` so
oversized prefixes are cheap; an access config with high per-uid limits so pipelined frames reach
validation instead of ``Busy``), runs :func:`fuzzframes.run`, then checks the daemon still serves a
well-formed request and exits 0 on SIGTERM. Exit status: 0 when every frame was answered.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzframes

IN_FEATURES = 16
MAX_FRAME = 65536


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def start(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    from agent.client import wait_for_socket
    from agent.testing import make_tensor_zoo

    make_tensor_zoo(work / "zoo", "mlp", in_features=IN_FEATURES, hidden=32, out_features=4)
    (work / "access.toml").write_text("[access]\nmax_concurrent = 4096\nmax_connections = 64\n")
    sock = Path(tempfile.mkdtemp(prefix="fz", dir="/tmp")) / "a.sock"
    with open(work / "agentd.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agent.daemon", "--zoo", str(work / "zoo"),
                                 "--socket", str(sock), "--state-dir", str(work / "state"),
                                 "--max-frame", str(MAX_FRAME), "--access-config", str(work / "access.toml"),
                                 "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT)
    wait_for_socket(sock, 120)
    return proc, sock


def serves(sock: Path) -> bool:
    import numpy as np

    from agent.client import Client

    with Client(sock, timeout=30) as c:
        r = c.infer("mlp", {"x": np.ones((1, IN_FEATURES), np.float32)})
        return r.outputs["y"].shape == (1, 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    a = ap.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    proc, sock = start(work)
    rss0 = rss_of(proc.pid)

    def progress(c: fuzzframes.Counts) -> None:
        print(f"{c.frames} frames, {c.unanswered} unanswered, {c.frames / c.seconds:.0f}/s, "
              f"agentd rss {rss_of(proc.pid) >> 20} MiB", file=sys.stderr, flush=True)
    counts = fuzzframes.run(str(sock), a.frames, seed=a.seed, in_features=IN_FEATURES, max_frame=MAX_FRAME,
                            progress=progress)
    alive = proc.poll() is None
    ok_after = alive and serves(sock)
    rss1 = rss_of(proc.pid) if alive else 0
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = -9
    out = {**counts.as_dict(), "seed": a.seed, "daemon_alive_after": alive, "serves_after": ok_after,
           "agentd_rss_start_mib": round(rss0 / 2**20, 1), "agentd_rss_end_mib": round(rss1 / 2**20, 1),
           "agentd_exit": rc, "log": str(work / "agentd.log"),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps(out, indent=1))
    good = (counts.unanswered == 0 and counts.not_closed == 0 and counts.bad_replies == 0 and ok_after and rc == 0)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
