"""Sensor sampling cost: per-tick time, idle CPU share of a 1 Hz sampler, sampler memory.

    .venv/bin/python benchmarks/bench_sensors.py [--seconds 60] [--ticks 300] [--out FILE]

1. **Tick cost**: median/p90 wall and CPU time of ``LiveSensors.read()`` on (a) this machine's real
   /sys and /proc and (b) a laptop-like fake tree (battery, adapter, 8 thermal zones with trips, RAPL,
   8 CPUs with cpufreq) in a temp dir, since this machine has no battery/thermal/RAPL files.
2. **Idle CPU share**: this process's CPU time (getrusage) over ``--seconds`` with nothing running
   (baseline) and then with ``Sampler`` at 1 Hz and a no-op callback, both in the same run; the share
   is CPU seconds / wall seconds × 100 % of one core. Target: < 0.5 %.
3. **Sampler memory**: RSS (``/proc/self/statm``) before importing apscheduler, after starting the
   sampler, and at the end of the run (growth would show a leak), plus tracemalloc's peak over
   ``--ticks`` ticks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.sensors.live import LiveSensors


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def laptop_tree(root: Path) -> tuple[Path, Path]:
    sysfs = root / "sys"

    def w(rel: str, v: object) -> None:
        p = sysfs / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{v}\n")

    for k, v in {"type": "Battery", "status": "Discharging", "present": 1, "energy_now": 30_000_000,
                     "energy_full": 56_000_000, "power_now": 9_000_000, "capacity": 53}.items():
        w(f"class/power_supply/BAT0/{k}", v)
    w("class/power_supply/ADP1/type", "Mains")
    w("class/power_supply/ADP1/online", 0)
    for z in range(8):
        w(f"class/thermal/thermal_zone{z}/type", "x86_pkg_temp" if z else "acpitz")
        w(f"class/thermal/thermal_zone{z}/temp", 45000 + z * 1000)
        w(f"class/thermal/thermal_zone{z}/trip_point_0_type", "passive")
        w(f"class/thermal/thermal_zone{z}/trip_point_0_temp", 85000)
        w(f"class/thermal/thermal_zone{z}/trip_point_1_type", "critical")
        w(f"class/thermal/thermal_zone{z}/trip_point_1_temp", 100000)
    w("class/powercap/intel-rapl:0/name", "package-0")
    w("class/powercap/intel-rapl:0/energy_uj", 123456789)
    w("class/powercap/intel-rapl:0/max_energy_range_uj", 262143328850)
    w("devices/system/cpu/online", "0-7")
    for c in range(8):
        w(f"devices/system/cpu/cpu{c}/cpufreq/scaling_cur_freq", 2_400_000)
        w(f"devices/system/cpu/cpu{c}/cpu_capacity", 1024 if c < 4 else 512)
    return sysfs, Path("/proc")


def tick_cost(src: LiveSensors, n: int) -> dict[str, float]:
    src.read()
    walls, cpus = [], []
    for _ in range(n):
        c0, t0 = cpu_s(), time.perf_counter()
        src.read()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_s() - c0)
    walls.sort()
    return {"median_us": statistics.median(walls) * 1e6, "p90_us": walls[int(0.9 * len(walls))] * 1e6,
            "cpu_mean_us": sum(cpus) / len(cpus) * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each idle window")
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results") / "bench_sensors.json"))
    a = ap.parse_args()
    res: dict[str, object] = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                              "loadavg_start": os.getloadavg()[0]}

    real = LiveSensors()
    res["tick_real_machine"] = tick_cost(real, a.ticks)
    with tempfile.TemporaryDirectory() as td:
        sysfs, procfs = laptop_tree(Path(td))
        res["tick_laptop_tree"] = tick_cost(LiveSensors(sysfs, procfs, nvml=False), a.ticks)

    tracemalloc.start()
    t_before = tracemalloc.take_snapshot()
    for _ in range(a.ticks):
        real.read()
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del t_before
    res["tracemalloc_after_ticks_kib"] = cur / 1024
    res["tracemalloc_peak_kib"] = peak / 1024

    # idle baseline: the same process doing nothing for the same time
    rss0 = rss_bytes()
    c0, w0 = cpu_s(), time.monotonic()
    time.sleep(a.seconds)
    base = (cpu_s() - c0) / (time.monotonic() - w0)

    from agent.sensors.sampler import Sampler

    seen = [0]

    def cb(_snap: object) -> None:
        seen[0] += 1

    sampler = Sampler(real, cb, interval_s=1.0)
    sampler.start()
    time.sleep(1.0)
    rss1 = rss_bytes()
    c0, w0 = cpu_s(), time.monotonic()
    time.sleep(a.seconds)
    share = (cpu_s() - c0) / (time.monotonic() - w0)
    rss2 = rss_bytes()
    sampler.stop()
    res["idle"] = {"seconds": a.seconds, "baseline_cpu_percent": base * 100, "sampler_1hz_cpu_percent": share * 100,
                   "sampler_minus_baseline_percent": (share - base) * 100, "ticks": seen[0]}
    res["rss"] = {"before_sampler_mib": rss0 / 2**20, "after_start_mib": rss1 / 2**20, "end_mib": rss2 / 2**20,
                  "sampler_start_delta_mib": (rss1 - rss0) / 2**20, "growth_during_run_kib": (rss2 - rss1) / 1024}
    res["loadavg_end"] = os.getloadavg()[0]
    text = json.dumps(res, indent=2)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
