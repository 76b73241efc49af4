import struct

import numpy as np
import pytest

from agent.errors import FrameTooLarge, InvalidParams, ProtocolError
from agent.ipc import protocol as P


def test_frame_round_trips_header_and_tensors_in_pieces():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    descs, bufs = P.tensor_descs({"x": x, "ids": ids})
    data = P.encode_bytes(P.request(7, "infer", {"inputs": descs}), bufs)
    r = P.FrameReader()
    frames = []
    for i in range(0, len(data), 5):  # byte-by-byte-ish delivery
        frames += r.feed(data[i:i + 5])
    assert len(frames) == 1
    f = frames[0]
    assert f.header["id"] == 7 and f.header["method"] == "infer"
    out = P.tensors_from(f.header["params"]["inputs"], f.payload)
    np.testing.assert_array_equal(out["x"], x)
    np.testing.assert_array_equal(out["ids"], ids)


def test_reader_refuses_oversized_length_prefix_before_reading_body():
    r = P.FrameReader(max_frame=1000)
    with pytest.raises(FrameTooLarge):
        r.feed(struct.pack("<I", 10_000))


def test_bad_json_header_becomes_error_in_place_and_stream_continues():
    good = P.encode_bytes(P.request(1, "status"))
    body = b"{not json"
    bad = struct.pack("<II", 4 + len(body), len(body)) + body
    frames = P.FrameReader().feed(bad + good)
    assert isinstance(frames[0], ProtocolError)
    assert frames[1].header["method"] == "status"


def test_header_length_beyond_body_is_a_protocol_error():
    bad = struct.pack("<II", 4 + 3, 100) + b"abc"
    (f,) = P.FrameReader().feed(bad)
    assert isinstance(f, ProtocolError)


@pytest.mark.parametrize("desc,err", [
    ({"name": "x", "dtype": "complex64", "shape": [1]}, "unknown dtype"),
    ({"name": "x", "dtype": "float32", "shape": [-1]}, "shape"),
    ({"name": "x", "dtype": "float32", "shape": "1,2"}, "shape"),
    ({"name": "", "dtype": "float32", "shape": [1]}, "name"),
    ("x", "object"),
])
def test_bad_tensor_descriptions_are_invalid_params(desc, err):
    with pytest.raises(InvalidParams, match=err):
        P.tensors_from([desc], memoryview(b"\0" * 4))


def test_payload_longer_or_shorter_than_described_is_rejected():
    d = [{"name": "x", "dtype": "float32", "shape": [2]}]
    with pytest.raises(InvalidParams, match="needs 8 bytes"):
        P.tensors_from(d, memoryview(b"\0" * 4))
    with pytest.raises(InvalidParams, match="beyond"):
        P.tensors_from(d, memoryview(b"\0" * 12))
