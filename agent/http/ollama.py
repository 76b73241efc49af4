"""The Ollama API for causal LMs, as the ``ollama`` Python package and Ollama's tools speak it.

    POST /api/chat        messages -> the model's chat template; NDJSON stream (default) or one object
    POST /api/generate    a prompt (the chat template applied unless ``raw``); NDJSON or one object
    GET  /api/tags        the models, and each variant as a ``model:variant`` tag
    GET  /api/ps          what is loaded: the active variant, its device and memory
    POST /api/show        template, parameters, details of one model
    GET  /api/version
    GET  /                    "Ollama is running" (what Ollama's CLI checks)

Other Ollama routes (pull, push, create, copy, delete, embed) answer 404: models come from the zoo.

Model names: ``smollm2`` (or ``smollm2:latest``) is served by whatever variant the policy chose;
``smollm2:int4`` asks for a variant for that call. The policy stays in charge: the tag is honoured when
it is the variant serving now, otherwise the policy's variant serves and the reply says so (``model``
is ``name:served-variant``, header ``x-agent-variant``, and ``agent.requested_variant``). ``keep_alive``
is accepted and does not unload or load anything: what stays loaded is the policy's decision. A chat or
generate with no messages / empty prompt is Ollama's "load" request: it answers ``done_reason: "load"``
(``"unload"`` with ``keep_alive: 0``) once a variant is ready.

Options mapped: ``temperature``, ``num_predict`` (max tokens; -1 / absent: 256), ``stop``, ``seed``,
``top_k``, ``top_p``. Runtime-tuning options the agent owns (``num_ctx``, ``num_thread``, ``num_gpu`` …)
are accepted and ignored; other options, ``format``, ``tools``, ``images``, ``context`` and ``template``
overrides are refused with 400. ``temperature`` defaults to 0 (greedy), unlike Ollama's 0.8. Errors are
``{"error": "..."}`` with 400 / 404 (unknown model, as Ollama: ``model 'x' not found``) / 413 / 503; an
error after the stream began arrives as a last ``{"error": ...}`` line. A client that leaves mid-stream
cancels its generation (its KV memory is freed).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from agent import __version__
from agent.errors import AgentError
from agent.http.common import Gen, MessageError, read_json, run_unless_disconnected, status_of
from agent.ops.records import ActiveInfo
from agent.ops.service import Ops

MAX_BODY = 4 << 20
DEFAULT_MAX_TOKENS = 256
MAPPED_OPTIONS = {"temperature", "num_predict", "stop", "seed", "top_k", "top_p"}
IGNORED_OPTIONS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "num_thread", "numa", "use_mmap",
                   "use_mlock", "num_keep", "vocab_only", "logits_all", "embedding_only"}
COMMON_KEYS = {"model", "stream", "options", "keep_alive", "format", "think"}
CHAT_KEYS = COMMON_KEYS | {"messages", "tools"}
GENERATE_KEYS = COMMON_KEYS | {"prompt", "system", "raw", "suffix", "images", "context", "template"}
NEVER = "2318-08-20T00:00:00Z"   # expires_at of a model nothing unloads on a timer (what Ollama shows for -1)


class OllamaError(MessageError):
    """An error in Ollama's shape."""


def _bad(message: str) -> OllamaError:
    return OllamaError(400, message)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def split_name(name: Any) -> tuple[str, str | None]:
    """``"smollm2:int4"`` -> ("smollm2", "int4"); ``"smollm2"`` / ``":latest"`` -> ("smollm2", None)."""
    if not isinstance(name, str) or not name:
        raise _bad("model is required")
    base, _, tag = name.partition(":")
    return base, (tag if tag and tag != "latest" else None)


def options(opts: Any) -> dict[str, Any]:
    """Ollama ``options`` -> our generate parameters."""
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise _bad("options must be an object")
    out: dict[str, Any] = {}
    for k, v in opts.items():
        if k in IGNORED_OPTIONS or v is None:
            continue
        if k not in MAPPED_OPTIONS:
            raise _bad(f"option {k!r} is not supported; supported: {', '.join(sorted(MAPPED_OPTIONS))} "
                       f"(ignored: {', '.join(sorted(IGNORED_OPTIONS))})")
        if k == "num_predict":
            if isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -2:
                raise _bad(f"num_predict: expected a positive integer or -1, got {v!r}")
            if v > 0:
                out["max_tokens"] = v
        elif k == "stop":
            stops = [v] if isinstance(v, str) else v
            if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
                raise _bad("stop: expected a string or a list of non-empty strings")
            if stops:
                out["stop"] = stops
        else:
            out[k] = v
    out.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    return out


def translate(body: Any, chat: bool) -> tuple[str, str | None, dict[str, Any] | None, bool, Any]:
    """An Ollama request -> (model, requested variant, generate params or None for a load request,
    stream?, keep_alive)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    allowed = CHAT_KEYS if chat else GENERATE_KEYS
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad(f"unknown field {unknown[0]!r}; expected {', '.join(sorted(allowed))}")
    model, tag = split_name(body.get("model"))
    stream = body.get("stream", True)
    if stream is None:
        stream = True
    if not isinstance(stream, bool):
        raise _bad("stream: expected true or false")
    if body.get("format") not in (None, ""):
        raise _bad("format (structured output) is not supported")
    if body.get("think") not in (None, False):
        raise _bad("think is not supported by these models")
    params = {"model": model, **options(body.get("options"))}
    if chat:
        if body.get("tools"):
            raise _bad("tools are not supported")
        msgs = body.get("messages")
        if msgs is None or msgs == []:
            return model, tag, None, stream, body.get("keep_alive")
        if not isinstance(msgs, list):
            raise _bad("messages must be a list")
        conv = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise _bad(f"messages[{i}]: expected an object with role system, user or assistant")
            if m.get("images") or m.get("tool_calls"):
                raise _bad(f"messages[{i}]: images and tool calls are not supported")
            content = m.get("content", "")
            if not isinstance(content, str):
                raise _bad(f"messages[{i}].content must be a string")
            conv.append({"role": m["role"], "content": content})
        params["messages"] = conv
    else:
        for key in ("images", "context"):
            if body.get(key):
                raise _bad(f"{key} is not supported")
        for key in ("suffix", "template"):
            if body.get(key) not in (None, ""):
                raise _bad(f"{key} is not supported")
        prompt = body.get("prompt")
        if prompt is None or prompt == "":
            return model, tag, None, stream, body.get("keep_alive")
        if not isinstance(prompt, str):
            raise _bad("prompt must be a string")
        system = body.get("system")
        if system is not None and not isinstance(system, str):
            raise _bad("system must be a string")
        if body.get("raw"):
            params["prompt"] = prompt
        else:   # as Ollama: the model's template around the prompt (and the system message, if any)
            params["messages"] = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": prompt}]
    return model, tag, params, stream, body.get("keep_alive")


def _timings(res: dict[str, Any], total_s: float) -> dict[str, Any]:
    u = res.get("usage") or {}
    n = int(u.get("completion_tokens") or 0)
    ttft_ns = int(float(u.get("ttft_ms") or 0) * 1e6)
    tps = u.get("decode_tokens_per_s")
    eval_ns = int(n / tps * 1e9) if tps else max(0, int(total_s * 1e9) - ttft_ns)
    return {"total_duration": int(total_s * 1e9), "load_duration": 0,
            "prompt_eval_count": int(u.get("prompt_tokens") or 0), "prompt_eval_duration": ttft_ns,
            "eval_count": n, "eval_duration": eval_ns}


def routes(ops: Ops) -> list[Route]:
    """The /api routes over the service layer (:class:`agent.ops.service.Ops`: ``generate``, ``manifests``,
    ``active``)."""

    def llm(name: str) -> Any:
        m = ops.manifests.get(name)
        if m is None or m.kind != "causal-lm":
            raise OllamaError(404, f"model '{name}' not found")
        return m

    def active(name: str) -> ActiveInfo | None:
        return ops.active(name)

    def details(m: Any, variant_id: str | None) -> dict[str, Any]:
        v = next((v for v in m.variants if v.id == variant_id), None) or m.variant(m.reference)
        cfg = (m.llm or {}).get("config") or {}
        return {"parent_model": "", "format": "onnx", "family": str(cfg.get("architecture") or "llama"),
                "families": [str(cfg.get("architecture") or "llama")], "parameter_size": "",
                "quantization_level": v.precision.upper()}

    def entry(m: Any, variant_id: str | None) -> dict[str, Any]:
        v = next((v for v in m.variants if v.id == variant_id), None)
        shown = v or m.variant(m.reference)
        tag = f"{m.name}:{variant_id}" if variant_id else m.name
        mtime = m.folder.stat().st_mtime if m.folder.exists() else 0.0
        return {"name": tag, "model": tag,
                "modified_at": datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z"),
                "size": int(shown.size_bytes or 0), "digest": shown.sha256 or "", "details": details(m, shown.id)}

    def llms() -> list[Any]:
        return [m for _, m in sorted(ops.manifests.items()) if m.kind == "causal-lm"]

    async def root(request: Request) -> Response:   # Ollama's CLI checks that the server is up with HEAD /
        return PlainTextResponse("Ollama is running (ondevice-agent: /api Ollama, /v1 OpenAI, /v2 KServe, /metrics)")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def tags(request: Request) -> Response:
        out = []
        for m in llms():
            out.append(entry(m, None))
            out.extend(entry(m, v.id) for v in m.variants)
        return JSONResponse({"models": out})

    async def ps(request: Request) -> Response:
        out = []
        for m in llms():
            h = active(m.name)
            if h is None:
                continue
            e = entry(m, h.variant)
            rss = int(h.rss_bytes or e["size"])
            out.append({**e, "size": rss, "size_vram": 0 if (h.device or "cpu") == "cpu" else rss,
                        "expires_at": NEVER, "context_length": int((m.llm or {}).get("context_length") or 0),
                        "agent": {"variant": h.variant, "device": h.device, "pid": h.pid}})
        return JSONResponse({"models": out})

    async def show(request: Request) -> Response:
        body = await read_json(request, MAX_BODY, OllamaError)
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        base, tag = split_name(body.get("model") or body.get("name"))
        m = llm(base)
        if tag is not None and tag not in m.variant_ids():
            raise OllamaError(404, f"model '{base}:{tag}' not found")
        t = m.llm or {}
        cfg = t.get("config") or {}
        arch = str(cfg.get("architecture") or "llama")
        params = f"temperature 0\nnum_predict {DEFAULT_MAX_TOKENS}\n"   # our defaults (greedy)
        h = active(base)
        return JSONResponse({
            "modelfile": f"# served by ondevice-agent; variants: {', '.join(m.variant_ids())}\nFROM {m.name}\n",
            "parameters": params, "template": t.get("chat_template") or "",
            "details": details(m, tag or (h.variant if h else None)),
            "model_info": {"general.architecture": arch, f"{arch}.context_length": t.get("context_length"),
                           f"{arch}.block_count": t.get("num_layers"), f"{arch}.vocab_size": t.get("vocab_size"),
                           "agent.variants": m.variant_ids(), "agent.reference": m.reference,
                           "agent.active_variant": h.variant if h else None, "agent.device": h.device if h else None},
            "capabilities": ["completion"], "modified_at": entry(m, None)["modified_at"]})

    async def converse(request: Request, chat: bool) -> Response:
        body = await read_json(request, MAX_BODY, OllamaError)
        model, tag, params, stream, keep_alive = translate(body, chat)
        m = llm(model)
        if tag is not None and tag not in m.variant_ids():
            raise OllamaError(404, f"model '{model}:{tag}' not found")
        created = _now()
        if params is None:   # a load / unload request: the policy decides, we report what is ready
            h = active(model)
            if h is None:
                raise OllamaError(503, f"no variant of '{model}' is ready")
            reason = "unload" if keep_alive in (0, "0", "0s", "0m") else "load"
            out: dict[str, Any] = {"model": f"{model}:{h.variant}", "created_at": created, "done": True,
                                   "done_reason": reason}
            out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            return JSONResponse(out, headers={"x-agent-variant": h.variant, "x-agent-device": h.device or "?"})
        t0 = time.perf_counter()
        gen = Gen(ops.generate, params)

        def piece(variant: str, text: str) -> dict[str, Any]:
            d: dict[str, Any] = {"model": f"{model}:{variant}", "created_at": _now()}
            d.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
            return d

        def final(res: dict[str, Any], text: str) -> dict[str, Any]:
            d = piece(res["variant"], text)
            d.update({"done": True, "done_reason": res.get("finish_reason") or "stop",
                      **_timings(res, time.perf_counter() - t0),
                      "agent": {"variant": res["variant"], "device": res["device"], "requested_variant": tag,
                                "joules": res.get("joules"), "joules_per_token": res.get("joules_per_token"),
                                "retried": res.get("retried", False)}})
            return d

        if not stream:
            try:
                res = await run_unless_disconnected(request, gen)
            except AgentError as e:
                raise OllamaError(status_of(e), e.message) from None
            if res is None:
                return Response(status_code=499)
            return JSONResponse(final(res, res.get("text", "")),
                                headers={"x-agent-variant": res["variant"], "x-agent-device": res["device"]})

        try:
            kind, first = await gen.next()   # the first token (or the whole result, or its error)
        except AgentError as e:
            raise OllamaError(status_of(e), e.message) from None
        except BaseException:
            gen.cancel()
            raise
        variant = first["variant"] if kind == "end" else (first.get("variant") or "?")
        device = first["device"] if kind == "end" else (first.get("device") or "?")

        def line(d: dict[str, Any]) -> str:
            return json.dumps(d, separators=(",", ":")) + "\n"

        async def lines() -> AsyncIterator[str]:
            k, item = kind, first
            try:
                while k != "end":
                    if item.get("text"):
                        yield line({**piece(variant, item["text"]), "done": False})
                    k, item = await gen.next()
                yield line(final(item, item.get("tail") or ""))
            except AgentError as e:   # after the headers went out: a last error line, as Ollama does
                yield line({"error": e.message})
            finally:
                gen.cancel()   # the client went away (or we are done): stop the generation, free its KV

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"x-agent-variant": variant, "x-agent-device": device})

    async def chat_ep(request: Request) -> Response:
        return await converse(request, True)

    async def generate_ep(request: Request) -> Response:
        return await converse(request, False)

    return [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/chat", chat_ep, methods=["POST"]),
        Route("/api/generate", generate_ep, methods=["POST"]),
    ]
