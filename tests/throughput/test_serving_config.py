"""A malformed ``[serving]`` table is a clear error naming file:line: key; the daemon skips only that model."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ManifestError
from agent.zoo.manifest import MANIFEST, load_manifest, load_zoo


def _serving(zoo: Path, table: str, fix_dim: bool = False) -> Path:
    p = zoo / "mlp" / MANIFEST
    text = p.read_text()
    if fix_dim:
        text = text.replace('"batch",', "1,")
    p.write_text(text.replace("[[variants]]", f"[serving]\n{table}\n\n[[variants]]", 1))
    return p


@pytest.mark.parametrize(("table", "where", "why"), [
    ("max_batch = 0\nmax_queue_delay_ms = 1", "serving.max_batch", "expected a number in 1..4096, got 0"),
    ("max_batch = 8", "serving.max_batch", "batching needs max_queue_delay_ms"),
    ("max_batch = 8\nmax_queue_delay_ms = -1", "serving.max_queue_delay_ms", "expected a number in 0..1000"),
    ("max_batch = 2.5\nmax_queue_delay_ms = 1", "serving.max_batch", "expected an integer, got float"),
    ("max_batch = 8\nmax_queue_delay_ms = 1\nmax_wait = 3", "serving.max_wait", "unknown key"),
    ("max_queue_delay_ms = 4", "serving.max_queue_delay_ms", "has no effect unless max_batch > 1"),
    ("cache_bytes = \"lots\"", "serving.cache_bytes", "expected an integer, got string"),
])
def test_malformed_serving_options_name_the_line_and_key(tensor_zoo, table, where, why):
    p = _serving(tensor_zoo, table)
    key = where.split(".")[-1]
    line = next(i for i, s in enumerate(p.read_text().splitlines(), 1) if s.startswith(key))
    with pytest.raises(ManifestError) as e:
        load_manifest(tensor_zoo / "mlp")
    assert f"{p}:{line}: {where}: " in str(e.value) and why in str(e.value)


def test_batching_a_model_without_a_free_batch_dimension_is_refused(tensor_zoo):
    _serving(tensor_zoo, "max_batch = 8\nmax_queue_delay_ms = 1", fix_dim=True)
    with pytest.raises(ManifestError, match="batching needs a free batch dimension, but tensor 'x' has first "
                                            "dimension 1"):
        load_manifest(tensor_zoo / "mlp", check_files=False)
    models, errors = load_zoo(tensor_zoo)
    assert "mlp" in errors and "mlp" not in models


def test_serving_options_round_trip_through_the_manifest_writer(tensor_zoo):
    from agent.testing import set_serving

    m = set_serving(tensor_zoo / "mlp", max_batch=16, max_queue_delay_ms=2.5, cache_bytes=1 << 20)
    assert (m.serving.max_batch, m.serving.max_queue_delay_ms, m.serving.cache_bytes) == (16, 2.5, 1 << 20)
    assert m.serving.batching
    assert "[serving]" in (tensor_zoo / "mlp" / MANIFEST).read_text()
