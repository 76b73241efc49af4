"""agentd shows an ``unfit`` variant in ``agentctl status`` / ``models``; an admin may still pin it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from tinyzoo import MODEL

pytestmark = pytest.mark.integration

REASON = "agreement 0.3571 < floor 0.9"


def test_status_and_models_show_the_unfit_reason_and_a_pin_still_serves_it(llm_zoo: Path, tmp_path: Path):
    from agent.zoo.manifest import load_manifest, save_manifest
    from tests.conftest import start_daemon

    zoo = tmp_path / "zoo"
    shutil.copytree(llm_zoo / MODEL, zoo / MODEL)
    m = load_manifest(zoo / MODEL)
    save_manifest(replace(m, variants=tuple(replace(v, unfit=REASON) if v.id == "int8" else v for v in m.variants)))
    d = start_daemon(zoo, tmp_path, "--threads", "1")
    try:
        def agentctl(*args: str) -> str:
            r = subprocess.run([sys.executable, "-m", "agent.cli", "--socket", str(d.socket), *args],
                               capture_output=True, text=True, timeout=120, check=False,
                               env={**os.environ, "PYTHONIOENCODING": "utf-8"})
            assert r.returncode == 0, r.stderr
            return r.stdout

        status = agentctl("status")
        line = next(ln for ln in status.splitlines() if ln.strip().startswith("int8 "))
        assert f"UNFIT: {REASON}" in line
        assert "UNFIT" not in next(ln for ln in status.splitlines() if ln.strip().startswith("fp32 "))
        assert f"UNFIT: {REASON}" in agentctl("models")
        agentctl("pin", MODEL, "int8")
        assert agentctl("generate", MODEL, "hello", "--max-tokens", "2", "--raw", "-q").strip()
        assert "active: int8 on cpu" in agentctl("status")
    finally:
        d.stop()
