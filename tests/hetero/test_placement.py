"""Honest placement: only discovered devices are accepted; replies name the providers that ran the nodes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.errors import LoadError, NotFound
from agent.runtime import devices as D
from agent.runtime.manager import Runtime
from agent.runtime.session import open_session
from agent.zoo.manifest import load_zoo


def _ran_on(path: Path) -> list[str]:
    """The providers ONNX Runtime assigned nodes to, read from a session of our own."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sorted({sub.ep_name for sub in s.get_provider_graph_assignment_info() if sub.get_nodes()})


def test_gpu_is_chosen_by_preference_when_several_eps_list_one():
    devs = [D.Device("gpu", "WebGpuExecutionProvider", "NVIDIA", 0, 0),
            D.Device("gpu", "CUDAExecutionProvider", "NVIDIA", 0, 1),
            D.Device("cpu", "CPUExecutionProvider", "AMD", 0, 2)]
    assert D.select("gpu", devs).provider == "CUDAExecutionProvider"
    assert D.select("WebGpuExecutionProvider", devs).index == 0
    with pytest.raises(NotFound, match="available: cpu:CPUExecutionProvider, gpu:CUDAExecutionProvider, "
                                       "gpu:WebGpuExecutionProvider"):
        D.select("npu", devs)


@pytest.mark.parametrize("natural,spec,ok", [
    ("cpu", "", "cpu"), ("cpu", "cpu", "cpu"), ("remote", "", "remote"), ("split", "split", "split"),
    ("cpu", "remote", None), ("remote", "cpu", None), ("split", "gpu", None), ("cpu", "foo", None),
])
def test_placement_of_plain_remote_and_split_variants(natural, spec, ok):
    devs = [D.Device("cpu", "CPUExecutionProvider", "AMD", 0, 0)]
    if ok is None:
        with pytest.raises(NotFound):
            D.check_placement(spec, natural, devs)
    else:
        assert D.check_placement(spec, natural, devs) == ok


@pytest.mark.parametrize("device", ["gpu", "npu", "foo", "CUDAExecutionProvider", "remote", "split"])
def test_swap_to_a_device_that_was_not_discovered_is_refused_with_the_list_and_changes_nothing(tensor_zoo, device):
    models, _ = load_zoo(tensor_zoo)

    async def go() -> None:
        rt = Runtime(models, spare_workers=0)
        try:
            await rt.swap("mlp", "fp32", "cpu")
            before = rt.slots["mlp"].active
            with pytest.raises(NotFound, match="available: cpu:CPUExecutionProvider") as ei:
                await rt.swap("mlp", "int8", device)
            assert rt.slots["mlp"].active is before and before is not None and before.alive
            assert rt.slots["mlp"].state("int8").status == "unloaded"
            if device not in ("remote", "split"):
                assert ei.value.data["available"][0]["provider"] == "CPUExecutionProvider"
        finally:
            await rt.close()

    asyncio.run(go())


def test_reported_providers_equal_the_providers_that_ran_the_nodes(tensor_zoo):
    models, _ = load_zoo(tensor_zoo)
    x = np.ones((2, 256), np.float32)

    async def go() -> None:
        rt = Runtime(models, spare_workers=0)
        try:
            for vid in ("fp32", "int8"):
                res = await rt.swap("mlp", vid)
                from agent.ipc import protocol as P

                descs, bufs = P.tensor_descs({"x": x})
                r = await rt.infer("mlp", descs, memoryview(b"".join(bytes(b) for b in bufs)))
                truth = _ran_on(tensor_zoo / "mlp" / f"{vid}.onnx")
                assert r.providers == truth == ["CPUExecutionProvider"]
                assert res["providers"] == truth
                st = rt.status()["mlp"]["active"]
                assert st["providers"] == truth
                assert sorted(ep for ep, n in st["assignment"].items() if n) == truth
                assert r.device == "cpu"
        finally:
            await rt.close()

    asyncio.run(go())


def test_open_session_refuses_an_absent_device_naming_what_exists(tensor_zoo):
    with pytest.raises(LoadError, match="no device matches 'gpu'; available: cpu:CPUExecutionProvider"):
        open_session(tensor_zoo / "mlp" / "fp32.onnx", "gpu")


def test_llm_backend_device_selection_refuses_an_absent_device_instead_of_running_on_cpu():
    from agent.runtime.session import select_device  # the LLM backend opens its session through it

    with pytest.raises(LoadError, match="no device matches 'gpu'; available: cpu:CPUExecutionProvider"):
        select_device("gpu")
    dev, ep = select_device("cpu")
    assert dev.provider == "CPUExecutionProvider" and ep.ep_name == "CPUExecutionProvider"


@pytest.mark.integration
def test_agentctl_pin_to_gpu_or_foo_is_refused_and_status_still_reports_the_cpu_provider(daemon):
    env_py = [sys.executable, "-m", "agent.cli", "--socket", str(daemon.socket)]
    for dev in ("gpu", "foo", "npu"):
        r = subprocess.run([*env_py, "pin", "mlp", "int8", "--device", dev], capture_output=True, text=True,
                           timeout=60, check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"no device matches {dev!r}; available: cpu:CPUExecutionProvider" in r.stderr
    with daemon.client() as c:
        st = c.status()["models"]["mlp"]
        assert st["pinned"] is None
        assert st["active"]["device"] == "cpu" and st["active"]["providers"] == ["CPUExecutionProvider"]
        r = c.infer("mlp", {"x": np.ones((1, 256), np.float32)})
        assert r.device == "cpu" and r.extra["providers"] == ["CPUExecutionProvider"]
        ok = c.pin("mlp", "int8")          # no --device: the variant's own placement (cpu)
        assert ok["device"] == "cpu" and ok["providers"] == ["CPUExecutionProvider"]
