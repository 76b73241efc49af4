"""The one ASGI application behind ``agentd --http``: every door on one listener.

    /v1/...       OpenAI API (causal LMs)            agent/http/openai_api.py
    /v2/...       KServe v2 / Triton (tensor models)  agent/http/kserve.py
    /api/...      Ollama API (causal LMs)             agent/http/ollama.py
    /metrics      Prometheus text format              agent/http/metrics.py

An error is answered in the shape of the door it came through: a wrong route or method under ``/v2``
gets KServe's ``{"error": "..."}``, under ``/api`` Ollama's ``{"error": "..."}``, elsewhere OpenAI's.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agent.errors import AgentError
from agent.http import kserve, ollama, openai_api
from agent.http.common import DoorError, MessageError, status_of

log = logging.getLogger("agent.http")


def _error(path: str, status: int, message: str, code: str | None = None) -> Response:
    if path.startswith(("/v2", "/api")):   # KServe v2 and Ollama share {"error": "message"}
        return MessageError(status, message).response()
    if path.startswith("/metrics"):
        return PlainTextResponse(message + "\n", status_code=status)
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return openai_api.ApiError(status, message, kind, None, code).response()


def door_of(path: str) -> str:
    for prefix, door in (("/v1", "openai"), ("/v2", "kserve"), ("/api", "ollama"), ("/metrics", "metrics")):
        if path == prefix or path.startswith(prefix + "/"):
            return door
    return "other"


class CountResponses:
    """ASGI middleware: counts every HTTP response by door and status (``agent_http_responses_total``),
    so requests refused at a door (bad JSON, 413, 404) show up even though they never reach the App."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        door = door_of(scope.get("path", ""))

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.metrics.http_response(door, int(message["status"]))
            await send(message)

        await self.app(scope, receive, counting_send)


def build_app(agent_app: Any) -> Starlette:
    """``agent_app`` is the service layer, :class:`agent.ops.service.Ops`."""
    from agent.http.metrics import metrics_route

    async def on_door_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DoorError)
        return exc.response()

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(request.url.path, exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code)

    async def on_agent_error(request: Request, exc: Exception) -> Response:
        """One of ours a door did not translate itself: the doors' one status map, in the door's shape."""
        assert isinstance(exc, AgentError)
        if request.url.path.startswith(("/v2", "/api", "/metrics")):
            return _error(request.url.path, status_of(exc), exc.message)
        return openai_api.from_agent_error(exc).response()

    async def on_error(request: Request, exc: Exception) -> Response:
        log.error("http handler failed", exc_info=exc)
        return _error(request.url.path, 500, f"internal error: {type(exc).__name__}")

    routes: list[Route] = [*openai_api.routes(agent_app), *kserve.routes(agent_app), *ollama.routes(agent_app),
                           metrics_route(agent_app)]
    from starlette.middleware import Middleware

    return Starlette(routes=routes, exception_handlers={DoorError: on_door_error, HTTPException: on_http_error,
                                                        AgentError: on_agent_error, Exception: on_error},
                     middleware=[Middleware(CountResponses, metrics=agent_app.metrics)])
