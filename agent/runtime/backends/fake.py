"""The fake backend: a deterministic stand-in for a model, for tests of the runtime (swap, drain,
restart, retry, hangs) that need a real worker process but not a real model.

It answers the same wire methods as the real backends. ``run``: every output the manifest's signature
names is ``scale × (row sum of the first input)``, broadcast to the output's shape (symbolic dims are 1),
with ``scale`` per variant (default 1.0), so a test can tell which variant served a request.
``generate``: ``max_tokens`` tokens ``"t0 "``, ``"t1 "``, ... streamed as events, then the reply.
``load`` reports ``device`` ``cpu:FakeExecutionProvider`` and that provider.

Settings (:class:`FakeSpec`, JSON on the worker's command line) make it slow or fail::

    {"load_s": 0.05, "run_s": 0.01, "fail_load": ["int8"], "scale": {"int8": 2.0},
     "faults": [{"mode": "crash", "at": 1, "variant": "fp32", "once": "/tmp/x/crashed"}]}

A fault fires on the ``at``-th ``run`` or ``generate`` of a worker holding ``variant`` (any when
unset); with ``once`` (a file path) only in the first worker that creates that file, so a request
retried on a restarted worker succeeds. Modes: ``crash`` (SIGKILL mid-request), ``hang`` (blocks, the
process keeps its heartbeat: a deadline finds it), ``stop`` (SIGSTOP: the heartbeat stops too),
``raise`` (ExecutionFailed, a retryable EP failure). Never imports onnxruntime.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.errors import ExecutionFailed, InvalidParams, LoadError, WorkerError
from agent.ipc import protocol as P
from agent.runtime.backends import Call, Channel, Reply

MODES = ("crash", "hang", "stop", "raise")
PROVIDER = "FakeExecutionProvider"


@dataclass(frozen=True)
class Fault:
    mode: str
    at: int = 1
    variant: str | None = None
    once: str | None = None

    def fires(self, variant: str | None, n: int) -> bool:
        if n != self.at or (self.variant is not None and self.variant != variant):
            return False
        if self.once is None:
            return True
        try:   # the first worker to create the file takes the fault; the others run normally
            os.close(os.open(self.once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return False
        return True


@dataclass(frozen=True)
class FakeSpec:
    load_s: float = 0.0
    run_s: float = 0.0
    fail_load: tuple[str, ...] = ()
    scale: Mapping[str, float] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FakeSpec:
        unknown = set(d) - {"load_s", "run_s", "fail_load", "scale", "faults"}
        if unknown:
            raise LoadError(f"fake backend: unknown settings {sorted(unknown)}")
        faults = []
        for f in d.get("faults", ()):
            extra = set(f) - {"mode", "at", "variant", "once"}
            if extra or f.get("mode") not in MODES:
                raise LoadError(f"fake backend: a fault is {{mode: {'|'.join(MODES)}, at, variant, once}}, got {f}")
            faults.append(Fault(str(f["mode"]), int(f.get("at", 1)), f.get("variant"), f.get("once")))
        return cls(float(d.get("load_s", 0.0)), float(d.get("run_s", 0.0)), tuple(d.get("fail_load", ())),
                   {str(k): float(v) for k, v in dict(d.get("scale", {})).items()}, tuple(faults))

    def to_dict(self) -> dict[str, Any]:
        return {"load_s": self.load_s, "run_s": self.run_s, "fail_load": list(self.fail_load),
                "scale": dict(self.scale), "faults": [vars(f) for f in self.faults]}


class FakeBackend:
    name = "fake"

    def __init__(self, spec: FakeSpec | None = None) -> None:
        self.spec = spec or FakeSpec()
        self.variant: str | None = None
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.channel: Channel | None = None
        self.loaded = False
        self.closed = False
        self.calls = 0
        self._release = threading.Event()   # set by close(): a hung call returns

    def load(self, params: Mapping[str, Any], channel: Channel) -> dict[str, Any]:
        if self.loaded or self.closed:
            raise LoadError("this worker already held a variant")
        t0 = time.perf_counter()
        variant = params.get("variant")
        self.variant = str(variant) if variant is not None else None
        time.sleep(self.spec.load_s)
        if self.variant in self.spec.fail_load or "*" in self.spec.fail_load:
            raise LoadError(f"fake backend: load of {self.variant} fails (fail_load)")
        self.inputs = list((params.get("signature") or {}).get("inputs") or [])
        self.outputs = list((params.get("signature") or {}).get("outputs") or [])
        self.channel, self.loaded = channel, True
        dev = {"kind": "cpu", "provider": PROVIDER, "vendor": "", "device_id": 0, "label": f"cpu:{PROVIDER}"}
        return {"device": dev, "providers": [PROVIDER], "assignment": {PROVIDER: 1},
                "load_ms": (time.perf_counter() - t0) * 1e3, "warmup_ms": 0.0, "batch_invariant": True,
                **(params.get("signature") or {})}

    def run(self, call: Call) -> Reply | None:
        if not self.loaded or self.closed:
            raise WorkerError("backend is closed" if self.closed else "no variant loaded")
        if call.method not in ("run", "generate"):
            if call.method == "cancel":
                return {"cancelled": False}, []
            raise WorkerError(f"the fake backend has no method {call.method!r}")
        self.calls += 1
        c0 = time.process_time()
        self._fault()
        time.sleep(self.spec.run_s)
        if call.method == "generate":
            self._generate(call)
            return None
        feed = P.tensors_from(call.params.get("inputs"), call.payload)
        self._check(feed)
        x = next(iter(feed.values()))
        scale = self.spec.scale.get(self.variant or "", 1.0)
        rows = x.shape[0] if x.ndim else 1
        total = x.reshape(rows, -1).astype(np.float64).sum(axis=1) * scale
        outs = {}
        for o in self.outputs or [{"name": "y", "dtype": "float32", "shape": [rows]}]:
            shape = [rows, *(d if isinstance(d, int) and d > 0 else 1 for d in o["shape"][1:])]
            outs[o["name"]] = np.broadcast_to(total.reshape(rows, *[1] * (len(shape) - 1)),
                                              shape).astype(o["dtype"])
        descs, bufs = P.tensor_descs(outs)
        return {"outputs": descs, "run_ms": self.spec.run_s * 1e3, "cpu_s": time.process_time() - c0}, bufs

    def _check(self, feed: Mapping[str, np.ndarray]) -> None:
        """InvalidParams, as ONNX Runtime would: inputs that do not match the signature."""
        if not feed:
            raise InvalidParams("inputs: the fake backend needs at least one input tensor")
        for spec in self.inputs:
            x = feed.get(spec["name"])
            if x is None:
                raise InvalidParams(f"missing input {spec['name']!r}")
            dims = spec.get("shape") or []
            if x.dtype.name != spec["dtype"] or x.ndim != len(dims) or any(
                    isinstance(d, int) and d != g for d, g in zip(dims, x.shape, strict=True)):
                raise InvalidParams(f"input {spec['name']!r}: expected {spec['dtype']} {list(dims)}, "
                                    f"got {x.dtype.name} {list(x.shape)}")

    def _fault(self) -> None:
        for f in self.spec.faults:
            if not f.fires(self.variant, self.calls):
                continue
            if f.mode == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            elif f.mode == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            elif f.mode == "hang":
                self._release.wait()
                raise WorkerError("fake backend: closed while hung")
            else:
                raise ExecutionFailed(f"fake backend: injected failure on call {self.calls}")

    def _generate(self, call: Call) -> None:
        if not isinstance(call.params.get("prompt"), str) and not isinstance(call.params.get("messages"), list):
            raise InvalidParams("expected either 'prompt' (a string) or 'messages' (a list of {role, content})")
        n = int(call.params.get("max_tokens", 4))
        assert self.channel is not None
        for i in range(n):
            self.channel.send({"jsonrpc": "2.0", "method": "event",
                               "params": {"id": call.id, "text": f"t{i} ", "token_id": i, "index": i}})
        self.channel.send(P.response(call.id, {
            "text": "".join(f"t{i} " for i in range(n)), "finish_reason": "length", "tail": "", "cpu_s": 0.0,
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "cached_tokens": 0}}))

    def close(self) -> None:
        self.closed = True
        self._release.set()


def fake_spawner(spec: FakeSpec | Mapping[str, Any] | None = None, **spawn: Any) -> Any:
    """A ``Runtime(spawner=...)`` whose workers are real processes running the fake backend; ``spawn``
    goes to :meth:`WorkerHandle.spawn` (``heartbeat_s``, ``hang_after_s``)."""
    from agent.runtime.handle import WorkerHandle

    s = spec if isinstance(spec, FakeSpec) else FakeSpec.from_dict(spec or {})
    return functools.partial(WorkerHandle.spawn, backend="fake", backend_config=json.dumps(s.to_dict()), **spawn)
