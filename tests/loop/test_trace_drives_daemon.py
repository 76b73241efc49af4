"""The whole loop through real processes: a replayed trace -> agentd's sensors -> policy -> hot swap."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agent.zoo.manifest import Measurement, Quality, load_manifest, save_manifest, with_variant
from tests.conftest import start_daemon

pytestmark = pytest.mark.integration

POLICY = """
schema = 1
default = "balanced"
[switching]
min_dwell_s = 0
debounce_s = 0
[profiles.balanced]
objective = "max_quality"
[profiles.power-saver]
objective = "min_energy"
min_quality = 0.9
[[rules]]
name = "low-battery"
when = 'power.on_ac == false && battery.percent != null && battery.percent < 20.0'
exit_when = 'power.on_ac == true'
profile = "power-saver"
"""


def _measure(zoo: Path) -> None:
    """Give the test zoo measured figures (as the zoo builder would) so the policy has a table."""
    m = load_manifest(zoo / "mlp")
    figures = {"fp32": (1.0, 0.40, 0.010), "int8": (0.95, 0.20, 0.004)}
    for vid, (q, lat, joules) in figures.items():
        v = replace(m.variant(vid), quality=Quality("agreement", q, q),
                    measurements=(Measurement(device="cpu", provider="CPUExecutionProvider", latency_ms_p50=lat,
                                              latency_ms_p95=lat * 1.5, energy_j=joules, peak_rss_bytes=90 << 20,
                                              meter="model"),))
        m = with_variant(m, v)
    save_manifest(m)


def _trace(path: Path) -> list[dict]:
    rows = []
    for t in range(0, 30):
        if t < 10:
            pct, ac, status = 60.0 - t, False, "Discharging"
        elif t < 20:
            pct, ac, status = 15.0 - (t - 10) * 0.2, False, "Discharging"
        else:
            pct, ac, status = 13.0 + (t - 20) * 0.5, True, "Charging"
        rows.append({"t": float(t),
                     "battery": {"present": True, "percent": pct, "status": status, "power_w": -20.0 if ac else 8.0,
                                 "count": 1},
                     "power": {"on_ac": ac, "adapters": ["ADP1"]},
                     "thermal": {"level": "none", "headroom": 0.2, "max_c": 45.0},
                     "memory": {"total_bytes": 8 << 30, "available_bytes": 6 << 30, "psi_some_avg10": 0.0},
                     "cpu": {"load_1m": 0.5},
                     "energy": {"meter": "battery", "power_w": 8.0}})
    with open(path, "w") as f:
        f.write(json.dumps({"format": "ondevice-agent-sensor-trace", "version": 1, "interval_s": 1.0,
                            "source": "test"}) + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return rows


def test_replayed_trace_drives_policy_swaps_and_the_daemon_sees_the_trace_values(tensor_zoo, tmp_path):
    _measure(tensor_zoo)
    rows = _trace(tmp_path / "trace.jsonl")
    (tmp_path / "policy.toml").write_text(POLICY)
    speed = 4.0   # 30 trace seconds in 7.5 s
    d = start_daemon(tensor_zoo, tmp_path, "--sensors", f"trace:{tmp_path / 'trace.jsonl'},speed={speed}",
                     "--policy", str(tmp_path / "policy.toml"), "--sample-interval", "0.25")
    seen = []
    try:
        with d.client() as c:
            # 30 trace seconds take 7.5 s; a loaded machine may take longer to follow, so watch until the
            # whole fp32 -> int8 -> fp32 pattern was served (or a generous deadline passes)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                st = c.status()
                r = c.infer("mlp", {"x": np.ones((1, 256), np.float32)})
                seen.append((st["sensors"], st["policy"]["profile"], r.variant))
                runs = [v for i, (_, _, v) in enumerate(seen) if i == 0 or seen[i - 1][2] != v]
                if runs[:3] == ["fp32", "int8", "fp32"]:
                    break
                time.sleep(0.1)
            hist = c.history("10m", ["swaps", "decisions"])
    finally:
        assert d.stop() == 0
    # every battery reading the daemon reported is one of the trace's values
    trace_pcts = {r["battery"]["percent"] for r in rows}
    pcts = [s["battery_percent"] for s, _, _ in seen if s]
    assert pcts and all(p in trace_pcts for p in pcts)
    assert min(pcts) < 15 and max(pcts) > 50
    # the policy followed the trace: fp32 (max quality) -> int8 on low battery -> fp32 on AC
    variants = [v for _, _, v in seen]
    first_int8 = variants.index("int8")
    assert "fp32" in variants[:first_int8] and "fp32" in variants[first_int8:]
    swaps = sorted(hist["swaps"], key=lambda s: s["ts"])
    policy_swaps = [(s["from"], s["to"], json.loads(s["reason"])) for s in swaps if '"policy"' in s["reason"]]
    assert [(a, b) for a, b, _ in policy_swaps][:2] == [("fp32", "int8"), ("int8", "fp32")]
    assert policy_swaps[0][2]["rule"] == "low-battery" and policy_swaps[0][2]["profile"] == "power-saver"
    assert policy_swaps[0][2]["readings"]["battery.percent"] < 20
    assert any(r["profile"] == "power-saver" for r in hist["decisions"])
