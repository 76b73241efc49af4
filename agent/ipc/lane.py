"""Lanes, the client's side: tensor requests straight to the worker that serves the model.

A lane is granted by the daemon (method ``lane``, on a connection of its own: the reply carries three
file descriptors with SCM_RIGHTS, which a normal connection's reader would drop; that connection stays
open as the lane's *lease*: it counts against the uid's connection limit, keeps the client's other
connections from being evicted as idle, and the daemon closes it when the lane ends): a socket whose other
end is held by the model's active worker, and two memfds shared with it (inputs over
``INLINE_MAX`` go in the first, large outputs come back in the second; one copy each way). Access
control is the daemon's, at grant time. Frames are the usual ones (:mod:`agent.ipc.protocol`), so a
request costs one socket round trip to a thread that runs it, instead of client → daemon → worker.

A lane ends when the daemon swaps the model to another worker, or the worker stops or dies: then
:class:`LaneClosed` is raised before anything was answered, and the caller (:class:`agent.client.Client`)
sends the same request through the daemon, which serves it (tensor requests are idempotent), and
opens a lane to the new worker next time. Only requests without QoS hints use lanes: deadlines,
priorities and quality floors are the daemon's business (admission, EDF queue, the policy's demand).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import Any

from agent.errors import AgentError, ConnectionClosed, error_from_jsonrpc
from agent.ipc import protocol as P
from agent.ipc.shm import INLINE_MAX, Shm

POLL_S = 200e-6          # after sending, poll this long for the reply before blocking (P.BusyPoll) ...
POLL_UNDER_S = 400e-6    # ... when this lane's recent round trips are shorter than this (else block at once:
                         # spinning through a long run would take a core from the worker's own threads)


class LaneClosed(Exception):
    """The lane ended before it answered; the request was not served and may be sent again."""


def open_lane(path: str, model: str, timeout: float | None = 5.0) -> Lane:
    """Ask the daemon at ``path`` for a lane to ``model``'s worker (AgentError when it refuses)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    fds: list[int] = []
    try:
        try:
            s.connect(path)
            P.send_frame(s, P.request(1, "lane", {"model": model}))
            reader = P.FrameReader()
            frames: list[Any] = []
            while not frames:
                data, got, _, _ = socket.recv_fds(s, 1 << 16, 3)
                fds.extend(got)
                if not data:
                    raise ConnectionClosed("agentd closed the connection before granting a lane")
                frames = reader.feed(data)
        except OSError as e:
            raise ConnectionClosed(f"cannot open a lane at {path}: {e.strerror or e}") from None
        f = frames[0]
        if isinstance(f, AgentError):
            raise f
        if "error" in f.header:
            raise error_from_jsonrpc(f.header["error"])
        if len(fds) != 3:
            raise ConnectionClosed(f"agentd granted a lane with {len(fds)} file descriptors, not 3")
        shm_in, shm_out = Shm(fds[1]), Shm(fds[2])
        lane = Lane(socket.socket(fileno=fds[0]), shm_in, shm_out, f.header.get("result") or {}, lease=s)
        fds = []
        return lane
    except BaseException:
        s.close()
        raise
    finally:
        for fd in fds:
            os.close(fd)


class LaneEnd:
    """One end of a lane (the client's, or the worker's in agent.runtime.lanes): its blocking socket and
    the two shared buffers, closed together."""

    def __init__(self, sock: socket.socket, shm_in: Shm, shm_out: Shm) -> None:
        self.sock, self.shm_in, self.shm_out = sock, shm_in, shm_out
        sock.setblocking(True)
        P.widen(sock)
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sock.close()
        self.shm_in.close()
        self.shm_out.close()


class Lane(LaneEnd):
    """One lane: one request at a time (``lock``); ``call`` raises LaneClosed when the worker is gone."""

    def __init__(self, sock: socket.socket, shm_in: Shm, shm_out: Shm, info: dict[str, Any],
                 lease: socket.socket | None = None) -> None:
        super().__init__(sock, shm_in, shm_out)
        self.info = info
        self.lease = lease   # the connection that was granted the lane: open while the lane is used
        self.lock = threading.Lock()
        self._ids = 0
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        self._poll = P.BusyPoll(POLL_S)
        self.rtt_s = 0.0   # moving average of this lane's round trips

    def call(self, method: str, params: dict[str, Any], bufs: list[Any] | tuple[Any, ...] = ()
             ) -> tuple[dict[str, Any], memoryview]:
        """One request and its reply: (result header, output bytes). Inputs over INLINE_MAX travel in the
        shared memory. Errors of the request (bad inputs) raise the agent's own types; the lane goes on."""
        if self.closed:
            raise LaneClosed("lane is closed")
        self._ids += 1
        nbytes = sum(memoryview(b).nbytes for b in bufs)
        if nbytes > INLINE_MAX:
            self.shm_in.write(list(bufs))
            params = {**params, "shm": True, "shm_size": self.shm_in.size}
            bufs = ()
        t0 = time.perf_counter()
        try:
            P.send_frame(self.sock, P.request(self._ids, method, params), list(bufs))
            self._poll.wait(lambda: self._poller.poll(0), POLL_S if self.rtt_s < POLL_UNDER_S else 0.0)
            f = P.recv_frame(self.sock)   # a writable payload: the outputs are the caller's arrays
        except (EOFError, OSError) as e:
            self.close()
            raise LaneClosed(f"lane ended: {e}") from None
        self.rtt_s += 0.2 * (time.perf_counter() - t0 - self.rtt_s)
        if "error" in f.header:
            raise error_from_jsonrpc(f.header["error"])
        res = f.header.get("result") or {}
        if res.get("shm"):
            view = self.shm_out.view(P.iter_nbytes(res.get("outputs", [])), res.get("shm_size"))
            try:
                return res, memoryview(bytearray(view))   # the next reply overwrites the buffer: keep a copy
            finally:
                view.release()
        return res, f.payload

    def close(self) -> None:
        super().close()
        if self.lease is not None:
            self.lease.close()
