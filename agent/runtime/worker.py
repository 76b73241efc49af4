"""The worker process: one frame loop over the backend that holds one variant (ONNX, LLM or fake).

Started by :mod:`agent.runtime.handle` as ``python -m agent.runtime.worker --fd N --shm-in A --shm-out B``
with one end of a socketpair and two memfds (shared memory for large tensors). It speaks the framing of
:mod:`agent.ipc.protocol`, one request at a time: ``load``, ``run``, ``ping``, ``exit`` (and the LLM
methods of the backend that holds the variant: :mod:`agent.runtime.backends`). A crash here (an EP
segfault, OOM) only takes this process down; the daemon retries the request elsewhere and restarts the
worker. ``--backend fake`` runs the fake backend (tests), which never imports onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from agent.errors import LoadError, WorkerError, error_payload
from agent.ipc import protocol as P
from agent.ipc.shm import INLINE_MAX, Shm, place
from agent.runtime.backends import NAMES, Backend, Call, Reply, create
from agent.runtime.lanes import LaneServer

LANES_EXIT_WAIT_S = 3.0   # on exit, how long lane requests being run may take to be answered


class Worker:
    """The frame loop: ``ping``, ``exit`` and ``crash`` here, ``load`` creates the backend, every other
    method goes to it (:mod:`agent.runtime.backends`). Shared memory is placed here, for any backend: a
    request with ``shm`` reads its inputs from ``shm_in``; a reply's buffers go to ``shm_out`` when they
    are large and the request holds the token (``shm_out``)."""

    def __init__(self, sock: socket.socket, shm_in: Shm, shm_out: Shm, inline_max: int,
                 backend: str = "auto", backend_config: Mapping[str, Any] | None = None,
                 lanes: LaneServer | None = None) -> None:
        self.sock, self.shm_in, self.shm_out = sock, shm_in, shm_out
        self.run_lock = lanes.run_lock if lanes is not None else threading.Lock()
        self.lanes = lanes
        self.inline_max = inline_max
        self.backend_name = backend
        self.backend_config = dict(backend_config or {})
        self.backend: Backend | None = None
        self.info: dict[str, Any] = {}
        self._send_lock = threading.Lock()

    def send(self, header: dict[str, Any], bufs: list[Any] | None = None) -> None:
        """Thread-safe: backends stream events and late replies through here (their Channel)."""
        with self._send_lock:
            P.send_frame(self.sock, header, bufs or [])

    def serve(self) -> None:
        try:
            self.send({"jsonrpc": "2.0", "method": "hello", "params": {"pid": os.getpid()}})
        except OSError:
            return  # the daemon went away before we were ready
        frames = P.SocketFrames(self.sock)
        try:
            while True:
                try:
                    frame = frames.next()
                except (EOFError, OSError):
                    return
                h = frame.header
                rid, method = h.get("id"), str(h.get("method"))
                if method == "exit":
                    if self.lanes is not None:   # lane requests being run are answered first
                        self.lanes.close_all(wait_s=LANES_EXIT_WAIT_S)
                    self.close()
                    self.send(P.response(rid, {"bye": True}))
                    return
                if method == "crash":  # used by tests to simulate an EP segfault
                    os.kill(os.getpid(), signal.SIGKILL)
                if method == "lanes_close":   # the daemon swapped this variant out
                    wait_s = float((h.get("params") or {}).get("wait_s", 0.0))
                    self.send(P.response(rid, {"closed": self.lanes.close_all(wait_s) if self.lanes else 0}))
                    continue
                try:
                    out = self.dispatch(rid, method, h.get("params") or {}, frame.payload)
                    if out is not None:
                        self.send(P.response(rid, out[0]), out[1])
                except Exception as e:  # noqa: BLE001 - never die on a request: report it
                    self.send(P.error_response(rid, error_payload(e)))
        finally:
            self.close()

    def dispatch(self, rid: Any, method: str, params: dict[str, Any], payload: memoryview) -> Reply | None:
        if method == "ping":
            return {"pid": os.getpid(), "rss_bytes": _rss(), "loaded": self.backend is not None}, []
        if method == "load":
            return self.load(params), []
        if self.backend is None:
            raise WorkerError(f"no variant loaded (method {method!r})")
        if params.get("shm"):
            self.shm_in.remap()
            assert self.shm_in.mm is not None
            payload = memoryview(self.shm_in.mm)[:P.iter_nbytes(params["inputs"])]
        with self.run_lock:   # the lane loop runs this variant too: one run at a time (uncontended otherwise)
            out = self.backend.run(Call(rid, method, params, payload))
        del payload
        if out is None:
            return None
        return self.place(out[0], out[1], bool(params.get("shm_out")))

    def load(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.backend is not None:
            raise LoadError("worker already holds a variant")
        backend = create(self.backend_name, str(params.get("kind", "tensor")), self.backend_config)
        try:
            info = backend.load(params, self)
        except BaseException:
            backend.close()
            raise
        self.backend, self.info = backend, info
        if self.lanes is not None and backend.name in ("onnx", "fake") and not params.get("remote"):
            self.lanes.serve(backend, info, params)
        return {**info, "backend": backend.name, "rss_bytes": _rss(), "peak_rss_bytes": _peak_rss()}

    def place(self, result: dict[str, Any], bufs: list[Any], shm_out: bool) -> Reply:
        """Large outputs of the request holding the shared buffers go there, the rest inline."""
        return place(result, bufs, self.shm_out if shm_out else None, self.inline_max)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


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
            lanes = worker.lanes.report() if worker.lanes is not None else None
            frame = beat if lanes is None else P.encode_bytes(
                {"jsonrpc": "2.0", "method": "heartbeat", "params": {"lanes": lanes}})
            try:
                with worker._send_lock:
                    worker.sock.sendall(frame)
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
    ap.add_argument("--inline-max", type=int, default=INLINE_MAX)
    ap.add_argument("--lane-fd", type=int, default=-1, help="the socket lanes arrive on (-1: no lanes)")
    ap.add_argument("--heartbeat", type=float, default=0.0, help="seconds between heartbeats (0: none)")
    ap.add_argument("--backend", choices=NAMES, default="auto", help="what runs the variant (tests: fake)")
    ap.add_argument("--backend-config", type=json.loads, default={}, help="the backend's settings (JSON)")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when a worker stops
    if a.backend != "fake":
        import onnxruntime  # noqa: F401  (imported before 'hello' so a spare worker is warm)

    sock = socket.socket(fileno=a.fd)
    sock.setblocking(True)
    lanes = None
    if a.lane_fd >= 0:
        lanes = LaneServer(socket.socket(fileno=a.lane_fd), threading.Lock(), a.inline_max)
        lanes.start()
    w = Worker(sock, Shm(a.shm_in), Shm(a.shm_out), a.inline_max, a.backend, a.backend_config, lanes)
    start_heartbeat(w, a.heartbeat)
    w.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
