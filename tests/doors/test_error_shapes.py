"""Each door answers a wrong route, a wrong method and a 1 GB declared body in its own error shape."""

from __future__ import annotations

import json

import pytest
from doors_helpers import alive, declared_huge, raw

pytestmark = pytest.mark.integration


def _openai_error(body: bytes) -> dict:  # type: ignore[type-arg]
    err = json.loads(body)["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, err
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize("path,shape", [("/v1/nothing", "openai"), ("/v2/nothing", "message"),
                                        ("/api/nothing", "message"), ("/nothing", "openai")])
def test_a_wrong_route_gets_the_doors_error_shape(url, path, shape):
    st, _, body = raw(url, "GET", path)
    assert st == 404
    if shape == "openai":
        assert _openai_error(body)["code"] == "not_found"
    else:
        assert isinstance(json.loads(body)["error"], str)


def test_a_wrong_method_gets_405_in_the_doors_shape(url):
    st, _, body = raw(url, "GET", "/v1/chat/completions")
    assert st == 405 and _openai_error(body)["code"] == "method_not_allowed"
    st, _, body = raw(url, "DELETE", "/api/tags")
    assert st == 405 and isinstance(json.loads(body)["error"], str)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/generate", "/v2/models/mlp/infer"])
def test_a_1gb_declared_body_is_refused_before_it_is_read(url, doors_daemon, path):
    st, body = declared_huge(url, path)
    assert st == 413
    d = json.loads(body)
    msg = d["error"]["message"] if isinstance(d["error"], dict) else d["error"]
    assert "larger than" in msg
    alive(doors_daemon, url)
