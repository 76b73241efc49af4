"""One contract over every worker backend (agent/runtime/backends): onnx on a real MLP, llm on the tiny
random llama, fake. Each is driven in process exactly as the worker's frame loop drives it, with the
load params the runtime really sends (``Runtime._load_params``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from agent.errors import InvalidParams, LoadError, WorkerError
from agent.ipc import protocol as P
from agent.runtime.backends import Backend, Call, create
from agent.runtime.manager import Runtime
from agent.zoo.manifest import Manifest, load_zoo


class Frames:
    """A Channel that keeps what the backend sends outside its replies (events, late replies)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.cv = threading.Condition()

    def send(self, header: dict[str, Any], bufs: list[Any] | None = None) -> None:
        with self.cv:
            self.sent.append(header)
            self.cv.notify_all()

    def reply(self, rid: Any, timeout: float = 60.0) -> dict[str, Any]:
        with self.cv:
            assert self.cv.wait_for(lambda: any(h.get("id") == rid for h in self.sent), timeout)
            return next(h for h in self.sent if h.get("id") == rid)


@dataclass
class Case:
    backend: str
    manifest: Manifest
    variant: str
    good: Call                               # a request and the check of its answer
    check: Callable[[Any, Frames], None]
    bad: Call                                # a request the backend must refuse with InvalidParams


def _tensor_call(x: np.ndarray, rid: int = 1) -> Call:
    descs, bufs = P.tensor_descs({"x": x})
    return Call(rid, "run", {"inputs": descs}, memoryview(b"".join(bytes(b) for b in bufs)))


def _outputs(reply: Any) -> dict[str, np.ndarray]:
    result, bufs = reply
    return P.tensors_from(result["outputs"], memoryview(b"".join(bytes(b) for b in bufs)))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Manifest]:
    from agent.testing import make_tensor_zoo
    from tests.serving.tinyzoo import make_tiny_llm_zoo

    root = tmp_path_factory.mktemp("contract-zoo")
    make_tensor_zoo(root, "mlp", in_features=16, hidden=32, out_features=4)
    make_tiny_llm_zoo(root)
    models, errors = load_zoo(root)
    assert not errors
    return models


def _onnx_case(zoo: dict[str, Manifest]) -> Case:
    import onnxruntime as ort

    m = zoo["mlp"]
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    want = ort.InferenceSession(str(m.path_of(m.variant("fp32"))), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]

    def check(reply: Any, frames: Frames) -> None:
        assert np.allclose(_outputs(reply)["y"], want, rtol=1e-5, atol=1e-6)
    return Case("onnx", m, "fp32", _tensor_call(x), check, _tensor_call(np.ones((1, 5), np.float32), 2))


def _fake_case(zoo: dict[str, Manifest]) -> Case:
    m = zoo["mlp"]
    x = np.arange(32, dtype=np.float32).reshape(2, 16)

    def check(reply: Any, frames: Frames) -> None:   # the fake's rule: every output = row sum of x
        y = _outputs(reply)["y"]
        assert y.shape == (2, 4) and np.array_equal(y, np.repeat(x.sum(axis=1, keepdims=True), 4, axis=1))
    return Case("fake", m, "fp32", _tensor_call(x), check, _tensor_call(np.ones((1, 5), np.float32), 2))


def _llm_case(zoo: dict[str, Manifest]) -> Case:
    from tests.serving.tinyzoo import engine_for, greedy_text

    m = zoo["tiny"]
    want, _ = greedy_text(engine_for(m.folder, "fp32", threads=1), "The quick brown fox", 8)

    def check(reply: Any, frames: Frames) -> None:
        assert reply is None   # streamed: the tokens and the reply come through the channel
        final = frames.reply(1)
        events = [h["params"]["text"] for h in frames.sent if h.get("method") == "event"]
        assert final["result"]["text"] == want == "".join(events) + final["result"]["tail"]
        assert final["result"]["usage"]["completion_tokens"] == 8
    good = Call(1, "generate", {"prompt": "The quick brown fox", "max_tokens": 8}, memoryview(b""))
    return Case("llm", m, "fp32", good, check, Call(2, "generate", {"prompt": 5}, memoryview(b"")))


CASES = {"onnx": _onnx_case, "llm": _llm_case, "fake": _fake_case}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, zoo: dict[str, Manifest]) -> Case:
    return CASES[request.param](zoo)


@pytest.fixture
def loaded(case: Case) -> Iterator[tuple[Backend, dict[str, Any], Frames]]:
    m = case.manifest
    params = Runtime({m.name: m}, warmup_runs=1, threads=1)._load_params(m, m.variant(case.variant), "cpu")
    b = create(case.backend, m.kind)
    frames = Frames()
    info = b.load(params, frames)
    yield b, info, frames
    b.close()


def test_load_reports_the_device_and_providers_it_got(case: Case, loaded: Any) -> None:
    b, info, _ = loaded
    assert b.name == case.backend
    dev = info["device"]
    assert dev["kind"] == "cpu" and dev["provider"] in info["providers"]
    assert info["assignment"].get(dev["provider"], 0) > 0   # the nodes really ran there
    assert info["load_ms"] >= 0


def test_run_returns_the_right_outputs(case: Case, loaded: Any) -> None:
    b, _, frames = loaded
    case.check(b.run(case.good), frames)


def test_bad_input_is_invalid_params_and_the_backend_keeps_serving(case: Case, loaded: Any) -> None:
    b, _, frames = loaded
    with pytest.raises(InvalidParams):
        b.run(case.bad)
    case.check(b.run(case.good), frames)


def test_an_unknown_method_is_a_worker_error(case: Case, loaded: Any) -> None:
    with pytest.raises(WorkerError):
        loaded[0].run(Call(9, "no-such-method", {}, memoryview(b"")))


def test_a_second_load_is_refused(case: Case, loaded: Any) -> None:
    m = case.manifest
    with pytest.raises(LoadError):
        loaded[0].load(Runtime({m.name: m})._load_params(m, m.variant(case.variant), "cpu"), loaded[2])


def test_close_is_idempotent_and_run_after_close_is_a_worker_error(case: Case, loaded: Any) -> None:
    b = loaded[0]
    b.close()
    b.close()
    with pytest.raises(WorkerError):
        b.run(case.good)


def test_run_before_load_is_a_worker_error(case: Case) -> None:
    with pytest.raises(WorkerError):
        create(case.backend, case.manifest.kind).run(case.good)
