"""Pieces every HTTP door shares: a bounded body reader, a generation running as a task, disconnect
watching, and the pseudo-peer the App's IPC handlers get for HTTP requests."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agent.errors import (
    AgentError,
    Busy,
    InvalidParams,
    LoadError,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from agent.ops.records import GenerateReply, GenerateRequest


class DoorError(Exception):
    """An error already in one door's terms; the ASGI app answers it with :meth:`response`."""

    def response(self) -> Response:
        raise NotImplementedError


class MessageError(DoorError):
    """``{"error": "message"}`` with an HTTP status: the error shape KServe v2 and Ollama share."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message

    def response(self) -> Response:
        return JSONResponse({"error": self.message}, status_code=self.status)


def status_of(e: AgentError) -> int:
    """The HTTP status for one of our errors: the one map every door (OpenAI, Ollama, KServe) uses. A bad
    request is a 4xx; a failure on our side is a 5xx (503 when it is about readiness: retry later)."""
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, InvalidParams):
        return 400
    if isinstance(e, PermissionDenied):
        return 403
    if isinstance(e, Busy):
        return 429
    if isinstance(e, Unavailable | LoadError):
        return 503
    return 500   # ExecutionFailed, WorkerDied, Timeout, ...: retryable server errors


class BodyTooLarge(Exception):
    """The declared or received body is over the door's limit (answered 413 in the door's shape)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


class BadEncoding(Exception):
    """A Content-Encoding we cannot decode (or a corrupt compressed body)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing a declared ``Content-Length`` over ``limit`` before reading anything
    and stopping as soon as a chunked body passes it (nothing beyond ``limit`` is held in memory)."""
    size = request.headers.get("content-length")
    if size is not None and size.strip().isdigit() and int(size) > limit:
        raise BodyTooLarge(limit)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge(limit)
    return bytes(buf)


async def read_json(request: Request, limit: int, error: Callable[[int, str], DoorError]) -> Any:
    """The body parsed as JSON; ``error(413 | 400, message)`` (the door's own error) otherwise."""
    try:
        raw = await read_body(request, limit)
    except BodyTooLarge as e:
        raise error(413, str(e)) from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(400, f"the request body is not valid JSON: {e}") from None


def decode_content(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (what tritonclient can send), bounded by ``limit``."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        return raw
    if enc not in ("gzip", "deflate"):
        raise BadEncoding(f"unsupported Content-Encoding {encoding!r}; expected gzip, deflate or identity")
    d = zlib.decompressobj(wbits=31 if enc == "gzip" else 15)
    try:
        out = d.decompress(raw, limit + 1)
    except zlib.error as e:
        raise BadEncoding(f"the {enc} body is corrupt: {e}") from None
    if len(out) > limit:
        raise BodyTooLarge(limit)
    return out


class Gen:
    """One generation (``Ops.generate``) running as a task; tokens and the end (the reply's ``wire()``)
    arrive on a queue. The params are checked inside the task, so a bad one is the generation's error."""

    def __init__(self, run: Callable[[GenerateRequest, Callable[[dict[str, Any]], None]], Awaitable[GenerateReply]],
                 params: dict[str, Any]) -> None:
        self.q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def go() -> dict[str, Any]:
            rep = await run(GenerateRequest.parse(params), lambda p: self.q.put_nowait(("token", p)))
            return rep.wire()
        self.task = asyncio.ensure_future(go())
        self.task.add_done_callback(lambda t: self.q.put_nowait(("end", None)))

    async def next(self) -> tuple[str, Any]:
        kind, p = await self.q.get()
        if kind == "end":
            return "end", self.task.result()   # raises the generation's error
        return kind, p

    def cancel(self) -> None:
        if not self.task.done():
            self.task.cancel()


async def disconnected(request: Request) -> None:
    """Returns when the client has gone (the body was already read, so the next message is the end)."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def run_unless_disconnected(request: Request, gen: Gen) -> dict[str, Any] | None:
    """The generation's result, or None when the client left first (the generation is then cancelled,
    which frees its KV memory). Raises the generation's own error."""
    disc = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({gen.task, disc}, return_when=asyncio.FIRST_COMPLETED)
        if not gen.task.done():
            return None
        res: dict[str, Any] = gen.task.result()
        return res
    finally:
        disc.cancel()
        gen.cancel()
