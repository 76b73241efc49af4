"""Raw-HTTP helpers for the door tests (what a misbehaving client sends)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

LLM = "tiny"
MLP = "mlp"


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url + path, data=body, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def error_of(body: bytes) -> str:
    """The ``{"error": "..."}`` message KServe and Ollama both answer with (a string, not an object)."""
    d = json.loads(body)
    assert isinstance(d, dict) and isinstance(d.get("error"), str) and d["error"], d
    return str(d["error"])


def declared_huge(url: str, path: str, size: int = 1 << 30) -> tuple[int, bytes]:
    """POST declaring a ``size``-byte body but sending 16 bytes: the answer must come without the rest."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {size}\r\n\r\n".encode() + b"{" * 16)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        length = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n")
                       if ln.lower().startswith(b"content-length")), None)
        while length is not None and len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, rest


def leave_mid_body(url: str, path: str) -> None:
    """Declare 1000 bytes, send 10, go away."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b'{"inputs":')


def wait_for(pred: Any, timeout: float = 30.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


def alive(daemon: Any, url: str) -> None:
    """agentd still answers on both doors (socket and HTTP)."""
    import urllib.request

    assert daemon.proc.poll() is None, daemon.log_text()[-3000:]
    with daemon.client() as c:
        assert c.status()["daemon"]["pid"] == daemon.proc.pid
    with urllib.request.urlopen(url + "/v2/health/live", timeout=30) as r:
        assert r.status == 200
