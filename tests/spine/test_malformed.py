"""The daemon answers every malformed frame with a JSON-RPC error and keeps serving."""

import json
import socket
import struct

import numpy as np
import pytest

from agent.errors import InvalidParams, MethodNotFound, NotFound
from agent.ipc import protocol as P

pytestmark = pytest.mark.integration


def _raw(daemon):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(daemon.socket))
    return s


def _frame(header_bytes: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<II", 4 + len(header_bytes) + len(payload), len(header_bytes)) + header_bytes + payload


def _reply(s):
    return P.recv_frame(s).header


def _infer_header(descs, model="mlp", id_=1):
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": "infer",
                       "params": {"model": model, "inputs": descs}}).encode()


X = {"name": "x", "dtype": "float32", "shape": [1, 256]}
GOOD_PAYLOAD = np.ones((1, 256), np.float32).tobytes()

CASES = [
    ("bad json", _frame(b"{oops"), -32600),
    ("header not an object", _frame(b"[1,2]"), -32600),
    ("not json-rpc 2.0", _frame(json.dumps({"id": 1, "method": "status"}).encode()), -32600),
    ("params not an object",
     _frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "status", "params": [1]}).encode()), -32600),
    ("unknown method", _frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "format_disk"}).encode()), -32601),
    ("unknown model", _frame(_infer_header([X], model="nope"), GOOD_PAYLOAD), -32004),
    ("wrong dtype", _frame(_infer_header([{**X, "dtype": "float64"}]), GOOD_PAYLOAD * 2), -32602),
    ("wrong shape", _frame(_infer_header([{**X, "shape": [1, 255]}]), GOOD_PAYLOAD[:-4]), -32602),
    ("wrong rank", _frame(_infer_header([{**X, "shape": [256]}]), GOOD_PAYLOAD), -32602),
    ("unknown input name", _frame(_infer_header([{**X, "name": "z"}]), GOOD_PAYLOAD), -32602),
    ("missing input", _frame(_infer_header([]), b""), -32602),
    ("payload too short", _frame(_infer_header([X]), GOOD_PAYLOAD[:100]), -32602),
    ("payload too long", _frame(_infer_header([X]), GOOD_PAYLOAD + b"xx"), -32602),
    ("inputs not a list", _frame(_infer_header({"x": 1}), b""), -32602),
    ("model not a string",
     _frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "infer", "params": {"model": 5}}).encode()), -32602),
    ("unknown dtype", _frame(_infer_header([{**X, "dtype": "object"}]), GOOD_PAYLOAD), -32602),
    ("huge shape", _frame(_infer_header([{**X, "shape": [2**30, 2**30]}]), GOOD_PAYLOAD), -32602),
    ("pin unknown variant",
     _frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "pin",
                        "params": {"model": "mlp", "variant": "int3"}}).encode()), -32004),
    ("history bad duration",
     _frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "history", "params": {"since": "yesterday"}}).encode()),
     -32602),
    ("hold bad profile",
     _frame(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "hold", "params": {"profile": "turbo"}}).encode()),
     -32602),
]


@pytest.mark.parametrize("name,frame,code", CASES, ids=[c[0] for c in CASES])
def test_malformed_request_gets_error_reply_and_daemon_keeps_serving(shared_daemon, name, frame, code):
    daemon = shared_daemon
    with _raw(daemon) as s:
        s.sendall(frame)
        h = _reply(s)
        assert h["error"]["code"] == code, h
        # the same connection still works after a recoverable error
        s.sendall(P.encode_bytes(P.request(2, "status")))
        assert "result" in _reply(s)
    with daemon.client() as c:
        assert c.infer("mlp", {"x": np.ones((1, 256), np.float32)}).outputs["y"].shape == (1, 64)


def test_oversized_frame_gets_an_error_and_the_connection_closes(tensor_zoo, tmp_path):
    from tests.conftest import start_daemon

    d = start_daemon(tensor_zoo, tmp_path, "--max-frame", "4096")
    try:
        with _raw(d) as s:
            s.sendall(struct.pack("<I", 10 << 20))
            h = _reply(s)
            assert h["error"]["code"] == -32001 and "exceeds the limit of 4096" in h["error"]["message"]
            assert s.recv(1) == b""   # closed
        with d.client() as c:   # a 1 KB request still fits and is served
            assert c.infer("mlp", {"x": np.ones((1, 256), np.float32)}).variant == "fp32"
    finally:
        assert d.stop() == 0


def test_truncated_frames_and_garbage_then_disconnect_do_not_hurt_the_daemon(shared_daemon):
    daemon = shared_daemon
    for junk in (b"\x05", b"\x10\x00\x00\x00abc", b"\x00\x00\x00\x00", bytes(range(256)) * 4):
        with _raw(daemon) as s:
            s.sendall(junk)
    with daemon.client() as c:
        assert c.status()["models"]["mlp"]["active"]["alive"]


def test_client_library_raises_typed_errors(shared_daemon):
    daemon = shared_daemon
    with daemon.client() as c:
        with pytest.raises(NotFound):
            c.infer("nope", {"x": np.ones((1, 256), np.float32)})
        with pytest.raises(InvalidParams, match="expected dtype float32"):
            c.infer("mlp", {"x": np.ones((1, 256), np.float64)})
        with pytest.raises(MethodNotFound):
            c.call("nope")
