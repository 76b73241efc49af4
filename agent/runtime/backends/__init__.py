"""What a worker process runs: one :class:`Backend` per loaded variant, behind one frame loop.

The worker (:mod:`agent.runtime.worker`) owns the transport — frames on the socketpair, the two shared
memory buffers, heartbeats, ``ping`` / ``exit`` / ``crash`` — and hands every other request to its
backend::

    backend = create(name, kind, config)     # "auto": llm for a causal-lm load, else onnx
    info = backend.load(params, channel)     # the device and providers it really got; LoadError
    reply = backend.run(Call(id, method, params, payload))   # (result, buffers), or None: replies later
    backend.close()                          # idempotent; run() after it raises WorkerError

Implementations (imported only when chosen, so a fake worker never imports onnxruntime):

* ``onnx`` (:mod:`.onnx`): a tensor variant's ONNX Runtime session (plain, split or remote) and ``run``.
* ``llm`` (:mod:`.llm`): a causal-LM engine on a session from :mod:`agent.runtime.session`;
  ``generate`` streams token events from a thread pool, ``cancel``, ``llm_stats``.
* ``fake`` (:mod:`.fake`): deterministic, with configurable load / run times and faults (crash, hang,
  stop, raise). Plugged in through the runtime's ``spawner`` seam (:func:`.fake.fake_spawner`) it runs
  in a real worker process, so runtime tests of swap, drain, restart and retry take milliseconds.

Errors: a bad request is :class:`~agent.errors.InvalidParams`, a failure of the execution provider on
valid inputs :class:`~agent.errors.ExecutionFailed`, a variant that cannot load
:class:`~agent.errors.LoadError`, a call the backend cannot take (none loaded, closed, unknown method)
:class:`~agent.errors.WorkerError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import LoadError

Reply = tuple[dict[str, Any], list[Any]]   # a result header and its buffers (the worker places them)
NAMES = ("auto", "onnx", "llm", "fake")


@dataclass(frozen=True)
class Call:
    """One request for the backend: its id, method, params and input bytes (inline or shared memory;
    valid only during ``run``)."""

    id: Any
    method: str
    params: Mapping[str, Any]
    payload: memoryview


class Channel(Protocol):
    """How a backend talks to the daemon outside a reply (streamed events, late replies); thread-safe."""

    def send(self, header: dict[str, Any], bufs: list[Any] | None = None) -> None: ...


class Backend(Protocol):
    name: str

    def load(self, params: Mapping[str, Any], channel: Channel) -> dict[str, Any]:
        """Load the variant the daemon's ``load`` params name; returns what it got (``device``,
        ``providers``, ``assignment``, ``load_ms``, ``warmup_ms``, signature ...). LoadError when it
        cannot serve; a second load on one backend is a LoadError too."""
        ...

    def run(self, call: Call) -> Reply | None:
        """Answer one call: (result, buffers), or None when the reply goes through the channel later."""
        ...

    def close(self) -> None:
        """Release the variant; idempotent."""
        ...


def create(name: str, kind: str, config: Mapping[str, Any] | None = None) -> Backend:
    """The backend ``name`` (``auto``: ``llm`` for a causal-lm load, else ``onnx``)."""
    if name == "auto":
        name = "llm" if kind == "causal-lm" else "onnx"
    if name == "onnx":
        from agent.runtime.backends.onnx import OnnxBackend

        return OnnxBackend()
    if name == "llm":
        from agent.runtime.backends.llm import LLMBackend

        return LLMBackend()
    if name == "fake":
        from agent.runtime.backends.fake import FakeBackend, FakeSpec

        return FakeBackend(FakeSpec.from_dict(config or {}))
    raise LoadError(f"unknown worker backend {name!r}; known: {', '.join(NAMES)}")
