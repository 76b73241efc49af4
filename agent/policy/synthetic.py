"""Synthetic scenarios for the simulator: a variant table shaped like SmolLM2-135M's measured figures and
small deterministic traces (discharge, thermal soak, memory pressure, flapping charger).

These stand in until the zoo's measured table and the sensors' recorded traces are available; the
figures follow FACTS.md (decode ms/token fp32 24, fp16 26, int8 16, int4 17, int8-dynamic 11; perplexity
15.15 / 15.15 / 15.20 / 19.4 / 28.9, so quality = 15.15 / ppl), for a 32-token request on a CPU drawing
12 W. Memory and load times are sized from the files (540 MB fp32, 267 MB int8, ~100 MB int4).
"""

from __future__ import annotations

import math
from pathlib import Path

from agent.policy.table import VariantRow
from agent.policy.trace import SENSOR_FORMAT, Trace, TraceSample, write_trace
from agent.sensors.snapshot import BatteryState, MemoryState, PowerState, Snapshot, ThermalState

CPU_W = 12.0
TOKENS = 32
# variant, precision, ms/token, perplexity, memory MB, load ms
SMOLLM2 = (
    ("fp32", "fp32", 24.0, 15.15, 600, 800.0),
    ("fp16", "fp16", 26.0, 15.15, 600, 900.0),
    ("int8", "int8", 16.0, 15.20, 330, 400.0),
    ("int4", "int4", 17.0, 19.4, 150, 250.0),
    ("int8-dyn", "int8", 11.0, 28.9, 200, 300.0),
)


def smollm2_rows(model: str = "smollm2", npu: bool = False, gpu: bool = False) -> list[VariantRow]:
    """The fixture table. ``npu=True`` adds hypothetical NPU rows (int8, fp16); ``gpu=True`` a hypothetical
    fp16 GPU row that is the cheapest of all (3.5 J) so heat guards that deny the GPU have a cost."""
    rows = []
    for vid, prec, ms_tok, ppl, mb, load in SMOLLM2:
        p50 = ms_tok * TOKENS
        rows.append(VariantRow(model, vid, "cpu", "CPUExecutionProvider", prec, round(15.15 / ppl, 5), p50,
                               round(p50 * 1.1, 1), round(p50 / 1000 * CPU_W, 4), mb * 1_000_000, load,
                               meter="model"))
    if npu:
        rows.append(VariantRow(model, "int8", "npu", "QNNExecutionProvider", "int8", round(15.15 / 15.20, 5),
                               300.0, 330.0, 1.2, 120_000_000, 900.0, meter="model"))
        rows.append(VariantRow(model, "fp16", "npu", "QNNExecutionProvider", "fp16", 1.0,
                               420.0, 470.0, 2.0, 200_000_000, 1200.0, meter="model"))
    if gpu:
        rows.append(VariantRow(model, "fp16", "gpu", "CUDAExecutionProvider", "fp16", 1.0,
                               160.0, 190.0, 3.5, 250_000_000, 1500.0, meter="model"))
    return sorted(rows, key=lambda r: (r.model, r.variant, r.device))


def _snap(t: float, pct: float, on_ac: bool, level: str, temp: float, avail_mb: float, psi: float) -> Snapshot:
    return Snapshot(
        mono_s=t, wall_s=1.7e9 + t,
        battery=BatteryState(present=True, percent=round(pct, 2), status="Charging" if on_ac else "Discharging"),
        power=PowerState(on_ac=on_ac, adapters=("AC",)),
        thermal=ThermalState(level=level, max_c=round(temp, 1)),
        memory=MemoryState(total_bytes=8_000_000_000, available_bytes=int(avail_mb * 1e6),
                           psi_some_avg10=round(psi, 2)),
    )


def _level(temp: float) -> str:
    for lvl, lim in (("none", 55), ("light", 65), ("moderate", 75), ("severe", 85), ("critical", 95)):
        if temp < lim:
            return lvl
    return "emergency"


def scenario(name: str, duration_s: float = 3600.0, step_s: float = 5.0) -> Trace:
    """One of ``SCENARIOS``, deterministic."""
    samples = []
    n = int(duration_s / step_s)
    for i in range(n):
        t = i * step_s
        x = t / duration_s
        if name == "discharge":          # unplugged, 100 % -> 8 %, mild heat
            s = _snap(t, 100 - 92 * x, False, "light", 58.0, 3000.0, 0.2)
        elif name == "thermal-soak":     # on AC, heat rises to critical and falls back
            temp = 45 + 52 * math.sin(math.pi * x)
            s = _snap(t, 80.0, True, _level(temp), temp, 3000.0, 0.5)
        elif name == "memory-pressure":  # available memory swings every 2 minutes, PSI spikes with it
            phase = math.sin(2 * math.pi * t / 120.0)
            s = _snap(t, 60.0, True, "light", 60.0, 1900 + 1000 * phase, max(0.0, -phase) * 25)
        elif name == "flappy-charger":   # charger flaps every 15 s around 20 % battery
            on = (i // 3) % 2 == 0
            s = _snap(t, 21.0 - 3 * x + (0.8 if on else -0.8), on, "moderate", 70.0, 3000.0, 0.3)
        else:
            raise ValueError(f"expected one of {', '.join(SCENARIOS)}, got {name!r}")
        samples.append(TraceSample(t, s))
    header = {"format": SENSOR_FORMAT, "version": 1, "name": name, "interval_s": step_s,
              "synthetic": True}
    return Trace(header=header, samples=tuple(samples), name=name)


SCENARIOS = ("discharge", "thermal-soak", "memory-pressure", "flappy-charger")


def write_scenario(name: str, path: Path, duration_s: float = 3600.0, step_s: float = 5.0) -> Path:
    tr = scenario(name, duration_s, step_s)
    return write_trace(path, tr.header, [(s.t, s.snapshot) for s in tr.samples])
