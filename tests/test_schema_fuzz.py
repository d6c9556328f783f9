"""Schemathesis over the served OpenAPI schema: no generated request gets a 5xx, and every error is uniform.

The WSGI app runs in the test's thread and database transaction, so the tenant and token fixtures are visible.
Each operation is one test; besides our own assertions, schemathesis checks that 200 bodies match the schema
and that schema-violating requests are refused with a 4xx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.conf import settings as django_settings
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import negative_data_rejection, not_a_server_error, response_schema_conformance

from namespaces.models import Namespace
from tests.conftest import DEFAULT_NAMESPACE

CONFIG = schemathesis.Config.from_dict(
    # 413 (too many texts, too large a body) is as right a refusal as a 400.
    {"checks": {"negative_data_rejection": {"expected-statuses": ["4xx"]}}}
)
schema = schemathesis.openapi.from_wsgi("/v1/schema", get_wsgi_application(), config=CONFIG)

# Values that exist, so that generated requests also get past the access checks to the tokenizer and the model.
EXISTING_VALUES = {"namespace": DEFAULT_NAMESPACE, "model": DEFAULT_NAMESPACE, "tenant_id": "tenant-a"}


def _replaceable(value: Any) -> bool:
    """A string the schema accepts (1 to 200 characters): replacing it keeps a negative case negative."""
    return isinstance(value, str) and 1 <= len(value) <= 200


# Hostile JSON for document metadata and search filters: keys that look like numbers or paths (the probe's
# 500s), integers past 64 bits, deep nesting (the poison document) and wide objects.
_KEYS = st.sampled_from(
    ["-1", "0", "12", "1e3", "-9223372036854775809", "a.b", "a__b", "__proto__", "", "k"]
) | st.text(max_size=8)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_JSON = st.recursive(
    _SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3), max_leaves=12
)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


_DEEP = st.integers(min_value=0, max_value=1200).map(lambda depth: {"deep": _nested(depth)})
HOSTILE_OBJECTS = st.dictionaries(_KEYS, _JSON, max_size=4) | _DEEP


def _with_hostile_json(body: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The body with generated metadata on each document and generated filters on a search."""
    documents = body.get("documents")
    if isinstance(documents, list) and documents and all(isinstance(item, dict) for item in documents):
        return st.lists(HOSTILE_OBJECTS, min_size=len(documents), max_size=len(documents)).map(
            lambda metadata: {
                **body,
                "documents": [{**item, "metadata": meta} for item, meta in zip(documents, metadata, strict=True)],
            }
        )
    if "query" in body:
        return HOSTILE_OBJECTS.map(lambda filters: {**body, "filters": filters})
    return st.just(body)


@schema.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    """Each generated body as it is, or with the namespace and tenant it names replaced by existing ones, and then
    with hostile metadata or filters."""
    if not isinstance(body, dict):
        return st.just(body)
    existing = {
        key: EXISTING_VALUES[key] for key, value in body.items() if key in EXISTING_VALUES and _replaceable(value)
    }
    resolved = {**body, **existing}
    return st.sampled_from([body, resolved]) | _with_hostile_json(resolved)


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: Any) -> st.SearchStrategy[Any]:
    if not isinstance(path_parameters, dict) or "namespace" not in path_parameters:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters, {**path_parameters, "namespace": DEFAULT_NAMESPACE}])


@pytest.fixture(autouse=True)
def connection_kept_across_requests() -> Iterator[None]:
    """As Django's test client does: a request must not close the connection that holds the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def bearer(synced: dict[str, Namespace], token_a_write: str) -> dict[str, str]:
    """A valid token of an existing tenant with every scope the endpoints need, over the seed namespaces."""
    return {"Authorization": f"Bearer {token_a_write}"}


def assert_uniform_error(status: int, content: bytes, content_type: str) -> None:
    assert content_type.startswith("application/json"), (status, content_type, content[:300])
    body = json.loads(content)
    assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
    error: Any = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, (status, body)
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["details"], dict), body


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_generated_request_gets_a_server_error(case: Any, bearer: dict[str, str]) -> None:
    response = case.call(headers=bearer)

    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.content[:500])
    if response.status_code >= 400:
        assert_uniform_error(response.status_code, response.content, response.headers["content-type"][0])
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance, negative_data_rejection])


def test_the_schema_states_the_limits_that_the_server_enforces() -> None:
    """The fuzzing above trusts these: a schema that allowed an empty list would mostly generate refusals."""
    components = schema.raw_schema["components"]["schemas"]
    for name in ("EmbedInputRequest", "ValidateInputRequest"):
        texts = components[name]["properties"]["texts"]
        assert (texts["minItems"], texts["maxItems"]) == (1, django_settings.MEDKG_MAX_TEXTS_PER_REQUEST), name
        assert (texts["items"]["minLength"], texts["items"]["maxLength"]) == (1, django_settings.MEDKG_MAX_TEXT_CHARS)
