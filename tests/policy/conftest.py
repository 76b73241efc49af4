from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import make_snap

from agent.policy.synthetic import smollm2_rows
from agent.policy.table import VariantRow
from agent.sensors.snapshot import Snapshot


@pytest.fixture
def snap() -> Callable[..., Snapshot]:
    return make_snap


@pytest.fixture
def rows() -> list[VariantRow]:
    return smollm2_rows()


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(text: str, name: str = "p.toml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return p
    return write
