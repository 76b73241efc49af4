from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="the zoo builders need the 'build' extra (onnx)")

from zoo_helpers import make_mlp


@pytest.fixture(scope="session")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mlp(tmp_path_factory.mktemp("mlp") / "mlp.onnx")


@pytest.fixture
def zoo(tmp_path: Path) -> Path:
    return tmp_path / "zoo"
