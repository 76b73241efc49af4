"""The live throttle proof's pure parts (agent/throttle.py): the deadline it picks from the measured curves,
and how a request's error counts. The live run itself is tests/loop/test_throttle_slow.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import CpuLimitError, DeadlineInfeasible, ExecutionFailed, Timeout
from agent.policy.costs import ComputeState, CostCurve, CostPoint
from agent.policy.table import VariantRow
from agent.throttle import deadline_from_rows, error_outcome, spawn_logged


def _row(variant: str, q: float, pts: list[tuple[float, float, float, float]]) -> VariantRow:
    """A per-token row with a measured curve: (compute, p50 ms/token, p95 ms/token, ttft ms) per point."""
    curve = CostCurve(tuple(CostPoint(c, 0.0, p50, p95, 0.1, None, ttft) for c, p50, p95, ttft in pts), "cgroup1")
    full = next(p for p in pts if p[0] == 1.0)
    return VariantRow("smollm2", variant, "cpu", "CPUExecutionProvider", variant, q, full[1], full[2], 0.1,
                      10**8, 500.0, unit="token", ttft_ms=full[3], curve=curve)


def _cut(c: float) -> ComputeState:
    return ComputeState(c, 0.0, c, 1.0)


# the SmolLM2 sweep of 2026-12-03 (rounded): int4 is ~2x faster per token, its TTFT is not faster
FP32 = _row("fp32", 1.0, [(1.0, 23.9, 24.3, 65.9), (0.5, 50.2, 52.3, 157.1), (0.25, 106.2, 118.1, 295.7)])
INT4 = _row("int4", 0.6875, [(1.0, 10.7, 11.4, 78.6), (0.5, 23.9, 24.9, 182.8), (0.25, 50.1, 56.2, 384.4)])


def test_the_deadline_sits_between_the_fastest_variant_and_fp32_at_the_cut_quota() -> None:
    # fp32 at full CPU: 66 + 16 x 24.3 = 455 ms; x 1.25 = 570 ms, which int4 cannot make at 0.5 of 2 cores
    # (384 + 16 x 56.2 = 1283 ms): the old rule (fp32 at full x 1.25) refused to run on this zoo
    d = deadline_from_rows([FP32, INT4], 16, 0.5, 2.0)
    assert d == 1600.0                                    # 1283 x 1.25, rounded to 10 ms
    int4_cut = INT4.at(_cut(0.25)).request_ms(16) or 0.0
    fp32_cut = FP32.at(_cut(0.25)).request_ms(16, 50) or 0.0
    assert int4_cut < d < fp32_cut                        # the policy can meet it at the cut, static fp32 cannot


def test_a_fast_variant_keeps_the_fp32_full_cpu_deadline() -> None:
    fast = _row("int4", 0.7, [(1.0, 2.0, 2.0, 20.0), (0.25, 8.0, 8.0, 80.0)])
    assert deadline_from_rows([FP32, fast], 16, 0.5, 2.0) == round(455 * 1.25, -1)


def test_no_deadline_when_fp32_makes_the_cut_too() -> None:
    with pytest.raises(CpuLimitError, match="no deadline separates"):
        deadline_from_rows([FP32, INT4], 16, 1.9, 2.0)    # a 5 % cut: fp32's p50 stays under any deadline


def test_a_generation_cut_off_at_its_deadline_is_late_not_failed() -> None:
    assert error_outcome(Timeout("smollm2/fp32: deadline 1.6 s passed")) == "late"
    assert error_outcome(DeadlineInfeasible("deadline 1600 ms cannot be met")) == "refused"
    assert error_outcome(ExecutionFailed("EP error")) == "failed"


def test_the_daemon_log_file_is_not_left_open(tmp_path: Path) -> None:
    import gc
    import os
    import sys
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        p = spawn_logged([sys.executable, "-c", "print('hello from the child')"], dict(os.environ),
                         tmp_path / "agentd.log")
        assert p.wait(timeout=60) == 0
        del p
        gc.collect()
    assert (tmp_path / "agentd.log").read_text().strip() == "hello from the child"
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)], [str(w.message) for w in seen]


def test_a_negative_spare_worker_count_is_refused_before_anything_starts(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from agent.throttle import main

    with pytest.raises(SystemExit) as e:
        main(["--zoo", str(tmp_path), "--spare-workers", "-1"])
    assert e.value.code == 2
    assert "--spare-workers: expected 0 or more, got -1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_summary_counts_standby_served_requests_and_lists_each_miss() -> None:
    from agent.throttle import Arm

    arm = Arm("policy", requests=[
        {"phase": "full", "t": 1.0, "outcome": "met", "variant": "fp32", "latency_ms": 300.0, "standby": False},
        {"phase": "throttled", "t": 2.0, "outcome": "late", "variant": "fp32", "latency_ms": 2100.0},
        {"phase": "throttled", "t": 3.0, "outcome": "met", "variant": "int4", "latency_ms": 900.0, "standby": True},
        {"phase": "throttled", "t": 4.0, "outcome": "refused", "latency_ms": 1.0, "error": "DeadlineInfeasible: x"}])
    s = arm.summary()
    assert s["standby_served"] == 1 and s["met"] == 2 and s["met_rate"] == 0.5
    assert [(m["t"], m["outcome"], m["variant"]) for m in s["misses"]] == [(2.0, "late", "fp32"),
                                                                          (4.0, "refused", None)]
    assert s["misses"][1]["error"] == "DeadlineInfeasible: x"
