"""Acceptance of the spine: zero failed requests across 50+ swaps, outputs match the named variant."""

import json
import os
import signal
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from agent.errors import LoadError

pytestmark = pytest.mark.integration


def _reference_outputs(zoo, xs):
    out = {}
    for vid in ("fp32", "int8"):
        s = ort.InferenceSession(str(zoo / "mlp" / f"{vid}.onnx"), providers=["CPUExecutionProvider"])
        out[vid] = [s.run(None, {"x": x})[0] for x in xs]
    return out


def test_fifty_pins_back_and_forth_lose_no_request_and_outputs_match_named_variant(daemon):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((4, 256)).astype(np.float32) for _ in range(8)]
    ref = _reference_outputs(daemon.zoo, xs)
    # the check below must be able to tell the variants apart
    assert np.abs(ref["fp32"][0] - ref["int8"][0]).max() > 1e-3

    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, int] = {"fp32": 0, "int8": 0}
    mismatches: list[str] = []

    def load() -> None:
        with daemon.client() as c:
            i = 0
            while not stop.is_set():
                k = i % len(xs)
                try:
                    r = c.infer("mlp", {"x": xs[k]})
                except Exception as e:  # noqa: BLE001 - any failure counts
                    failures.append(repr(e))
                    continue
                seen[r.variant] += 1
                if not np.allclose(r.outputs["y"], ref[r.variant][k], rtol=1e-5, atol=1e-5):
                    mismatches.append(f"request {i} on {r.variant}")
                i += 1

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with daemon.client() as admin:
            for n in range(52):
                res = admin.pin("mlp", "int8" if n % 2 == 0 else "fp32")
                assert res["changed"] is True
                time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert mismatches == []
    assert seen["fp32"] > 20 and seen["int8"] > 20
    with daemon.client() as c:
        st = c.status()["models"]["mlp"]
    assert st["errors"] == 0
    assert st["active"]["variant"] == "fp32"
    assert daemon.stop() == 0


def test_worker_killed_mid_request_is_retried_and_restarted(daemon):
    with daemon.client() as c:
        before = c.status()["models"]["mlp"]["active"]["pid"]
    # a large batch keeps the worker busy long enough to be killed mid-request
    x = np.ones((60000, 256), dtype=np.float32)
    result = {}

    def call():
        with daemon.client() as c:
            result["r"] = c.infer("mlp", {"x": x})

    t = threading.Thread(target=call)
    t.start()
    with daemon.client() as c:   # kill only once the request is inside the worker
        deadline = time.monotonic() + 30
        while c.status()["models"]["mlp"]["active"]["inflight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.002)
    os.kill(before, signal.SIGKILL)
    t.join(60)
    r = result["r"]
    assert r.outputs["y"].shape == (60000, 64)
    assert r.retried is True
    with daemon.client() as c:
        st = c.status()["models"]["mlp"]
    assert st["active"]["pid"] != before and st["active"]["alive"]
    # the death is on record: one event naming the killed pid, then the restart (telemetry and the log)
    deadline = time.monotonic() + 60
    while True:
        with daemon.client() as c:
            events = c.history("1h", ["events"])["events"]
        died = [e for e in events if e["kind"] == "worker_died" and _detail(e).get("pid") == before]
        if died and any(e["kind"] == "worker_restarted" for e in events):
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.1)
    assert _detail(died[0])["model"] == "mlp" and not _detail(died[0])["hung"]
    assert any("worker_died" in line and str(before) in line for line in daemon.log_text().splitlines())


def _detail(event: dict) -> dict:  # type: ignore[type-arg]
    d = event.get("detail")
    return json.loads(d) if isinstance(d, str) else (d or {})


def test_corrupt_variant_is_refused_and_the_old_one_keeps_serving(tensor_zoo, tmp_path):
    from tests.conftest import start_daemon

    p = tensor_zoo / "mlp" / "int8.onnx"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])   # truncated: sha256 no longer matches
    d = start_daemon(tensor_zoo, tmp_path)
    try:
        with d.client() as c:
            with pytest.raises(LoadError, match="corrupt"):
                c.pin("mlp", "int8")
            r = c.infer("mlp", {"x": np.ones((1, 256), np.float32)})
            assert r.variant == "fp32"
            st = c.status()["models"]["mlp"]
            assert st["variants"]["int8"]["status"] == "failed"
            assert "sha256" in st["variants"]["int8"]["reason"]
    finally:
        assert d.stop() == 0


def test_garbage_variant_file_without_checksum_fails_to_load_cleanly(tensor_zoo, tmp_path):
    from tests.conftest import start_daemon

    (tensor_zoo / "mlp" / "int8.onnx").write_bytes(b"this is not an onnx model" * 100)
    m = tensor_zoo / "mlp" / "manifest.toml"
    lines = [ln for ln in m.read_text().splitlines() if not ln.startswith("sha256")]
    m.write_text("\n".join(lines) + "\n")
    d = start_daemon(tensor_zoo, tmp_path)
    try:
        with d.client() as c:
            with pytest.raises(LoadError, match=r"cannot load int8\.onnx"):
                c.pin("mlp", "int8")
            assert c.infer("mlp", {"x": np.ones((1, 256), np.float32)}).variant == "fp32"
    finally:
        d.stop()
