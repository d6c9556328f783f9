"""The probe's 500s, each a regression test: every one answers a 4xx JSON error, and nothing poisons search.

Real model, real FAISS and the sparse store, PostgreSQL; ingestion jobs run inline on commit.
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from django.conf import settings
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from namespaces.models import Namespace
from tests.conftest import DEFAULT_NAMESPACE, Api

DOCUMENTS = f"/v1/namespaces/{DEFAULT_NAMESPACE}/documents"
SEARCH = f"/v1/namespaces/{DEFAULT_NAMESPACE}/search"
SPARSE_NAMESPACE = "sparse.splade_tiny.30522.v1"


@pytest.fixture(autouse=True)
def _inline_ingestion(settings: Any) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"


@pytest.fixture
def ingest(api: Api, django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    def post(token: str, documents: list[dict[str, Any]], path: str = DOCUMENTS) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return api.post(path, {"tenant_id": "tenant-a", "documents": documents}, token=token)

    return post


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The uniform JSON error shape with this status, whatever the code."""
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
    return body


def nested(depth: int) -> str:
    """JSON text of an object nesting `depth` levels, written without recursion (json.dumps stops near 1,000)."""
    return '{"k": ' * (depth - 1) + '{"leaf": "v"}' + "}" * (depth - 1)


@pytest.mark.parametrize("namespace", [DEFAULT_NAMESPACE, SPARSE_NAMESPACE])
@pytest.mark.parametrize("key", ["-1", "-9223372036854775809", "0", "12", "1e3"])
def test_a_filter_key_that_looks_like_a_number_matches_that_object_key_on_dense_and_sparse_search(
    synced: dict[str, Namespace], api: Api, ingest: Any, token_a_write: str, key: str, namespace: str
) -> None:
    documents = [
        {"id": "d1", "text": "aspirin", "metadata": {key: "v"}},
        {"id": "d2", "text": "aspirin", "metadata": {key: "w", "other": "v"}},
        {"id": "d3", "text": "aspirin", "metadata": {"list": ["v"]}},
    ]
    assert ingest(token_a_write, documents, path=f"/v1/namespaces/{namespace}/documents").status_code == 202
    for value, expected in [("v", ["d1"]), (["v", "w"], ["d1", "d2"])]:
        body = {"tenant_id": "tenant-a", "query": "aspirin", "filters": {key: value}}
        response = api.post(f"/v1/namespaces/{namespace}/search", body, token=token_a_write)
        assert response.status_code == 200, response.content[:300]
        assert sorted(hit["id"] for hit in response.json()["hits"]) == expected


@pytest.mark.parametrize("depth", [2, 16, 17, 252, 253, 254, 255, 600, 960, 1200, 100_000])
def test_metadata_deeper_than_the_limit_is_refused_at_accept_and_search_never_fails(
    synced: dict[str, Namespace], api: Api, token_a_write: str, django_capture_on_commit_callbacks: Any, depth: int
) -> None:
    raw = (
        f'{{"tenant_id": "tenant-a", "documents": [{{"id": "deep", "text": "aspirin", "metadata": {nested(depth)}}}]}}'
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(DOCUMENTS, raw=raw, token=token_a_write)
    limit = settings.MEDKG_METADATA_MAX_DEPTH
    if depth <= limit:
        assert response.status_code == 202, response.content[:300]
    else:
        message = json.dumps(error_of(response, 400)["error"])
        assert (
            f"limit of {limit} levels" in message or "depth limit exceeded" in message
        )  # the JSON parser's, past 1,024
    found = api.post(SEARCH, {"tenant_id": "tenant-a", "query": "aspirin", "k": 5}, token=token_a_write)
    assert found.status_code == 200, found.content[:300]
    assert [hit["id"] for hit in found.json()["hits"]] == (["deep"] if depth <= limit else [])


def test_the_metadata_limit_is_far_below_any_parser_limit() -> None:
    assert 1 <= settings.MEDKG_METADATA_MAX_DEPTH <= 64


def test_metadata_over_the_size_limit_is_a_400_naming_it(
    synced: dict[str, Namespace], api: Api, token_a_write: str
) -> None:
    big = {"note": "x" * (settings.MEDKG_METADATA_MAX_BYTES + 1)}
    response = api.post(
        DOCUMENTS,
        {"tenant_id": "tenant-a", "documents": [{"id": "big", "text": "t", "metadata": big}]},
        token=token_a_write,
    )
    body = error_of(response, 400)
    assert str(settings.MEDKG_METADATA_MAX_BYTES) in json.dumps(body["error"]["details"])


def test_a_token_whose_exp_is_a_string_is_a_401(synced: dict[str, Namespace], api: Api, tenant_a: Any) -> None:
    for exp in ["tomorrow", str(int(time.time()) + 600), None, [1], {"a": 1}, 1e400]:
        payload = {"token_type": "access", "exp": exp, "jti": "j", "tenant_id": "tenant-a", "scopes": ["embed:read"]}
        token = jwt.encode(payload, settings.SIMPLE_JWT["SIGNING_KEY"], algorithm="HS256")
        response = api.post("/v1/embed", {"namespace": DEFAULT_NAMESPACE, "texts": ["a"]}, token=token)
        error_of(response, 401)


def test_openai_embeddings_checks_tenant_id_against_the_token(api: Api, synced: Any, token_a_write: str) -> None:
    refused = api.post(
        "/v1/embeddings", {"model": DEFAULT_NAMESPACE, "input": "a", "tenant_id": "tenant-b"}, token=token_a_write
    )
    error_of(refused, 403)
    assert refused.json()["error"]["code"] == "tenant_mismatch"
    same = api.post(
        "/v1/embeddings", {"model": DEFAULT_NAMESPACE, "input": "a", "tenant_id": "tenant-a"}, token=token_a_write
    )
    assert same.status_code == 200


def repository_strings() -> set[str]:
    """Every string constant of the repository's Python, YAML, TOML, env and Markdown files (8+ characters)."""
    root = Path(settings.BASE_DIR)
    found: set[str] = set()
    skipped = {".venv", "var", "node_modules", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
    for path in root.rglob("*"):
        if skipped & set(path.relative_to(root).parts) or not path.is_file():
            continue
        if path.suffix == ".py":
            tree = ast.parse(path.read_text())
            found |= {
                node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            }
        elif path.suffix in {".yaml", ".yml", ".toml", ".env", ".md", ".cfg", ".ini"} or path.name.endswith(".example"):
            found |= set(re.findall(r"[\w\-.:/+=]{8,}", path.read_text(errors="replace")))
    return {value.strip() for value in found if len(value.strip()) >= 8}


def test_a_token_signed_with_any_constant_string_of_the_repository_is_refused(
    synced: dict[str, Namespace], api: Api, tenant_a: Any
) -> None:
    candidates = repository_strings() | {"django-insecure-medkg-development-key-not-for-production"}
    assert len(candidates) > 1000  # the walk really read the tree
    assert settings.SIMPLE_JWT["SIGNING_KEY"] not in candidates
    payload = {
        "token_type": "access",
        "exp": int(time.time()) + 600,
        "jti": "forged",
        "tenant_id": "tenant-a",
        "scopes": ["embed:admin"],
    }
    for key in candidates:
        forged = jwt.encode(payload, key, algorithm="HS256")
        with pytest.raises(TokenError):
            AccessToken(forged)  # type: ignore[arg-type]
    forged = jwt.encode(payload, "django-insecure-medkg-development-key-not-for-production", algorithm="HS256")
    response = api.post("/v1/embed", {"namespace": DEFAULT_NAMESPACE, "texts": ["a"]}, token=forged)
    assert error_of(response, 401)["error"]["code"] == "invalid_token"
