"""The worker process: holds one variant's ONNX Runtime session and runs requests on it.

Started by :mod:`agent.runtime.handle` as ``python -m agent.runtime.worker --fd N --shm-in A --shm-out B``
with one end of a socketpair and two memfds (shared memory for large tensors). It speaks the framing of
:mod:`agent.ipc.protocol`, one request at a time: ``load``, ``run``, ``ping``, ``exit`` (and the LLM
methods when the model is a causal LM). A crash here (an EP segfault, OOM) only takes this process down;
the daemon retries the request elsewhere and restarts the worker.
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import LoadError, WorkerError, error_payload, from_run_error
from agent.ipc import protocol as P


class Shm:
    """One memfd mapped in this process; grows when the peer says it grew."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.mm: mmap.mmap | None = None
        self.remap()

    def remap(self) -> None:
        size = os.fstat(self.fd).st_size
        if size != self.size or self.mm is None:
            if self.mm is not None:
                self.mm.close()
            self.mm = mmap.mmap(self.fd, max(size, 1))
            self.size = size

    def ensure(self, n: int) -> None:
        if n > self.size:
            os.ftruncate(self.fd, max(n, self.size * 2))
            self.remap()


class Worker:
    def __init__(self, sock: socket.socket, shm_in: Shm, shm_out: Shm, inline_max: int) -> None:
        self.sock, self.shm_in, self.shm_out = sock, shm_in, shm_out
        self.inline_max = inline_max
        self.sess: Any = None
        self.info: dict[str, Any] = {}
        self.current_id: Any = None
        self._send_lock = threading.Lock()
        self.llm: Any = None
        # a method returns (result, buffers), or None when it replies later from another thread
        self.methods: dict[str, Callable[[dict[str, Any], memoryview], tuple[Any, list[Any]] | None]] = {
            "load": self.load, "run": self.run, "ping": self.ping,
        }

    def send(self, header: dict[str, Any], bufs: list[Any] | None = None) -> None:
        """Thread-safe: generation threads stream their tokens through here."""
        with self._send_lock:
            P.send_frame(self.sock, header, bufs or [])

    def serve(self) -> None:
        try:
            self.send({"jsonrpc": "2.0", "method": "hello", "params": {"pid": os.getpid()}})
        except OSError:
            return  # the daemon went away before we were ready
        frames = P.SocketFrames(self.sock)
        while True:
            try:
                frame = frames.next()
            except (EOFError, OSError):
                return
            h = frame.header
            rid, method = h.get("id"), h.get("method")
            if method == "exit":
                if self.llm is not None:
                    self.llm.shutdown()
                self.send(P.response(rid, {"bye": True}))
                return
            if method == "crash":  # used by tests to simulate an EP segfault
                os.kill(os.getpid(), signal.SIGKILL)
            fn = self.methods.get(str(method))
            self.current_id = rid
            try:
                if fn is None:
                    raise WorkerError(f"worker has no method {method!r}")
                out = fn(h.get("params") or {}, frame.payload)
                if out is not None:
                    self.send(P.response(rid, out[0]), out[1])
            except Exception as e:  # noqa: BLE001 - never die on a request: report it
                self.send(P.error_response(rid, error_payload(e)))

    # -- methods ------------------------------------------------------------------------------------
    def ping(self, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        return {"pid": os.getpid(), "rss_bytes": _rss(), "loaded": self.sess is not None or self.llm is not None}, []

    def load(self, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        from agent.runtime.session import open_variant, warm_up

        if self.sess is not None or self.llm is not None:
            raise LoadError("worker already holds a variant")
        path = Path(str(params["path"]))
        kind = params.get("kind", "tensor")
        if kind == "causal-lm":
            from agent.runtime.llm_worker import load_llm  # the LLM engine, when present

            self.llm, self.info = load_llm(path, params, self)
            self.methods.update(self.llm.methods())
            return {**self.info, "rss_bytes": _rss(), "peak_rss_bytes": _peak_rss()}, []
        sess, info = open_variant(params)   # plain, split (parts on their devices) or remote (KServe v2)
        expect = params.get("signature")
        if expect:
            _check_signature(expect, info)
        t0 = time.perf_counter()
        info["warmup"] = warm_up(sess, int(params.get("warmup_runs", 3)), params.get("warmup_file"))
        info["warmup_ms"] = (time.perf_counter() - t0) * 1e3
        if params.get("batch_check"):
            info["batch_invariant"] = batch_invariant(sess)
        self.sess, self.info = sess, info
        self.out_names = [o.name for o in sess.get_outputs()]
        return {**info, "rss_bytes": _rss(), "peak_rss_bytes": _peak_rss()}, []

    def run(self, params: dict[str, Any], payload: memoryview) -> tuple[Any, list[Any]]:
        if self.sess is None:
            raise WorkerError("no variant loaded")
        if params.get("shm"):
            self.shm_in.remap()
            n = P.iter_nbytes(params["inputs"])
            assert self.shm_in.mm is not None
            src: memoryview = memoryview(self.shm_in.mm)[:n]
        else:
            src = payload
        feed = P.tensors_from(params["inputs"], src)
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            outs = self.sess.run(self.out_names, feed)
        except Exception as e:  # noqa: BLE001 - ours keep their type; ORT's: bad input or EP failure
            raise from_run_error(e) from None
        run_ms = (time.perf_counter() - t0) * 1e3
        cpu_s = time.process_time() - c0
        descs, bufs = P.tensor_descs(dict(zip(self.out_names, outs, strict=True)))
        del src, feed
        total = sum(b.nbytes for b in bufs)
        result: dict[str, Any] = {"outputs": descs, "run_ms": run_ms, "cpu_s": cpu_s}
        if total > self.inline_max and params.get("shm_out"):   # only the request holding the token
            self.shm_out.ensure(total)
            assert self.shm_out.mm is not None
            off = 0
            for b in bufs:
                self.shm_out.mm[off: off + b.nbytes] = b
                off += b.nbytes
            result["shm"] = True
            result["shm_size"] = self.shm_out.size
            return result, []
        return result, bufs


def batch_invariant(sess: Any) -> bool:
    """Whether a row's outputs do not depend on the other rows of its batch (so dynamic batching may stack
    requests). Measured, not assumed: dynamic int8 quantization, for one, picks one activation scale for
    the whole batch, so a request's outputs would change with its neighbours."""
    import numpy as np

    from agent.runtime.session import sample_inputs

    one = sample_inputs(sess)
    rng = np.random.default_rng(1)
    other = {k: (rng.standard_normal(v.shape) * 50).astype(v.dtype) if v.dtype.kind == "f" else v
             for k, v in one.items()}
    try:
        alone = sess.run(None, one)
        both = sess.run(None, {k: np.concatenate([one[k], other[k]]) for k in one})
    except Exception:  # noqa: BLE001 - any failure to run a batch of 2 (shape, EP) means not batchable
        return False
    return all(b.shape[:1] == (2,) and a.shape[:1] == (1,) and np.allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
               for a, b in zip(alone, both, strict=True))


def _check_signature(expect: dict[str, Any], info: dict[str, Any]) -> None:
    for key in ("inputs", "outputs"):
        want = [(t["name"], t["dtype"]) for t in expect.get(key, [])]
        got = [(t["name"], t["dtype"]) for t in info.get(key, [])]
        if want and sorted(want) != sorted(got):
            raise LoadError(f"variant {key} {got} do not match the model's signature {want}")


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def start_heartbeat(worker: Worker, period_s: float) -> threading.Thread | None:
    """Send a ``heartbeat`` notification every ``period_s`` from a daemon thread, so the daemon can tell
    a busy worker (ONNX Runtime releases the GIL) from a hung one (stopped, or stuck holding the GIL)."""
    if period_s <= 0:
        return None
    beat = P.encode_bytes({"jsonrpc": "2.0", "method": "heartbeat"})

    def loop() -> None:
        while True:
            time.sleep(period_s)
            try:
                with worker._send_lock:
                    worker.sock.sendall(beat)
            except OSError:
                return  # the daemon is gone

    t = threading.Thread(target=loop, name="heartbeat", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="agent-worker")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--shm-in", type=int, required=True)
    ap.add_argument("--shm-out", type=int, required=True)
    ap.add_argument("--inline-max", type=int, default=64 * 1024)
    ap.add_argument("--heartbeat", type=float, default=0.0, help="seconds between heartbeats (0: none)")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when a worker stops
    import onnxruntime  # noqa: F401  (imported before 'hello' so a spare worker is warm)

    sock = socket.socket(fileno=a.fd)
    sock.setblocking(True)
    w = Worker(sock, Shm(a.shm_in), Shm(a.shm_out), a.inline_max)
    start_heartbeat(w, a.heartbeat)
    w.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
