"""Fixtures for heterogeneous placement: a real KServe v2 server on loopback (see kserve_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hetero.kserve_helpers import KServe, start_kserve


@pytest.fixture
def kserve(tensor_zoo: Path, tmp_path: Path) -> Iterator[KServe]:
    """A KServe ModelServer on loopback serving the test zoo's fp32 mlp as model ``mlp``."""
    ks = start_kserve({"mlp": tensor_zoo / "mlp" / "fp32.onnx"}, tmp_path / "kserve.log")
    yield ks
    ks.kill()
