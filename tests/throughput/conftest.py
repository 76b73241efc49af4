"""Fixtures for the serving-throughput tests: the shared MLP zoo with batching or the response cache."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest


def _zoo(src: Path, dst: Path, **serving: Any) -> Path:
    from agent.testing import set_serving

    shutil.copytree(src, dst)
    set_serving(dst / "mlp", **serving)
    return dst


@pytest.fixture
def batch_zoo(tensor_zoo_src: Path, tmp_path: Path) -> Path:
    return _zoo(tensor_zoo_src, tmp_path / "zoo", max_batch=8, max_queue_delay_ms=5.0)


@pytest.fixture
def cache_zoo(tensor_zoo_src: Path, tmp_path: Path) -> Path:
    return _zoo(tensor_zoo_src, tmp_path / "zoo", cache_bytes=4096)
