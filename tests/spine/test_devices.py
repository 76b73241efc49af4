import importlib.util

import numpy as np
import pytest

from agent.errors import NotFound
from agent.runtime import devices as D


def test_cpu_device_is_discovered_through_ep_devices():
    devs = D.discover()
    assert any(d.kind == "cpu" and d.provider == "CPUExecutionProvider" for d in devs)


@pytest.mark.parametrize("spec", ["gpu", "npu", "NoSuchExecutionProvider", "CPUExecutionProvider:gpu"])
def test_selecting_an_absent_device_names_what_exists(spec):
    with pytest.raises(NotFound, match=r"available: .*cpu:CPUExecutionProvider"):
        D.select(spec, D.discover())


def test_plain_cpu_means_onnx_runtimes_own_cpu_ep_even_with_plugins():
    devs = [D.Device("cpu", "OpenVINOExecutionProvider", "Intel", 0, 0),
            D.Device("cpu", "CPUExecutionProvider", "Intel", 0, 1)]
    assert D.select("cpu", devs).provider == "CPUExecutionProvider"
    assert D.select("OpenVINOExecutionProvider", devs).index == 0


def _openvino_devices():
    if importlib.util.find_spec("onnxruntime_ep_openvino") is None:
        return None
    return [d for d in D.discover() if d.provider == "OpenVINOExecutionProvider"]


def test_variant_runs_on_the_openvino_plugin_ep_and_matches_cpu(tensor_zoo):
    devs = _openvino_devices()
    if devs is None:
        pytest.skip("onnxruntime-ep-openvino is not installed")
    if not devs:
        pytest.skip("the OpenVINO plugin EP registered but enumerates no device on this CPU "
                    f"({D.discover()[0].vendor}); it supports Intel hardware")
    from agent.runtime.session import open_session

    x = {"x": np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)}
    cpu, _ = open_session(tensor_zoo / "mlp" / "fp32.onnx", "cpu")
    ov, info = open_session(tensor_zoo / "mlp" / "fp32.onnx", "OpenVINOExecutionProvider")
    assert info["assignment"].get("OpenVINOExecutionProvider", 0) > 0
    np.testing.assert_allclose(ov.run(None, x)[0], cpu.run(None, x)[0], rtol=1e-4, atol=1e-4)
