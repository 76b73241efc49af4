"""What the telemetry writer costs per row: ``agent.telemetry._insert`` against sqlite-utils' ``insert_all``.

    .venv/bin/python benchmarks/bench_telemetry.py [--rounds 7] [--rows 5000] [--json OUT]

Every served request leaves one ``requests`` row; the writer thread commits them in batches. This times
one batch of request rows (the shape ``infer_row`` writes) into a real WAL SQLite file, the two writers
interleaved round by round (A B A B …) into separate files, CPU seconds of this process per row
(the writer holds the GIL for most of it, so it is time taken from the event loop), medians and the
same-round ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rows(n: int) -> list[dict[str, Any]]:
    return [{"model": "mlp", "variant": "fp32", "device": "cpu", "ok": True, "latency_ms": 0.05 + i * 1e-6,
             "run_ms": 0.02, "cpu_s": 2e-5, "retried": False, "joules": 1e-4, "meter": "model", "batch": 1,
             "cached": False, "ts": time.time()} for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--json", nargs="?", const="-", default=None)
    a = ap.parse_args()
    from agent.telemetry import Telemetry, _flat, _insert

    tmp = Path(tempfile.mkdtemp())
    dbs = {}
    for name in ("insert_all", "agent"):
        t = Telemetry(tmp / f"{name}.db", flush_s=3600)
        t.close()
        dbs[name] = t._open()
    writers = {
        "insert_all": lambda db, rs: db.table("requests").insert_all((_flat(r) for r in rs), alter=True,
                                                                      batch_size=1000),
        "agent": lambda db, rs: _insert(db, "requests", rs),
    }
    load_before = os.getloadavg()
    per_row: dict[str, list[float]] = {k: [] for k in writers}
    for _ in range(a.rounds):
        for name, write in writers.items():
            rs = rows(a.rows)
            db = dbs[name]
            c0 = time.process_time()
            with db.conn:
                write(db, rs)
            per_row[name].append((time.process_time() - c0) / a.rows * 1e6)
    counts = {k: db.execute("SELECT count(*) FROM requests").fetchone()[0] for k, db in dbs.items()}
    ratios = [b / o for o, b in zip(per_row["insert_all"], per_row["agent"], strict=True)]
    res = {"rows_per_batch": a.rows, "rounds": a.rounds,
           "cpu_us_per_row": {k: statistics.median(v) for k, v in per_row.items()}, "rounds_us_per_row": per_row,
           "agent_vs_insert_all": statistics.median(ratios), "rows_written": counts,
           "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    for k, v in res["cpu_us_per_row"].items():
        print(f"{k}: {v:.2f} µs CPU per row (median of {a.rounds} rounds)")
    print(f"agent / insert_all, same-round median: {res['agent_vs_insert_all']:.3f}; "
          f"load {load_before[0]:.2f} -> {res['loadavg_after'][0]:.2f}")
    if a.json:
        text = json.dumps(res, indent=2)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
