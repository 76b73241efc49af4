"""Errors that say what happened: an execution-provider failure inside ``run`` is ExecutionFailed (a
retryable server error, HTTP 500), a bad request is InvalidParams (HTTP 400), and the daemon keeps serving.

The model is real ONNX whose run fails on valid inputs: ``y = Reshape(x, [-1, 4 + int(max(x) / 1000)])``
is fine for ordinary values (warm-up passes) and impossible for ``x = 3000`` (4 elements into rows of 7),
so ORT's Reshape kernel fails at run time, the way an EP failure does. The manifest declares
``x: [batch, n]`` while the graph wants ``[batch, 4]``: a ``[1, 5]`` input passes the daemon's signature
check and is refused by ORT itself (its InvalidArgument), still a bad request."""

from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.errors import AgentError, ExecutionFailed, InvalidParams, NotFound, PermissionDenied, exit_code
from tests.conftest import Daemon, start_daemon

HAVE_HTTP = all(importlib.util.find_spec(m) is not None for m in ("starlette", "uvicorn"))


def make_reshaper(folder: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from agent.zoo.manifest import Manifest, TensorSpec, Variant, save_manifest, sha256_file

    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Div", ["m", "k"], ["d"]),
        helper.make_node("Add", ["d", "four"], ["e"]),
        helper.make_node("Cast", ["e"], ["c"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["c", "one"], ["c1"]),
        helper.make_node("Concat", ["neg", "c1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(v, dt), n) for v, dt, n in
             ((1000, np.float32, "k"), (4, np.float32, "four"), ([1], np.int64, "one"), ([-1], np.int64, "neg"))]
    g = helper.make_graph(nodes, "reshaper", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True)
    path = folder / "fp32.onnx"
    onnx.save(model, str(path))
    v = Variant(id="fp32", file=path.name, precision="fp32", derived_from="source", method="onnx.helper",
                sha256=sha256_file(path), size_bytes=path.stat().st_size)
    save_manifest(Manifest(name="reshaper", kind="tensor", reference="fp32",
                           inputs=(TensorSpec("x", "float32", ("batch", "n")),),
                           outputs=(TensorSpec("y", "float32", ("rows", "cols")),), variants=(v,), folder=folder))


@pytest.fixture(scope="module")
def reshaper_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("reshaper")
    make_reshaper(tmp / "zoo" / "reshaper")
    d = start_daemon(tmp / "zoo", tmp, "--threads", "1", *(("--http", "127.0.0.1:0") if HAVE_HTTP else ()))
    yield d
    d.stop()


def test_a_node_failing_at_run_time_is_a_retryable_execution_failure_not_a_bad_request(reshaper_daemon):
    with reshaper_daemon.client() as c:
        assert c.infer("reshaper", {"x": np.ones((2, 4), np.float32)}).outputs["y"].shape == (2, 4)
        with pytest.raises(ExecutionFailed) as ei:
            c.infer("reshaper", {"x": np.full((1, 4), 3000, np.float32)})
        assert not isinstance(ei.value, InvalidParams)
        assert ei.value.retryable and ei.value.data["retryable"] is True
        assert "Reshape" in ei.value.message and "execution provider" in ei.value.message
        # the worker survived and the daemon keeps serving on the same connection
        assert c.infer("reshaper", {"x": np.ones((1, 4), np.float32)}).outputs["y"].shape == (1, 4)
        assert c.status()["models"]["reshaper"]["active"]


def test_inputs_ort_refuses_are_still_invalid_params(reshaper_daemon):
    with reshaper_daemon.client() as c:
        with pytest.raises(InvalidParams) as ei:   # passes the manifest's [batch, n], not the graph's [batch, 4]
            c.infer("reshaper", {"x": np.ones((1, 5), np.float32)})
        assert not ei.value.retryable and ei.value.data["retryable"] is False
        with pytest.raises(InvalidParams):          # the daemon's own check
            c.infer("reshaper", {"x": np.ones((1, 4), np.float64)})


@pytest.mark.skipif(not HAVE_HTTP, reason="the HTTP doors need starlette and uvicorn (the 'llm' extra)")
def test_the_http_door_answers_an_execution_failure_with_500_and_bad_input_with_400(reshaper_daemon):
    with reshaper_daemon.client() as c:
        url = c.status()["daemon"]["http"]

    def post(x: list[float], shape: list[int]) -> tuple[int, dict]:  # type: ignore[type-arg]
        body = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": x}]}).encode()
        req = urllib.request.Request(url + "/v2/models/reshaper/infer", data=body, method="POST",
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert post([1.0] * 4, [1, 4])[0] == 200
    st, body = post([3000.0] * 4, [1, 4])
    assert st == 500 and "Reshape" in body["error"], body
    assert post([1.0] * 5, [1, 5])[0] == 400


def test_one_http_status_map_for_every_door():
    from agent.http.common import status_of
    from agent.http.openai_api import from_agent_error

    cases = {PermissionDenied("no"): 403, ExecutionFailed("ep"): 500, InvalidParams("x: bad"): 400,
             NotFound("m"): 404, AgentError("?"): 500}
    for e, want in cases.items():
        assert status_of(e) == want, e
        assert from_agent_error(e).status == want, e
    assert from_agent_error(PermissionDenied("no")).type == "permission_error"


def test_one_exit_code_map_for_every_cli():
    import agent.cli

    assert agent.cli.exit_status is exit_code
    assert exit_code(InvalidParams("x")) == 2 and exit_code(ExecutionFailed("ep")) == 1
