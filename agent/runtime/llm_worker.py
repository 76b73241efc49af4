"""The causal-LM side of a worker process: holds an :class:`agent.llm.engine.LLMEngine` and streams.

Methods added to the worker when it loads a ``causal-lm`` variant:

* ``generate`` {prompt | messages, max_tokens, temperature, top_p, top_k, seed, stop}: validated at once
  (a bad request fails before any token), then run on a small thread pool; every token is sent as an
  ``event`` frame ``{"id": <request id>, "text", "token_id", "index"}`` and the last one as the response
  ``{"text", "finish_reason", "usage", "tokens", "cpu_s"}``. ``cpu_s`` is the process's CPU time
  (``time.process_time``: ORT's threads included) over the generation, each step's share divided by the
  number of generations running then.
* ``cancel`` {id}: stops that generation at its next step; its KV memory is freed. With continuous
  batching (manifest ``[serving] max_batch`` > 1, ``agent.llm.batch``) concurrent generations share decode
  steps; cancelling one drops only its row.
* ``llm_stats``: the engine's counters (prefix-cache hits/misses, live KV bytes, ...).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from agent.errors import InvalidParams, LoadError
from agent.ipc import protocol as P


class Worker(Protocol):
    """What an LLM host needs of the worker's frame loop (agent.runtime.worker.Worker)."""

    current_id: Any

    def send(self, header: dict[str, Any], bufs: list[Any] | None = None) -> None: ...


class LLMHost:
    def __init__(self, engine: Any, worker: Worker, max_concurrent: int) -> None:
        self.engine = engine
        self.worker = worker
        self.pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="gen")
        self.cancels: dict[Any, threading.Event] = {}
        self._lock = threading.Lock()
        self.running = 0
        self._out: list[dict[str, Any]] = []    # frames to send, in order (see _post)
        self._out_lock = threading.Lock()
        self._flushing = False

    def methods(self) -> dict[str, Callable[[dict[str, Any], memoryview], Any]]:
        return {"generate": self.generate, "cancel": self.cancel, "llm_stats": self.stats}

    def generate(self, params: dict[str, Any], payload: memoryview) -> None:
        rid = self.worker.current_id
        prompt: Any = params.get("messages") if params.get("messages") is not None else params.get("prompt")
        if (params.get("messages") is None) == (params.get("prompt") is None):
            raise InvalidParams("expected either 'prompt' (a string) or 'messages' (a list of {role, content})")
        if params.get("messages") is not None and not isinstance(params["messages"], list):
            raise InvalidParams(f"messages: expected a list of {{role, content}}, "
                                f"got {type(params['messages']).__name__}")
        if params.get("prompt") is not None and not isinstance(params["prompt"], str):
            raise InvalidParams(f"prompt: expected a string, got {type(params['prompt']).__name__}")
        gen = {k: params[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop") if k in params}
        ev = threading.Event()
        it = self.engine.generate(prompt, gen, cancel=ev)   # raises InvalidParams before any token
        with self._lock:
            self.cancels[rid] = ev
        self.pool.submit(self._stream, rid, it)

    def _stream(self, rid: Any, it: Any) -> None:
        parts: list[str] = []
        cpu, last = 0.0, time.process_time()
        with self._lock:
            self.running += 1
        try:
            for t in it:
                now = time.process_time()
                cpu += (now - last) / max(1, self.running)
                last = now
                if t.finish_reason is None:
                    parts.append(t.text)
                    self._post({"jsonrpc": "2.0", "method": "event",
                                "params": {"id": rid, "text": t.text, "token_id": t.token_id, "index": t.index}})
                else:
                    parts.append(t.text)
                    usage = t.usage.__dict__ if t.usage is not None else None
                    self._post(P.response(rid, {"text": "".join(parts), "finish_reason": t.finish_reason,
                                                "usage": usage, "tail": t.text, "cpu_s": round(cpu, 6)}))
        except OSError:
            return  # the daemon is gone
        except Exception as e:  # noqa: BLE001 - any generation error goes back to the daemon as the reply
            from agent.errors import error_payload

            try:
                self._post(P.error_response(rid, error_payload(e)))
            except OSError:
                pass
        finally:
            with self._lock:
                self.cancels.pop(rid, None)
                self.running -= 1

    def _post(self, header: dict[str, Any]) -> None:
        """Send a stream's frame; frames stay in order. The thread that finds no send in progress sends
        everything queued, consecutive token events as one ``events`` frame: concurrent streams (a
        continuous batch emits a token for each at every step) wake the daemon once per step, not once
        per stream. A lone stream sends at once, as before."""
        with self._out_lock:
            self._out.append(header)
            if self._flushing:
                return
            self._flushing = True
        try:
            while True:
                with self._out_lock:
                    frames, self._out = self._out, []
                    if not frames:
                        self._flushing = False
                        return
                for f in coalesce_events(frames):
                    self.worker.send(f)
        except BaseException:
            with self._out_lock:
                self._flushing = False
            raise

    def cancel(self, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        with self._lock:
            ev = self.cancels.get(params.get("id"))
        if ev is not None:
            ev.set()
        return {"cancelled": ev is not None}, []

    def stats(self, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        return self.engine.stats(), []

    def shutdown(self) -> None:
        with self._lock:
            for ev in self.cancels.values():
                ev.set()
        self.pool.shutdown(wait=True, cancel_futures=True)


def coalesce_events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of two or more ``event`` frames become one ``{"method": "events", "params": {"events": [...]}}``
    (their params in order); every other frame keeps its place."""
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append({"jsonrpc": "2.0", "method": "events", "params": {"events": [f["params"] for f in run]}})
        run.clear()

    for f in frames:
        if f.get("method") == "event":
            run.append(f)
        else:
            close_run()
            out.append(f)
    close_run()
    return out


def load_llm(path: Path, params: dict[str, Any], worker: Worker) -> tuple[LLMHost, dict[str, Any]]:
    try:
        from agent.llm.engine import LLMEngine
    except ImportError as e:
        raise LoadError(f"causal-lm support is not installed ({e}); install the 'llm' extra") from None

    from agent.runtime.session import file_sha256

    llm = dict(params.get("llm") or {})
    tok = llm.get("tokenizer")
    if not isinstance(tok, str) or not tok:
        raise LoadError("manifest [llm] needs 'tokenizer' (a file in the model folder)")
    tok_path = (path.parent / tok).resolve()
    if path.parent.resolve() not in tok_path.parents:
        raise LoadError(f"tokenizer {tok!r} is outside the model folder")
    if params.get("sha256") and file_sha256(path) != params["sha256"]:
        raise LoadError(f"variant file {path.name} is corrupt: sha256 does not match the manifest")
    t0 = time.perf_counter()
    dev, ep_dev = _device(str(params.get("device") or "cpu"))
    max_batch = int(params.get("llm_max_batch", 1) or 1)
    engine = LLMEngine(path, tok_path, llm, threads=params.get("threads"),
                       prefix_cache_bytes=int(params.get("prefix_cache_bytes", 64 << 20)),
                       session_options={"session.record_ep_graph_assignment_info": "1"}, ep_device=ep_dev,
                       max_batch=max_batch)
    draft = params.get("draft")
    if draft:
        dpath = Path(draft["path"])
        if draft.get("sha256") and file_sha256(dpath) != draft["sha256"]:
            raise LoadError(f"draft file {dpath.name} is corrupt: sha256 does not match the manifest")
        engine.set_draft(LLMEngine(dpath, tok_path, llm, threads=params.get("threads"), prefix_cache_bytes=0,
                                   ep_device=ep_dev),
                         int(draft.get("k", 4)), float(draft.get("min_p", 0.0)))
    n = int(params.get("warmup_runs", 3))
    if n:  # warm up: one short greedy generation
        for _ in engine.generate("Hello", {"max_tokens": 2}):
            pass
    warm_ms = (time.perf_counter() - t0) * 1e3 - engine.load_ms
    # a batched stream's thread only waits for its tokens: enough threads for a full batch
    threads = max(int(params.get("max_concurrent", min(4, os.cpu_count() or 2))), max_batch)
    host = LLMHost(engine, worker, max_concurrent=threads)
    from agent.runtime.session import assignment

    providers = list(engine.session.get_providers())
    if dev.provider not in providers:
        raise LoadError(f"{path.name}: session does not use {dev.provider} (got {providers})")
    info = {"device": dev.to_dict(), "providers": providers, "assignment": assignment(engine.session),
            "load_ms": engine.load_ms, "warmup_ms": warm_ms, "family": engine.family,
            "draft": draft.get("variant") if draft else None}
    return host, info


def _device(spec: str) -> tuple[Any, Any]:
    """The discovered device for ``spec`` (LoadError naming what exists) and its OrtEpDevice, None for
    ONNX Runtime's own CPU EP."""
    import onnxruntime as ort

    from agent.errors import NotFound
    from agent.runtime import devices as devmod

    try:
        dev = devmod.select(spec, devmod.discover())
    except NotFound as e:
        raise LoadError(str(e)) from None
    return dev, (None if dev.provider == "CPUExecutionProvider" else ort.get_ep_devices()[dev.index])
