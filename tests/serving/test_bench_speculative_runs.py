"""benchmarks/bench_speculative.py runs end to end on the tiny builder graphs (fp32 served with its int4
draft through agentd, against the same variant without it) and reports every figure, the outputs identical."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from tests.serving.test_speculative_agentd import MODEL, make_builder_zoo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_bench_speculative_reports_speedup_identity_and_acceptance(tmp_path):
    make_builder_zoo(tmp_path / "zoo", {"k": 3, "drafts": {"fp32": "int4"}})
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_speculative
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = io.StringIO()
    with redirect_stdout(out):
        assert bench_speculative.main(["--zoo", str(tmp_path / "zoo"), "--model", MODEL, "--prompts", "3",
                                       "--tokens", "8", "--threads", "1", "--json"]) == 0
    r = json.loads(out.getvalue())
    assert (r["variant"], r["draft"], r["k"], r["share_kv"], r["prompts"]) == ("fp32", "int4", 3, True, 3)
    assert r["identical"] == "3/3"
    assert r["plain_tok_s"] > 0 and r["drafted_tok_s"] > 0 and r["speedup_q1"] <= r["speedup"] <= r["speedup_q3"]
    sp = r["speculative"]
    assert sp["share_kv"] is True and sp["rounds"] > 0 and 0 <= sp["acceptance"] <= 1
