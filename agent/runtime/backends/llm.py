"""The causal-LM backend: an :class:`agent.llm.engine.LLMEngine` on a session opened by the shared
session code (:func:`agent.runtime.session.open_session`: the requested device, no silent CPU fallback,
node assignment recorded), streaming from a small thread pool.

Methods once loaded:

* ``generate`` {prompt | messages, max_tokens, temperature, top_p, top_k, seed, stop}: validated at once
  (a bad request fails before any token), then run on the pool; every token is sent as an ``event``
  frame ``{"id": <request id>, "text", "token_id", "index"}`` and the last one as the response
  ``{"text", "finish_reason", "usage", "tail", "cpu_s"}``. ``cpu_s`` is the process's CPU time
  (``time.process_time``: ORT's threads included) over the generation, each step's share divided by the
  number of generations running then.
* ``cancel`` {id}: stops that generation at its next step; its KV memory is freed. With continuous
  batching (manifest ``[serving] max_batch`` > 1, ``agent.llm.batch``) concurrent generations share decode
  steps; cancelling one drops only its row. Token events queued while another thread sends go out as one
  ``events`` frame (:func:`coalesce_events`), so a batch step wakes the daemon once, not once per stream.
* ``llm_stats``: the engine's counters (prefix-cache hits/misses, live KV bytes, ...).

``load`` reports the device and providers the session really got (``info["device"]``, ``providers``,
``assignment``); the daemon records those, not what it asked for.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent.errors import InvalidParams, LoadError, WorkerError, error_payload
from agent.ipc import protocol as P
from agent.runtime.backends import Call, Channel, Reply

GEN_KEYS = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")
# decode steps are short: keep ORT's threads spinning between them (open_session turns spinning off)
LLM_SESSION_CONFIG = {"session.intra_op.allow_spinning": "1"}


class LLMBackend:
    name = "llm"

    def __init__(self) -> None:
        self.engine: Any = None
        self.channel: Channel | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.cancels: dict[Any, threading.Event] = {}
        self._lock = threading.Lock()
        self.running = 0
        self.closed = False
        self._out: list[dict[str, Any]] = []    # frames to send, in order (see _post)
        self._out_lock = threading.Lock()
        self._flushing = False

    # -- load ---------------------------------------------------------------------------------------
    def load(self, params: Mapping[str, Any], channel: Channel) -> dict[str, Any]:
        try:
            from agent.llm.engine import LLMEngine
        except ImportError as e:
            raise LoadError(f"causal-lm support is not installed ({e}); install the 'llm' extra") from None
        if self.engine is not None or self.closed:
            raise LoadError("this worker already held a variant")
        path = Path(str(params["path"]))
        llm = dict(params.get("llm") or {})
        tok = llm.get("tokenizer")
        if not isinstance(tok, str) or not tok:
            raise LoadError("manifest [llm] needs 'tokenizer' (a file in the model folder)")
        tok_path = (path.parent / tok).resolve()
        if path.parent.resolve() not in tok_path.parents:
            raise LoadError(f"tokenizer {tok!r} is outside the model folder")
        t0 = time.perf_counter()
        device = str(params.get("device") or "cpu")
        threads = int(params.get("threads") or os.cpu_count() or 1)
        max_batch = int(params.get("llm_max_batch", 1) or 1)
        draft = params.get("draft")
        config = LLM_SESSION_CONFIG
        if draft:   # two sessions take turns: neither may spin on after its run (see speculative.py)
            from agent.llm.speculative import SESSION_CONFIG as config
            from agent.llm.speculative import set_draft_from
        engine, opened = self._engine(LLMEngine, path, tok_path, llm, device, threads, params.get("sha256"),
                                      int(params.get("prefix_cache_bytes", 64 << 20)), max_batch, config)
        if draft:
            d, _ = self._engine(LLMEngine, Path(draft["path"]), tok_path, llm, device, threads, draft.get("sha256"),
                                0, 1, config)
            set_draft_from(engine, d, draft)
        if int(params.get("warmup_runs", 3)):  # warm up: one short greedy generation
            for _ in engine.generate("Hello", {"max_tokens": 2}):
                pass
        warm_ms = (time.perf_counter() - t0) * 1e3 - engine.load_ms
        self.engine, self.channel = engine, channel
        # a batched stream's thread only waits for its tokens: enough threads for a full batch
        workers = max(int(params.get("max_concurrent", min(4, os.cpu_count() or 2))), max_batch)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gen")
        return {**opened, "load_ms": engine.load_ms, "warmup_ms": warm_ms, "family": engine.family,
                "draft": draft.get("variant") if draft else None}

    @staticmethod
    def _engine(cls: Any, path: Path, tok_path: Path, llm: dict[str, Any], device: str, threads: int,
                sha256: str | None, prefix_cache_bytes: int, max_batch: int,
                config: Mapping[str, str]) -> tuple[Any, dict[str, Any]]:
        """An engine on a session opened on ``device`` with ORT session ``config``, and what that session
        really got."""
        from agent.runtime.session import open_session

        sess, info = open_session(path, device, threads=threads, sha256=sha256, session_config=dict(config))
        engine = cls(path, tok_path, llm, threads=threads, prefix_cache_bytes=prefix_cache_bytes, session=sess,
                     max_batch=max_batch)
        engine.load_ms = info["load_ms"]
        return engine, {k: info[k] for k in ("device", "providers", "assignment")}

    # -- calls --------------------------------------------------------------------------------------
    def run(self, call: Call) -> Reply | None:
        if self.engine is None:
            raise WorkerError("backend is closed" if self.closed else "no variant loaded")
        if call.method == "generate":
            self.generate(call.id, call.params)
            return None
        if call.method == "cancel":
            with self._lock:
                ev = self.cancels.get(call.params.get("id"))
            if ev is not None:
                ev.set()
            return {"cancelled": ev is not None}, []
        if call.method == "llm_stats":
            return self.engine.stats(), []
        raise WorkerError(f"the llm backend has no method {call.method!r}")

    def generate(self, rid: Any, params: Mapping[str, Any]) -> None:
        messages, prompt = params.get("messages"), params.get("prompt")
        if (messages is None) == (prompt is None):
            raise InvalidParams("expected either 'prompt' (a string) or 'messages' (a list of {role, content})")
        if messages is not None and not isinstance(messages, list):
            raise InvalidParams(f"messages: expected a list of {{role, content}}, got {type(messages).__name__}")
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidParams(f"prompt: expected a string, got {type(prompt).__name__}")
        gen = {k: params[k] for k in GEN_KEYS if k in params}
        ev = threading.Event()
        it = self.engine.generate(messages if messages is not None else prompt, gen, cancel=ev)  # InvalidParams now
        with self._lock:
            self.cancels[rid] = ev
        assert self.pool is not None
        self.pool.submit(self._stream, rid, it)

    def _stream(self, rid: Any, it: Iterator[Any]) -> None:
        send = self._post
        parts: list[str] = []
        cpu, last = 0.0, time.process_time()
        with self._lock:
            self.running += 1
        try:
            for t in it:
                now = time.process_time()
                cpu += (now - last) / max(1, self.running)
                last = now
                parts.append(t.text)
                if t.finish_reason is None:
                    send({"jsonrpc": "2.0", "method": "event",
                          "params": {"id": rid, "text": t.text, "token_id": t.token_id, "index": t.index}})
                else:
                    usage = t.usage.__dict__ if t.usage is not None else None
                    send(P.response(rid, {"text": "".join(parts), "finish_reason": t.finish_reason,
                                          "usage": usage, "tail": t.text, "cpu_s": round(cpu, 6)}))
        except OSError:
            return  # the daemon is gone
        except Exception as e:  # noqa: BLE001 - a failing generation is reported to its caller, never fatal
            try:
                send(P.error_response(rid, error_payload(e)))
            except OSError:
                pass
        finally:
            with self._lock:
                self.cancels.pop(rid, None)
                self.running -= 1

    def _post(self, header: dict[str, Any]) -> None:
        """Send a stream's frame; frames stay in order. The thread that finds no send in progress sends
        everything queued, consecutive token events as one ``events`` frame. A lone stream sends at once."""
        assert self.channel is not None
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
                    self.channel.send(f)
        except BaseException:
            with self._out_lock:
                self._flushing = False
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with self._lock:
            for ev in self.cancels.values():
                ev.set()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()
        self.engine = None


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
