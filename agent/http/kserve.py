"""KServe v2 (the Open Inference Protocol, as Triton's ``tritonclient.http`` speaks it) for tensor models.

    GET  /v2                                          server metadata
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/{model}[/versions/{variant}]      metadata from the manifest's signature
    GET  /v2/models/{model}[/versions/{variant}]/ready
    POST /v2/models/{model}[/versions/{variant}]/infer

A *version* is a variant id. The policy decides which variant serves: ``versions/{variant}/infer`` is
served only while that variant is the active one (else 400 "not at ready state", as Triton answers for
a version that is not loaded); ``/v2/models/{model}/infer`` takes whatever is active. Every reply names
the variant and device (``model_version``, ``parameters.agent_variant`` / ``agent_device`` and the
``x-agent-variant`` / ``x-agent-device`` headers).

Tensor data comes as JSON (``data``: flat or nested lists) or with the binary-data extension: the
``Inference-Header-Content-Length`` header gives the JSON header's size and each input's
``parameters.binary_data_size`` its raw little-endian bytes after it, in input order. Outputs are binary
when the request asks (``parameters.binary_data_output``, or ``binary_data`` per output). Requests run
through the App's own ``infer`` handler (validation, telemetry, energy). Errors are
``{"error": "message"}`` with 400 (bad request), 404 (unknown model or version), 413 (body over the
IPC frame limit, or a JSON part over 16 MiB), 503 (nothing ready).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent import __version__
from agent.control import QoS
from agent.errors import AgentError
from agent.http.common import (
    BadEncoding,
    BodyTooLarge,
    MessageError,
    decode_content,
    read_body,
    status_of,
)
from agent.ipc import protocol as P
from agent.ops.records import InferRequest
from agent.ops.service import Ops

# KServe datatype <-> the dtypes our wire protocol carries
TO_NUMPY = {"BOOL": "bool", "UINT8": "uint8", "INT8": "int8", "INT16": "int16", "INT32": "int32",
            "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
FROM_NUMPY = {v: k for k, v in TO_NUMPY.items()}
REQUEST_KEYS = {"id", "inputs", "outputs", "parameters"}
# the JSON part of a request: tensors as JSON lists cost ~40 bytes of Python objects per value, so they are
# bounded well below the binary limit (the IPC frame limit)
MAX_JSON = 16 << 20
INPUT_KEYS = {"name", "shape", "datatype", "data", "parameters"}


class KServeError(MessageError):
    """An error in KServe v2's shape."""


def _bad(message: str) -> KServeError:
    return KServeError(400, message)


def _dims(shape: tuple[int | str, ...]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def parse_request(body: bytes, header_len: str | None, inputs_wanted: dict[str, Any]) -> tuple[
        dict[str, Any], list[dict[str, Any]], bytes]:
    """(the JSON header, our tensor descriptors, the payload) from an infer body; KServeError otherwise."""
    if header_len is not None:
        if not header_len.strip().isdigit() or int(header_len) > len(body):
            raise _bad(f"Inference-Header-Content-Length {header_len!r} is not a size within the {len(body)}-byte body")
        n = int(header_len)
    else:
        n = len(body)
    if n > MAX_JSON:
        raise KServeError(413, f"the JSON part of the request is larger than {MAX_JSON} bytes; "
                               "send large tensors with the binary data extension")
    try:
        req = json.loads(body[:n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(f"the inference request header is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise _bad("the inference request must be a JSON object")
    unknown = sorted(set(req) - REQUEST_KEYS)
    if unknown:
        raise _bad(f"unknown request field {unknown[0]!r}; expected {', '.join(sorted(REQUEST_KEYS))}")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("'inputs' must be a non-empty list of tensors")
    binary = memoryview(body)[n:]
    off = 0
    descs: list[dict[str, Any]] = []
    parts: list[bytes | memoryview] = []
    for i, t in enumerate(inputs):
        if not isinstance(t, dict):
            raise _bad(f"inputs[{i}] must be an object with name, shape, datatype")
        extra = sorted(set(t) - INPUT_KEYS)
        if extra:
            raise _bad(f"inputs[{i}]: unknown field {extra[0]!r}")
        name, dt, shape = t.get("name"), t.get("datatype"), t.get("shape")
        if not isinstance(name, str) or name not in inputs_wanted:
            raise _bad(f"inputs[{i}]: unexpected input {name!r}; the model's inputs are {', '.join(inputs_wanted)}")
        if dt not in TO_NUMPY:
            raise _bad(f"input {name!r}: datatype {dt!r} is not supported; expected one of {', '.join(TO_NUMPY)}")
        if (not isinstance(shape, list) or len(shape) > P.MAX_RANK
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise _bad(f"input {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        np_dt = np.dtype(TO_NUMPY[dt])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"input {name!r}: parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in t:
                raise _bad(f"input {name!r}: give either 'data' or binary_data_size, not both")
            if not isinstance(size, int) or size != count * np_dt.itemsize:
                raise _bad(f"input {name!r}: binary_data_size {size!r} does not match shape {shape} of {dt} "
                           f"({count * np_dt.itemsize} bytes)")
            if off + size > len(binary):
                raise _bad(f"input {name!r}: needs {size} bytes of binary data, {len(binary) - off} left in the body")
            parts.append(binary[off:off + size])
            off += size
        else:
            if "data" not in t:
                raise _bad(f"input {name!r}: no 'data' and no binary_data_size")
            try:
                arr = np.asarray(t["data"], dtype=np_dt)
            except (TypeError, ValueError, OverflowError) as e:
                raise _bad(f"input {name!r}: data is not a list of {dt} values ({e})") from None
            if arr.size != count:
                raise _bad(f"input {name!r}: {arr.size} values given for shape {shape} ({count} values)")
            parts.append(np.ascontiguousarray(arr, dtype=np_dt.newbyteorder("<")).tobytes())
        descs.append({"name": name, "dtype": TO_NUMPY[dt], "shape": list(shape)})
    if off != len(binary):
        raise _bad(f"{len(binary) - off} bytes of binary data follow the inputs that describe none")
    return req, descs, b"".join(parts)


def output_choice(req: dict[str, Any], names: list[str]) -> list[tuple[str, bool]]:
    """[(output name, binary?)] as the request asks: its ``outputs`` list, else all outputs."""
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("'parameters' must be an object")
    default_binary = bool(params.get("binary_data_output", False))
    outs = req.get("outputs")
    if outs is None:
        return [(n, default_binary) for n in names]
    if not isinstance(outs, list):
        raise _bad("'outputs' must be a list of {name, parameters}")
    chosen = []
    for i, o in enumerate(outs):
        if not isinstance(o, dict) or o.get("name") not in names:
            raise _bad(f"outputs[{i}]: unknown output {o.get('name') if isinstance(o, dict) else o!r}; "
                       f"the model's outputs are {', '.join(names)}")
        op = o.get("parameters") or {}
        if not isinstance(op, dict):
            raise _bad(f"outputs[{i}]: parameters must be an object")
        chosen.append((o["name"], bool(op.get("binary_data", default_binary))))
    return chosen


def routes(ops: Ops) -> list[Route]:
    """The /v2 routes over the service layer (:class:`agent.ops.service.Ops`: ``manifests``, ``active``,
    ``infer``)."""
    limit = int(ops.cfg.max_frame)

    def manifest(request: Request) -> Any:
        name = request.path_params["model"]
        m = ops.manifests.get(name)
        if m is None or m.kind != "tensor":
            what = "is not a tensor model (use /api or /v1)" if m is not None else "is not in the zoo"
            raise KServeError(404, f"Request for unknown model: '{name}' {what}")
        version = request.path_params.get("version")
        if version is not None and version not in {v.id for v in m.variants}:
            raise KServeError(404, f"Request for unknown model: '{name}' has no version '{version}'; "
                                   f"versions: {', '.join(v.id for v in m.variants)}")
        return m

    def active(name: str) -> tuple[str, str] | None:
        a = ops.active(name)
        return (a.variant, a.device or "?") if a is not None else None

    def named(resp: Response, act: tuple[str, str] | None) -> Response:
        if act is not None:
            resp.headers["x-agent-variant"], resp.headers["x-agent-device"] = act
        return resp

    async def server_meta(request: Request) -> Response:
        return JSONResponse({"name": "ondevice-agent", "version": __version__,
                             "extensions": ["binary_tensor_data", "model_versions"]})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        names = [n for n, m in ops.manifests.items() if m.kind == "tensor"]
        ok = ops.ready.is_set() and all(active(n) is not None for n in names)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def model_meta(request: Request) -> Response:
        m = manifest(request)
        act = active(m.name)
        return named(JSONResponse({
            "name": m.name, "versions": [v.id for v in m.variants], "platform": "onnxruntime_onnx",
            "inputs": [{"name": s.name, "datatype": FROM_NUMPY.get(s.dtype, s.dtype.upper()), "shape": _dims(s.shape)}
                       for s in m.inputs],
            "outputs": [{"name": s.name, "datatype": FROM_NUMPY.get(s.dtype, s.dtype.upper()), "shape": _dims(s.shape)}
                        for s in m.outputs],
            "parameters": {"agent_active_variant": act[0] if act else None, "agent_device": act[1] if act else None,
                           "reference": m.reference}}), act)

    async def model_ready(request: Request) -> Response:
        m = manifest(request)
        act = active(m.name)
        version = request.path_params.get("version")
        ok = act is not None and (version is None or version == act[0])
        return named(JSONResponse({"name": m.name, "ready": ok}, status_code=200 if ok else 400), act)

    async def infer(request: Request) -> Response:
        m = manifest(request)
        version = request.path_params.get("version")
        act = active(m.name)
        if version is not None and (act is None or act[0] != version):
            raise KServeError(400, f"Request for unknown model: '{m.name}' version {version} is not at ready "
                                   f"state; the policy serves {act[0] if act else 'nothing'} now "
                                   f"(use /v2/models/{m.name}/infer, or `agentctl pin`)")
        try:
            raw = decode_content(await read_body(request, limit), request.headers.get("content-encoding"), limit)
        except BodyTooLarge as e:
            raise KServeError(413, str(e)) from None
        except BadEncoding as e:
            raise _bad(str(e)) from None
        req, descs, payload = parse_request(raw, request.headers.get("inference-header-content-length"),
                                            {s.name: s for s in m.inputs})
        chosen = output_choice(req, [s.name for s in m.outputs])
        try:
            rep = await ops.infer(InferRequest(m.name, descs, QoS(), None), memoryview(payload))
        except AgentError as e:
            raise KServeError(status_of(e), e.message) from None
        res, bufs = rep.wire(), rep.buffers()
        data = bufs[0] if len(bufs) == 1 else b"".join(bytes(memoryview(b)) for b in bufs)
        arrays = P.tensors_from(res["outputs"], memoryview(data))
        outs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for name, binary in chosen:
            a = arrays[name]
            o: dict[str, Any] = {"name": name, "datatype": FROM_NUMPY[a.dtype.name], "shape": list(a.shape)}
            if binary:
                b = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
                o["parameters"] = {"binary_data_size": len(b)}
                blobs.append(b)
            else:
                o["data"] = a.reshape(-1).tolist()
            outs.append(o)
        body: dict[str, Any] = {"model_name": m.name, "model_version": res["variant"], "outputs": outs,
                                "parameters": {"agent_variant": res["variant"], "agent_device": res["device"],
                                               "agent_server_ms": res.get("server_ms"),
                                               "agent_joules": res.get("joules")}}
        if isinstance(req.get("id"), str):
            body["id"] = req["id"]
        head = json.dumps(body, separators=(",", ":")).encode()
        headers = {"x-agent-variant": res["variant"], "x-agent-device": res["device"]}
        if blobs:
            headers["inference-header-content-length"] = str(len(head))
            return Response(b"".join([head, *blobs]), media_type="application/octet-stream", headers=headers)
        return Response(head, media_type="application/json", headers=headers)

    return [
        Route("/v2", server_meta, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{model}", model_meta, methods=["GET"]),
        Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", model_meta, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
