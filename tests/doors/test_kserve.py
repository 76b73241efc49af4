"""KServe v2 on agentd's HTTP listener, driven by Triton's real client (``tritonclient.http``) and raw HTTP."""

from __future__ import annotations

import json

import numpy as np
import pytest
from doors_helpers import MLP, alive, declared_huge, error_of, leave_mid_body, raw

th = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

pytestmark = pytest.mark.integration


def _client(url: str):  # type: ignore[no-untyped-def]
    return th.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)


def _in_process(zoo, variant: str, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(zoo / MLP / f"{variant}.onnx"), so, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(["y"], {"x": x})[0])


def test_tritonclient_sees_health_server_and_model_metadata_from_the_manifest(url):
    c = _client(url)
    assert c.is_server_live() and c.is_server_ready()
    assert c.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_versions"]
    meta = c.get_model_metadata(MLP)
    assert meta["versions"] == ["fp32", "int8"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    act = meta["parameters"]["agent_active_variant"]
    assert act in ("fp32", "int8") and meta["parameters"]["agent_device"] == "cpu"
    assert c.is_model_ready(MLP) and c.is_model_ready(MLP, act)
    assert not c.is_model_ready(MLP, "int8" if act == "fp32" else "fp32")   # loaded = the active variant
    assert not c.is_model_ready("nope")
    with pytest.raises(InferenceServerException, match="unknown model"):
        c.get_model_metadata("tiny")   # the causal LM is not a KServe model


@pytest.mark.parametrize("binary_in,binary_out,compression", [(True, True, None), (False, False, None),
                                                                (True, False, "gzip"), (False, True, "deflate")])
def test_tritonclient_infer_equals_the_variant_run_in_process(url, doors_zoo, binary_in, binary_out, compression):
    c = _client(url)
    x = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
    inp = th.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = th.InferRequestedOutput("y", binary_data=binary_out)
    r = c.infer(MLP, [inp], outputs=[out], request_id="req-1", request_compression_algorithm=compression)
    resp = r.get_response()
    variant = resp["model_version"]
    assert resp["parameters"]["agent_variant"] == variant and resp["parameters"]["agent_device"] == "cpu"
    assert resp["id"] == "req-1"
    assert ("binary_data_size" in resp["outputs"][0].get("parameters", {})) == binary_out
    y = r.as_numpy("y")
    assert y.dtype == np.float32 and y.shape == (5, 4)
    np.testing.assert_array_equal(y, _in_process(doors_zoo, variant, x))


def test_a_version_is_served_only_while_the_policy_has_it_active(url, doors_daemon, doors_zoo):
    c = _client(url)
    x = np.ones((2, 16), np.float32)
    inp = th.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    with doors_daemon.client() as ipc:
        ipc.pin(MLP, "int8")
        try:
            assert c.is_model_ready(MLP, "int8") and not c.is_model_ready(MLP, "fp32")
            r = c.infer(MLP, [inp], model_version="int8")
            assert r.get_response()["model_version"] == "int8"
            np.testing.assert_array_equal(r.as_numpy("y"), _in_process(doors_zoo, "int8", x))
            with pytest.raises(InferenceServerException, match="not at ready state") as e:
                c.infer(MLP, [inp], model_version="fp32")
            assert e.value.status() == "400"
            with pytest.raises(InferenceServerException, match="no version 'fp64'") as e:
                c.infer(MLP, [inp], model_version="fp64")
            assert e.value.status() == "404"
        finally:
            ipc.pin(MLP, "fp32")
            ipc.unpin(MLP)


def test_json_data_may_be_nested_lists_and_replies_name_variant_and_device(url):
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [[float(i) for i in range(16)]]}]}
    st, hdr, out = raw(url, "POST", f"/v2/models/{MLP}/infer", json.dumps(body).encode())
    assert st == 200, out
    d = json.loads(out)
    assert hdr["x-agent-variant"] == d["model_version"] and hdr["x-agent-device"] == "cpu"
    assert d["outputs"][0]["shape"] == [1, 4] and len(d["outputs"][0]["data"]) == 4


BAD = [
    (b"{not json", "not valid JSON", 400),
    (b"[1, 2]", "must be a JSON object", 400),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP64", "data": [0.0] * 16}]}).encode(),
     "expected dtype float32", 400),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 15], "datatype": "FP32", "data": [0.0] * 15}]}).encode(),
     "expected shape", 400),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 3}]}).encode(),
     "3 values given", 400),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "BYTES", "data": ["a"] * 16}]}).encode(),
     "not supported", 400),
    (json.dumps({"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [0.0]}]}).encode(),
     "unexpected input", 400),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": ["a"] * 16}]}).encode(),
     "not a list of FP32", 400),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                             "parameters": {"binary_data_size": 64}}]}).encode(), "binary data", 400),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}],
                 "outputs": [{"name": "nope"}]}).encode(), "unknown output", 400),
    (json.dumps({"inputs": [], "bogus": 1}).encode(), "unknown request field", 400),
]


@pytest.mark.parametrize("body,message,status", BAD)
def test_bad_infer_requests_get_kserve_errors_and_agentd_stays_up(url, doors_daemon, body, message, status):
    st, _, out = raw(url, "POST", f"/v2/models/{MLP}/infer", body)
    assert st == status and message in error_of(out)
    alive(doors_daemon, url)


def test_wrong_binary_header_and_routes_get_kserve_errors(url, doors_daemon):
    head = json.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 64}}]}).encode()
    blob = np.zeros(16, np.float32).tobytes()
    st, _, out = raw(url, "POST", f"/v2/models/{MLP}/infer", head + blob + b"xx",
                     {"Inference-Header-Content-Length": str(len(head))})
    assert st == 400 and "describe none" in error_of(out)
    st, _, out = raw(url, "POST", f"/v2/models/{MLP}/infer", head + blob,
                     {"Inference-Header-Content-Length": "99999"})
    assert st == 400 and "Inference-Header-Content-Length" in error_of(out)
    st, _, out = raw(url, "POST", f"/v2/models/{MLP}/infer", b"garbage", {"Content-Encoding": "gzip"})
    assert st == 400 and "corrupt" in error_of(out)
    st, _, out = raw(url, "POST", "/v2/models/nope/infer", b"{}")
    assert st == 404 and "unknown model" in error_of(out)
    st, _, out = raw(url, "GET", f"/v2/models/{MLP}/infer")
    assert st == 405 and error_of(out)
    st, _, out = raw(url, "GET", "/v2/nothing/here")
    assert st == 404 and error_of(out)
    alive(doors_daemon, url)


def test_a_1gb_declared_body_and_a_client_leaving_mid_body_are_refused_without_reading(url, doors_daemon):
    st, body = declared_huge(url, f"/v2/models/{MLP}/infer")
    assert st == 413 and "larger than" in error_of(body)
    for _ in range(5):
        leave_mid_body(url, f"/v2/models/{MLP}/infer")
    alive(doors_daemon, url)
    x = np.zeros((1, 16), np.float32)
    inp = th.InferInput("x", [1, 16], "FP32")
    inp.set_data_from_numpy(x)
    assert _client(url).infer(MLP, [inp]).as_numpy("y").shape == (1, 4)


def test_a_json_part_over_16_mib_is_refused_even_below_the_binary_limit(url, doors_daemon):
    body = b'{"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [' + b"0," * (9 << 20) + b"0]}]}"
    st, _, out = raw(url, "POST", f"/v2/models/{MLP}/infer", body)
    assert st == 413 and "binary data extension" in error_of(out)
    alive(doors_daemon, url)


def test_infers_through_the_door_during_swaps_never_fail_and_match_the_variant_they_name(url, doors_daemon, doors_zoo):
    import threading

    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    want = {v: _in_process(doors_zoo, v, x) for v in ("fp32", "int8")}
    seen: list[tuple[str, np.ndarray]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def client_loop() -> None:
        c = _client(url)
        inp = th.InferInput("x", [4, 16], "FP32")
        inp.set_data_from_numpy(x)
        try:
            while not stop.is_set():
                r = c.infer(MLP, [inp])
                seen.append((r.get_response()["model_version"], r.as_numpy("y")))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        with doors_daemon.client() as ipc:
            for v in ("int8", "fp32", "int8", "fp32"):
                ipc.pin(MLP, v)
            ipc.unpin(MLP)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:3]
    assert {v for v, _ in seen} == {"fp32", "int8"}
    for v, y in seen:
        np.testing.assert_array_equal(y, want[v])
