"""At the HTTP edge of a real `make run` server (gunicorn): over-long URIs and header blocks get the JSON error
shape, a chunked body is read, and a fresh server signs with its own random key."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest

from tests.deploy.live import MakeRunServer

pytestmark = pytest.mark.slow

DEVELOPMENT_CONSTANT = "django-insecure-medkg-development-key-not-for-production"  # the key the source once held


def request(server: MakeRunServer, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    try:
        connection.request(method, path, **kwargs)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def error_code(status: int, headers: dict[str, str], body: bytes, expected: int) -> str:
    assert status == expected, (status, body[:300])
    assert headers["content-type"].startswith("application/json"), body[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "details"}
    return str(error["code"])


@pytest.mark.parametrize("length", [5000, 8000])
def test_an_over_long_uri_is_a_json_414(make_run_server: MakeRunServer, length: int) -> None:
    path = "/v1/namespaces?" + "q=" + "x" * length
    assert error_code(*request(make_run_server, "GET", path), 414) == "uri_too_long"


def test_an_over_large_header_block_is_a_json_431(make_run_server: MakeRunServer) -> None:
    headers = {"X-Padding": "p" * 9000, "Authorization": f"Bearer {make_run_server.token}"}
    assert error_code(*request(make_run_server, "GET", "/v1/namespaces", headers=headers), 431) == "headers_too_large"


def test_a_chunked_body_is_read(make_run_server: MakeRunServer) -> None:
    body = json.dumps({"namespace": "single_vector.minilm.384.v1", "texts": ["aspirin", "insulin"]}).encode()
    headers = {"Authorization": f"Bearer {make_run_server.token}", "Content-Type": "application/json"}
    status, _, answer = request(
        make_run_server, "POST", "/v1/embed", body=iter([body[:10], body[10:]]), headers=headers, encode_chunked=True
    )
    assert status == 200, answer[:300]
    assert len(json.loads(answer)["embeddings"]) == 2


def test_a_fresh_make_run_refuses_a_token_signed_with_the_development_constant(make_run_server: MakeRunServer) -> None:
    claims = {
        "token_type": "access",
        "exp": int(time.time()) + 600,
        "jti": "forged",
        "tenant_id": "demo",
        "scopes": ["embed:admin"],
    }
    forged = jwt.encode(claims, DEVELOPMENT_CONSTANT, algorithm="HS256")
    body = json.dumps({"namespace": "single_vector.minilm.384.v1", "texts": ["a"]})
    for token, expected in [(forged, 401), (make_run_server.token, 200)]:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        status, _, answer = request(make_run_server, "POST", "/v1/embed", body=body, headers=headers)
        assert status == expected, answer[:300]
