"""The OpenAI-compatible routes, as a Starlette application over the agent's own ``App``.

    GET  /v1/models                  causal-lm models (with their variants and the active one)
    GET  /v1/models/{model}
    POST /v1/chat/completions        messages -> the model's chat template
    POST /v1/completions             a plain prompt
    GET  /health

Requests are translated to the agent's ``generate`` parameters and run through ``App.generate`` (the
same path as IPC ``generate``: validation, QoS hints, telemetry, energy). A streamed response waits for
the first token before it sends its headers, so a bad request still gets its HTTP error status and
every response can name the variant and device that serve it: ``system_fingerprint`` is
``"variant@device"``, the ``x-agent-variant`` / ``x-agent-device`` headers carry the same, and an extra
``agent`` object holds variant, device, timings and joules. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``. A client that disconnects mid-stream cancels its
generation (its KV memory is freed).

Differences from OpenAI: ``temperature`` defaults to 0 (greedy, reproducible), ``n`` must be 1,
``top_k``, ``deadline_ms``, ``min_quality`` and ``priority`` are accepted as extensions, unknown parameters are errors.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.errors import AgentError
from agent.http.common import DoorError, Gen, read_json, run_unless_disconnected, status_of
from agent.ops.service import Ops

log = logging.getLogger("agent.http")

MAX_BODY = 4 << 20
MAX_STOPS = 4
# OpenAI parameters we accept; the values we cannot honour are checked below
COMMON = {"model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n", "user",
          "frequency_penalty", "presence_penalty", "logprobs", "top_k", "deadline_ms", "min_quality", "priority"}
CHAT_KEYS = COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
COMPLETION_KEYS = COMMON | {"prompt", "echo", "suffix", "best_of"}
ROLE_MAP = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class ApiError(DoorError):
    """An error already in OpenAI's terms (status, type, param, code)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


def from_agent_error(e: AgentError) -> ApiError:
    """Our exception tree -> OpenAI's error shape; the status is the doors' one map (``status_of``)."""
    param = None
    msg = e.message
    if ":" in msg.split(" ")[0]:   # "temperature: expected ..." names the parameter
        param = msg.split(":", 1)[0]
    status = status_of(e)
    if status == 404:
        return ApiError(404, msg, "invalid_request_error", "model", "model_not_found")
    if status == 400:
        return ApiError(400, msg, "invalid_request_error", param, "invalid_parameter")
    if status == 403:
        return ApiError(403, msg, "permission_error", None, "permission_denied")
    if status == 429:
        return ApiError(429, msg, "rate_limit_error", None, "busy")
    return ApiError(status, msg, "server_error", None, type(e).__name__.lower())


# -- request translation -----------------------------------------------------------------------------
def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", "invalid_request_error", param, "invalid_parameter")


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):   # content parts: only text is supported
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"messages[{i}].content[{j}]", "only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"messages[{i}].content", f"expected a string or a list of text parts, got {type(content).__name__}")


def translate(body: Any, chat: bool) -> tuple[dict[str, Any], bool, bool]:
    """An OpenAI request body -> (agent generate params, stream?, include_usage?)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    allowed = CHAT_KEYS if chat else COMPLETION_KEYS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", "invalid_request_error",
                       unknown[0], "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "expected a model name")
    out: dict[str, Any] = {"model": model}
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _bad("messages", "expected a non-empty list of messages")
        conv = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict):
                raise _bad(f"messages[{i}]", "expected an object with role and content")
            role = ROLE_MAP.get(m.get("role"))  # type: ignore[arg-type]
            if role is None:
                raise _bad(f"messages[{i}].role",
                           f"expected system, developer, user or assistant, got {m.get('role')!r}")
            conv.append({"role": role, "content": _content_text(m.get("content"), i)})
        out["messages"] = conv
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise _bad("prompt", "expected a non-empty string (one prompt per request)")
        out["prompt"] = prompt
        for key, ok in (("echo", (None, False)), ("suffix", (None, "")), ("best_of", (None, 1))):
            if body.get(key) not in ok:
                raise _bad(key, "is not supported")
    mt = body.get("max_completion_tokens", body.get("max_tokens")) if chat else body.get("max_tokens")
    if mt is not None:
        out["max_tokens"] = mt
    for key in ("temperature", "top_p", "seed", "top_k", "deadline_ms", "min_quality", "priority"):
        if body.get(key) is not None:
            out[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop):
            raise _bad("stop", f"expected a string or up to {MAX_STOPS} non-empty strings")
        out["stop"] = stop
    n = body.get("n")
    if n not in (None, 1):
        raise _bad("n", "only n = 1 is supported")
    for key in ("frequency_penalty", "presence_penalty"):
        v = body.get(key)
        if v not in (None, 0, 0.0):
            raise _bad(key, "is not supported (only 0)")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") not in (None, 0):
        raise _bad("logprobs", "is not supported")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("user", "expected a string")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("stream", "expected true or false")
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if (not isinstance(so, dict) or set(so) - {"include_usage"}
                or not isinstance(so.get("include_usage", False), bool)):
            raise _bad("stream_options", "expected {\"include_usage\": true|false}")
        if not stream:
            raise _bad("stream_options", "is only allowed when stream is true")
        include_usage = bool(so.get("include_usage", False))
    out["stream"] = stream
    return out, stream, include_usage


# -- response shapes ---------------------------------------------------------------------------------
def _usage(res: dict[str, Any]) -> dict[str, Any]:
    u = res.get("usage") or {}
    p, c = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": int(u.get("cached_tokens") or 0)}}


def _agent_info(variant: str, device: str, res: dict[str, Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"variant": variant, "device": device}
    if res is not None:
        u = res.get("usage") or {}
        info.update({"ttft_ms": u.get("ttft_ms"), "decode_tokens_per_s": u.get("decode_tokens_per_s"),
                     "joules": res.get("joules"), "joules_per_token": res.get("joules_per_token"),
                     "meter": res.get("meter"), "retried": res.get("retried", False)})
    return info


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


def routes(ops: Ops) -> list[Route]:
    """The OpenAI routes over the service layer (:class:`agent.ops.service.Ops`: ``generate``, ``manifests``,
    ``active``)."""

    def model_entry(name: str) -> dict[str, Any]:
        m = ops.manifests[name]
        act = ops.active(name)
        active = {"variant": act.variant, "device": act.device} if act is not None else None
        created = int(m.folder.stat().st_mtime) if m.folder.exists() else 0
        return {"id": name, "object": "model", "created": created, "owned_by": "ondevice-agent",
                "agent": {"kind": m.kind, "reference": m.reference, "active": active,
                          "variants": [{"id": v.id, "precision": v.precision,
                                        "quality": vars(v.quality) if v.quality else None} for v in m.variants]}}

    def llm_names() -> list[str]:
        return sorted(n for n, m in ops.manifests.items() if m.kind == "causal-lm")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_entry(n) for n in llm_names()]})

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        if name not in llm_names():
            raise ApiError(404, f"The model '{name}' does not exist", "invalid_request_error", "model",
                           "model_not_found")
        return JSONResponse(model_entry(name))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def completion(request: Request, chat: bool) -> Response:
        body = await read_json(request, MAX_BODY, ApiError)
        params, stream, include_usage = translate(body, chat)
        model_name = params["model"]
        cid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        gen = Gen(ops.generate, params)
        obj = "chat.completion" if chat else "text_completion"
        if not stream:
            try:
                res = await run_unless_disconnected(request, gen)
            except AgentError as e:
                raise from_agent_error(e) from None
            if res is None:   # the client left: the generation was stopped, its KV freed
                return Response(status_code=499)
            variant, device = res["variant"], res["device"]
            text = res.get("text", "")
            finish = _finish(res.get("finish_reason"))
            choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": text},
                                       "logprobs": None, "finish_reason": finish}
                                      if chat
                                      else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
            return JSONResponse({"id": cid, "object": obj, "created": created, "model": model_name,
                                 "system_fingerprint": f"{variant}@{device}", "choices": [choice],
                                 "usage": _usage(res), "agent": _agent_info(variant, device, res)},
                                headers={"x-agent-variant": variant, "x-agent-device": device})

        try:
            kind, first = await gen.next()   # the first token, or the whole result (or its error)
        except AgentError as e:
            raise from_agent_error(e) from None
        except BaseException:
            gen.cancel()
            raise
        if kind == "end":
            variant, device = first["variant"], first["device"]
        else:
            variant, device = first.get("variant") or "?", first.get("device") or "?"
        fp = f"{variant}@{device}"
        headers = {"x-agent-variant": variant, "x-agent-device": device}

        chunk_obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: str | None, finish: str | None, role: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                ch: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                ch = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            d = {"id": cid, "object": chunk_obj, "created": created, "model": model_name,
                 "system_fingerprint": fp, "choices": [ch]}
            return "data: " + json.dumps(d, separators=(",", ":")) + "\n\n"

        async def events() -> AsyncIterator[str]:
            k, item = kind, first
            try:
                if chat:
                    yield chunk("", None, role=True)
                while k != "end":
                    if item.get("text"):
                        yield chunk(item["text"], None)
                    k, item = await gen.next()
                res = item
                if res.get("tail"):
                    yield chunk(res["tail"], None)
                last = json.loads(chunk(None if chat else "", _finish(res.get("finish_reason")))[6:])
                last["agent"] = _agent_info(variant, device, res)
                if not include_usage:
                    last["usage"] = None
                yield "data: " + json.dumps(last, separators=(",", ":")) + "\n\n"
                if include_usage:
                    yield "data: " + json.dumps({"id": cid, "object": chunk_obj, "created": created,
                                                 "model": model_name, "system_fingerprint": fp, "choices": [],
                                                 "usage": _usage(res)}, separators=(",", ":")) + "\n\n"
                yield "data: [DONE]\n\n"
            except AgentError as e:   # after the headers went out: an error event, as OpenAI does
                err = from_agent_error(e)
                yield "data: " + json.dumps({"error": {"message": err.message, "type": err.type,
                                                       "param": err.param, "code": err.code}}) + "\n\n"
            finally:
                gen.cancel()   # the client went away (or we are done): stop the generation, free its KV

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})

    async def chat_completions(request: Request) -> Response:
        return await completion(request, True)

    async def completions(request: Request) -> Response:
        return await completion(request, False)

    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
