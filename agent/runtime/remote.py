"""The remote device: a variant served by an inference server that speaks the KServe v2 protocol.

Triton Inference Server, KServe's ModelServer, Seldon MLServer and OpenVINO Model Server all speak it
(``GET /v2/health/ready``, ``GET /v2/models/NAME[/versions/V]``, ``POST …/infer``). This is the client
side only, on the standard library's ``http.client`` with one keep-alive connection, sending tensors in
the binary tensor data extension (a JSON header, then raw little-endian bytes; the header's length in
``Inference-Header-Content-Length``), and reading either binary or JSON ``data`` outputs back.

Inside a worker process :class:`RemoteSession` stands where an ``onnxruntime.InferenceSession`` stands
(``get_inputs``, ``get_outputs``, ``run``), so a remote variant loads, warms up, hot-swaps, drains and
restarts exactly like a local one, and the worker's CPU time per request is the *local* cost of
offloading (encoding, the socket; a radio's cost per byte is added when the manifest gives one).
Connection failures, timeouts and 5xx answers raise :class:`RemoteUnavailable`; the runtime then fails
over to a local variant. A 4xx answer is the request's fault and raises :class:`InvalidParams`.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from agent.errors import InvalidParams, LoadError, RemoteUnavailable

# numpy dtype name -> KServe v2 datatype
V2_TYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
            "int16": "INT16", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL"}
NP_TYPES = {v: k for k, v in V2_TYPES.items()}
ORT_TYPE_OF = {"float32": "tensor(float)", "float16": "tensor(float16)", "float64": "tensor(double)",
               "int64": "tensor(int64)", "int32": "tensor(int32)", "int16": "tensor(int16)", "int8": "tensor(int8)",
               "uint8": "tensor(uint8)", "bool": "tensor(bool)"}
HEADER_LEN = "Inference-Header-Content-Length"


def parse_endpoint(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of ``http[s]://host[:port][/prefix]``; LoadError when malformed."""
    if not isinstance(url, str) or not url:
        raise LoadError(f"remote endpoint: expected an http(s) URL, got {url!r}")
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise LoadError(f"remote endpoint: expected http://host:port or https://host:port, got {url!r}")
    if u.query or u.fragment or u.username or u.password:
        raise LoadError(f"remote endpoint: no query, fragment or credentials in the URL, got {url!r}")
    try:
        port = u.port or (443 if u.scheme == "https" else 80)
    except ValueError:
        raise LoadError(f"remote endpoint: bad port in {url!r}") from None
    return u.scheme, u.hostname, port, u.path.rstrip("/")


class KServeClient:
    """One keep-alive HTTP connection to a KServe v2 server. Not thread-safe (a worker runs one request
    at a time); counts the bytes it sends and receives."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.scheme, self.host, self.port, self.prefix = parse_endpoint(url)
        self.timeout_s = float(timeout_s)
        self.conn: http.client.HTTPConnection | None = None
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        c = cls(self.host, self.port, timeout=self.timeout_s)
        c.connect()
        if c.sock is not None:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request; a stale keep-alive connection is reopened once. RemoteUnavailable when the server
        cannot be reached, times out, or answers 5xx."""
        full = self.prefix + path
        for attempt in (0, 1):
            reused = self.conn is not None
            try:
                if self.conn is None:
                    self.conn = self._connect()
                self.conn.request(method, full, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                hdrs = {k.lower(): v for k, v in r.getheaders()}
                if r.getheader("connection", "").lower() == "close":
                    self.close()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if reused and attempt == 0 and not isinstance(e, (TimeoutError, socket.timeout)):
                    continue   # the server closed an idle keep-alive connection: one fresh try
                raise RemoteUnavailable(f"{self.url}: {type(e).__name__}: {e}".rstrip(": "),
                                        data={"endpoint": self.url}) from None
            self.bytes_sent += len(body or b"") + len(full) + 64
            self.bytes_received += len(data) + 64
            if r.status >= 500:
                raise RemoteUnavailable(f"{self.url}{full}: HTTP {r.status}: {_message(data)}",
                                        data={"endpoint": self.url, "status": r.status})
            return r.status, hdrs, data
        raise RemoteUnavailable(f"{self.url}: unreachable")

    def get_json(self, path: str) -> tuple[int, Any]:
        status, _, data = self.request("GET", path)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def ready(self) -> bool:
        return self.get_json("/v2/health/ready")[0] == 200

    def model_path(self, model: str, version: str | None = None) -> str:
        if not model or "/" in model or ".." in model:
            raise LoadError(f"remote model name: expected a plain name, got {model!r}")
        return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")

    def metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        status, meta = self.get_json(self.model_path(model, version))
        if status != 200 or not isinstance(meta, dict):
            raise LoadError(f"{self.url}: model {model!r} is not served there (HTTP {status})")
        return meta

    def model_ready(self, model: str, version: str | None = None) -> bool:
        return self.get_json(self.model_path(model, version) + "/ready")[0] == 200

    def infer(self, model: str, feed: dict[str, np.ndarray], outputs: list[str],
              version: str | None = None) -> dict[str, np.ndarray]:
        head_inputs = []
        blobs = []
        for name, arr in feed.items():
            arr = np.ascontiguousarray(arr)
            dt = V2_TYPES.get(arr.dtype.name)
            if dt is None:
                raise InvalidParams(f"input {name!r}: dtype {arr.dtype} has no KServe v2 datatype")
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            head_inputs.append({"name": name, "shape": list(arr.shape), "datatype": dt,
                                "parameters": {"binary_data_size": len(raw)}})
            blobs.append(raw)
        head = json.dumps({"inputs": head_inputs,
                           "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs]}).encode()
        body = head + b"".join(blobs)
        status, hdrs, data = self.request(
            "POST", self.model_path(model, version) + "/infer", body,
            {"Content-Type": "application/octet-stream", HEADER_LEN: str(len(head))})
        if status != 200:
            raise InvalidParams(f"remote inference failed: HTTP {status}: {_message(data)}")
        return decode_response(data, hdrs.get(HEADER_LEN.lower()))


def decode_response(data: bytes, header_len: str | None) -> dict[str, np.ndarray]:
    """The outputs of a v2 infer response, binary (with a header length) or JSON."""
    n = int(header_len) if header_len else len(data)
    try:
        head = json.loads(data[:n])
    except ValueError:
        raise RemoteUnavailable("remote server sent an infer response that is not JSON") from None
    out: dict[str, np.ndarray] = {}
    off = n
    for o in head.get("outputs") or []:
        dt = NP_TYPES.get(o.get("datatype", ""))
        if dt is None:
            raise InvalidParams(f"remote output {o.get('name')!r}: unsupported datatype {o.get('datatype')!r}")
        shape = [int(d) for d in o.get("shape", [])]
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            arr = np.frombuffer(data, dtype=np.dtype(dt).newbyteorder("<"), count=int(np.prod(shape)),
                                offset=off).astype(dt).reshape(shape)
            off += int(size)
        else:
            arr = np.asarray(o.get("data", []), dtype=dt).reshape(shape)
        out[str(o.get("name"))] = arr
    return out


def _message(data: bytes) -> str:
    try:
        d = json.loads(data)
        return str(d.get("error") or d.get("detail") or d)[:300] if isinstance(d, dict) else str(d)[:300]
    except ValueError:
        return data[:300].decode("utf-8", "replace")


@dataclass(frozen=True)
class _Arg:
    """What ``sess.get_inputs()`` items look like: name, ORT type string, shape."""
    name: str
    type: str
    shape: list[Any]


class RemoteSession:
    """An InferenceSession look-alike whose ``run`` is one KServe v2 infer call."""

    def __init__(self, client: KServeClient, model: str, version: str | None,
                 inputs: list[_Arg], outputs: list[_Arg]) -> None:
        self.client, self.model, self.version = client, model, version
        self._inputs, self._outputs = inputs, outputs

    def get_inputs(self) -> list[_Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Arg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [f"remote:{self.client.url}/{self.model}"]

    def close(self) -> None:
        """Close the keep-alive connection (a worker's ends with its process; an in-process caller's here)."""
        self.client.close()

    def run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        want = names or [o.name for o in self._outputs]
        got = self.client.infer(self.model, feed, want, self.version)
        missing = [n for n in want if n not in got]
        if missing:
            raise InvalidParams(f"remote server returned no output {missing[0]!r}")
        return [got[n] for n in want]


def _args(meta_list: Any, what: str) -> list[_Arg]:
    out = []
    for t in meta_list or []:
        dt = NP_TYPES.get(t.get("datatype", ""))
        if dt is None:
            raise LoadError(f"remote {what} {t.get('name')!r}: unsupported datatype {t.get('datatype')!r}")
        shape = [d if isinstance(d, int) and d >= 0 else None for d in t.get("shape", [])]
        out.append(_Arg(str(t["name"]), ORT_TYPE_OF[dt], shape))
    return out


def open_remote(remote: dict[str, Any]) -> tuple[RemoteSession, dict[str, Any]]:
    """Connect, check the server and the model are ready, read the model's signature. Raises LoadError."""
    t0 = time.perf_counter()
    url, model = str(remote.get("endpoint", "")), str(remote.get("model", ""))
    version = remote.get("version") or None
    client = KServeClient(url, float(remote.get("timeout_s", 5.0)))
    try:
        if not client.ready():
            raise LoadError(f"{url}: server is not ready")
        meta = client.metadata(model, version)
        if not client.model_ready(model, version):
            raise LoadError(f"{url}: model {model!r} is not ready")
        inputs, outputs = _args(meta.get("inputs"), "input"), _args(meta.get("outputs"), "output")
    except RemoteUnavailable as e:
        client.close()
        raise LoadError(f"remote server unreachable: {e.message}") from None
    except BaseException:
        client.close()   # refused: nobody else holds the keep-alive connection it opened
        raise
    sess = RemoteSession(client, model, version, inputs, outputs)
    where = f"remote:{url}/{model}"
    info = {"device": {"kind": "remote", "provider": where, "vendor": meta.get("platform") or "kserve-v2",
                       "device_id": 0, "label": where},
            "providers": [where], "assignment": {where: 1}, "remote": {"endpoint": url, "model": model,
                                                                    "version": version,
                                                                    "platform": meta.get("platform")},
            "load_ms": (time.perf_counter() - t0) * 1e3}
    return sess, info


def probe(url: str, model: str, timeout_s: float = 1.0) -> tuple[bool, str]:
    """(reachable, why): the server is ready and serves ``model``. Never raises."""
    try:
        c = KServeClient(url, timeout_s)
    except LoadError as e:
        return False, e.message
    try:
        if not c.ready():
            return False, "server not ready"
        if not c.model_ready(model):
            return False, f"model {model!r} not ready"
        return True, "ready"
    except (RemoteUnavailable, LoadError) as e:
        return False, e.message
    finally:
        c.close()
