"""Bad input gets a clear 4xx in the uniform error shape, never a 500, and changes nothing.

Covers POST /v1/embed, POST /v1/embeddings (OpenAI-compatible) and POST /v1/namespaces/{ns}/validate.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from namespaces.models import AccessAuditEvent, Namespace, Tenant
from tests.conftest import DEFAULT_NAMESPACE, Api, assert_error, counter_value

EMBED = "/v1/embed"
OPENAI = "/v1/embeddings"
VALIDATE = f"/v1/namespaces/{DEFAULT_NAMESPACE}/validate"
ENDPOINTS = [EMBED, OPENAI, VALIDATE]
DIM = 384

# Where each endpoint takes its texts from.
TEXTS_FIELD = {EMBED: "texts", OPENAI: "input", VALIDATE: "texts"}

pytestmark = pytest.mark.usefixtures("synced")


def body_with_texts(path: str, texts: Any) -> dict[str, Any]:
    """A valid body of `path`, except for the texts, which are whatever the test passes."""
    if path == EMBED:
        return {"namespace": DEFAULT_NAMESPACE, "texts": texts}
    if path == OPENAI:
        return {"model": DEFAULT_NAMESPACE, "input": texts}
    return {"texts": texts}


def field_errors(body: dict[str, Any]) -> dict[str, Any]:
    return body["error"]["details"]["fields"]


def stored_state() -> dict[str, Any]:
    """Everything a request could store: audit events, tenants, namespaces, and the embeddings counters."""
    return {
        "audit_events": AccessAuditEvent.objects.count(),
        "tenants": sorted(Tenant.objects.values_list("slug", "is_active")),
        "namespaces": sorted(Namespace.objects.values_list("name", "enabled", "dim")),
        "vectors": counter_value("embedding_vectors_produced_total", namespace=DEFAULT_NAMESPACE),
        "tokens": counter_value("embedding_tokens_processed_total", namespace=DEFAULT_NAMESPACE),
        "refusals": cross_tenant_attempts(),
    }


def cross_tenant_attempts() -> float:
    """The refusal counter summed over all its labels: a validation error is not an access refusal."""
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == "medicalkg_cross_tenant_access_attempts_total"
    )


def assert_uniform_client_error(response: Any) -> dict[str, Any]:
    """Any 4xx, in the uniform error shape (the exact code is asserted by the targeted tests)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.content[:500])
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    return assert_error(response, response.status_code, body["error"].get("code"))


# --- the baseline: valid bodies work, so the refusals below are about the input ---


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_valid_body_is_accepted(api: Api, token_a_write: str, path: str) -> None:
    response = api.post(path, body_with_texts(path, ["aspirin inhibits cyclooxygenase"]), token=token_a_write)

    assert response.status_code == 200, response.content[:500]


# --- the body is not JSON, or not a JSON object ---


MALFORMED_BODIES = [
    pytest.param(b'{"namespace": ', id="truncated"),
    pytest.param(b"{'texts': ['single quotes']}", id="single-quotes"),
    pytest.param(b'{"texts": ["a",]}', id="trailing-comma"),
    pytest.param(b"{} {}", id="two-documents"),
    pytest.param(b'{"texts": [NaN]}', id="nan"),
    pytest.param(b"nul", id="bare-word"),
    pytest.param(b'{"texts": ["\xff\xfe\xfd"]}', id="invalid-utf8"),
    pytest.param(b'{"texts": ["\xed\xa0\x80"]}', id="utf8-encoded-surrogate"),
    pytest.param(b"\xef\xbb\xbf{}", id="byte-order-mark"),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deep-nesting"),
    pytest.param(b'{"texts": ' + b"[" * 5_000 + b'"a"' + b"]" * 5_000 + b"}", id="deep-nesting-in-field"),
]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("raw", MALFORMED_BODIES)
def test_malformed_json_is_a_400(api: Api, token_a_write: str, path: str, raw: bytes) -> None:
    response = api.post(path, raw=raw, token=token_a_write)

    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("texts", ['"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"'])
def test_lone_surrogate_escapes_are_a_400(api: Api, token_a_write: str, path: str, texts: str) -> None:
    """orjson refuses unpaired surrogates; a Python parser would let them through to the tokenizer."""
    raw = json.dumps(body_with_texts(path, ["placeholder"])).replace('"placeholder"', texts)

    response = api.post(path, raw=raw.encode(), token=token_a_write)

    body = assert_error(response, 400, "malformed_json")
    assert "surrogate" in body["error"]["message"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("value", [[], ["texts"], "a string", 42, 3.5, None, True], ids=repr)
def test_a_body_that_is_not_an_object_is_a_400(api: Api, token_a_write: str, path: str, value: Any) -> None:
    response = api.post(path, value, token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert "non_field_errors" in field_errors(body)


@pytest.mark.parametrize(
    ("path", "required"), [(EMBED, {"namespace", "texts"}), (OPENAI, {"model", "input"}), (VALIDATE, {"texts"})]
)
def test_an_empty_body_is_a_400_that_names_the_required_fields(
    api: Api, token_a_write: str, path: str, required: set[str]
) -> None:
    response = api.post(path, raw=b"", token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert set(field_errors(body)) == required


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json", ""],
)
def test_a_body_that_is_not_json_is_a_415(api: Api, token_a_write: str, path: str, content_type: str) -> None:
    raw = json.dumps(body_with_texts(path, ["aspirin"]))

    response = api.post(path, raw=raw, token=token_a_write, content_type=content_type)

    assert_error(response, 415, "unsupported_media_type")


# --- well-formed JSON with the wrong types ---


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "texts",
    [[1, 2], [None], [["nested"]], [{"text": "a"}], ["ok", 1.5], [False], {"0": "a"}, None],
    ids=repr,
)
def test_texts_of_the_wrong_type_are_a_400(api: Api, token_a_write: str, path: str, texts: Any) -> None:
    response = api.post(path, body_with_texts(path, texts), token=token_a_write)

    token_ids = path == OPENAI and isinstance(texts, list) and any(type(t) in (int, list) for t in texts)
    if token_ids:  # OpenAI's token-id input: a different refusal, same status
        assert_error(response, 400, "unsupported_input")
        return
    body = assert_error(response, 400, "invalid_request")
    assert TEXTS_FIELD[path] in field_errors(body)


@pytest.mark.parametrize("path", [EMBED, VALIDATE])
def test_texts_as_a_string_is_a_400_where_a_list_is_required(api: Api, token_a_write: str, path: str) -> None:
    response = api.post(path, body_with_texts(path, "aspirin"), token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert "texts" in field_errors(body)


def test_openai_input_may_be_a_single_string(api: Api, token_a_write: str) -> None:
    """OpenAI's shape allows it; it is one text, not a list of characters."""
    response = api.post(OPENAI, {"model": DEFAULT_NAMESPACE, "input": "aspirin"}, token=token_a_write)

    assert response.status_code == 200, response.content[:500]
    assert len(response.json()["data"]) == 1


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("texts", [[], [""], ["fine", ""], ""], ids=repr)
def test_empty_texts_are_a_400(api: Api, token_a_write: str, path: str, texts: Any) -> None:
    response = api.post(path, body_with_texts(path, texts), token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert TEXTS_FIELD[path] in field_errors(body)


@pytest.mark.parametrize("namespace", [42, None, ["a"], {"name": DEFAULT_NAMESPACE}, "", True], ids=repr)
def test_namespace_of_the_wrong_type_is_a_400(api: Api, token_a_write: str, namespace: Any) -> None:
    response = api.post(EMBED, {"namespace": namespace, "texts": ["aspirin"]}, token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert "namespace" in field_errors(body)


@pytest.mark.parametrize("model", [42, None, ["a"], ""], ids=repr)
def test_openai_model_of_the_wrong_type_is_a_400(api: Api, token_a_write: str, model: Any) -> None:
    response = api.post(OPENAI, {"model": model, "input": ["aspirin"]}, token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert "model" in field_errors(body)


@pytest.mark.parametrize(
    "options",
    [{"truncate": "yes"}, {"truncate": 1}, {"truncate": None}, {"normalize": "false"}, {"normalize": 0}, ["truncate"]],
    ids=repr,
)
def test_options_of_the_wrong_type_are_a_400(api: Api, token_a_write: str, options: Any) -> None:
    body = {"namespace": DEFAULT_NAMESPACE, "texts": ["aspirin"], "options": options}

    response = api.post(EMBED, body, token=token_a_write)

    assert "options" in field_errors(assert_error(response, 400, "invalid_request"))


@pytest.mark.parametrize("tenant_id", [42, ["tenant-a"], ""], ids=repr)
def test_tenant_id_that_is_not_the_token_tenant_is_a_refusal(api: Api, token_a_write: str, tenant_id: Any) -> None:
    """Anything but the token's own tenant id is a mismatch, counted and audited, whatever its type."""
    body = {"namespace": DEFAULT_NAMESPACE, "texts": ["aspirin"], "tenant_id": tenant_id}

    response = api.post(EMBED, body, token=token_a_write)

    assert_error(response, 403, "tenant_mismatch")
    assert AccessAuditEvent.objects.get().reason == "tenant_mismatch"


def test_tenant_id_null_is_a_400(api: Api, token_a_write: str) -> None:
    body = {"namespace": DEFAULT_NAMESPACE, "texts": ["aspirin"], "tenant_id": None}

    response = api.post(EMBED, body, token=token_a_write)

    assert "tenant_id" in field_errors(assert_error(response, 400, "invalid_request"))
    assert AccessAuditEvent.objects.count() == 0


# --- unknown fields ---


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        (EMBED, {"namespce": DEFAULT_NAMESPACE}),
        (EMBED, {"text": ["a"]}),
        (VALIDATE, {"namespace": DEFAULT_NAMESPACE}),
        (VALIDATE, {"options": {}}),
    ],
)
def test_unknown_fields_are_a_400_that_names_them(
    api: Api, token_a_write: str, path: str, extra: dict[str, Any]
) -> None:
    response = api.post(path, {**body_with_texts(path, ["aspirin"]), **extra}, token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert set(extra) <= set(field_errors(body)), body


def test_unknown_options_are_a_400_that_names_them(api: Api, token_a_write: str) -> None:
    body = {"namespace": DEFAULT_NAMESPACE, "texts": ["aspirin"], "options": {"truncation": True}}

    response = api.post(EMBED, body, token=token_a_write)

    assert "truncation" in field_errors(assert_error(response, 400, "invalid_request"))["options"]


def test_openai_ignores_unknown_fields_as_openai_clients_send_extras(api: Api, token_a_write: str) -> None:
    body = {"model": DEFAULT_NAMESPACE, "input": ["aspirin"], "user": "someone", "extra_body": {"x": 1}}

    response = api.post(OPENAI, body, token=token_a_write)

    assert response.status_code == 200, response.content[:500]


# --- sizes ---


@pytest.mark.parametrize("path", ENDPOINTS)
def test_too_many_texts_is_a_413(api: Api, token_a_write: str, path: str) -> None:
    limit = settings.MEDKG_MAX_TEXTS_PER_REQUEST

    response = api.post(path, body_with_texts(path, ["a"] * (limit + 1)), token=token_a_write)

    body = assert_error(response, 413, "payload_too_large")
    assert body["error"]["details"] == {"limit": limit}


def test_exactly_the_text_limit_is_accepted(api: Api, token_a_write: str) -> None:
    limit = settings.MEDKG_MAX_TEXTS_PER_REQUEST

    response = api.post(VALIDATE, {"texts": ["aspirin"] * limit}, token=token_a_write)

    assert response.status_code == 200, response.content[:500]
    assert len(response.json()["results"]) == limit


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_body_over_the_byte_limit_is_a_413(api: Api, token_a_write: str, path: str) -> None:
    limit = settings.MEDKG_MAX_REQUEST_BYTES
    raw = json.dumps(body_with_texts(path, ["a" * limit])).encode()
    assert len(raw) > limit

    response = api.post(path, raw=raw, token=token_a_write)

    body = assert_error(response, 413, "payload_too_large")
    assert body["error"]["details"] == {"limit": limit}


def test_a_body_under_the_byte_limit_is_read_even_past_djangos_upload_limit(api: Api, token_a_write: str) -> None:
    """MEDKG_MAX_REQUEST_BYTES is the limit, not Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default)."""
    texts = ["a" * settings.MEDKG_MAX_TEXT_CHARS] * 30
    raw = json.dumps({"texts": texts}).encode()
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE < len(raw) <= settings.MEDKG_MAX_REQUEST_BYTES

    response = api.post(VALIDATE, raw=raw, token=token_a_write)

    assert response.status_code == 200, response.content[:500]
    assert len(response.json()["results"]) == len(texts)


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_body_over_the_byte_limit_is_a_413_even_when_it_is_not_json(api: Api, token_a_write: str, path: str) -> None:
    response = api.post(path, raw=b"x" * (settings.MEDKG_MAX_REQUEST_BYTES + 1), token=token_a_write)

    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize("path", ENDPOINTS)
def test_a_text_over_the_character_limit_is_a_400(api: Api, token_a_write: str, path: str) -> None:
    text = "a" * (settings.MEDKG_MAX_TEXT_CHARS + 1)

    response = api.post(path, body_with_texts(path, ["short", text]), token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert TEXTS_FIELD[path] in field_errors(body)


def test_a_text_at_the_character_limit_is_checked_against_the_token_budget(api: Api, token_a_write: str) -> None:
    text = "a " * (settings.MEDKG_MAX_TEXT_CHARS // 2)

    validated = api.post(VALIDATE, {"texts": [text]}, token=token_a_write)
    embedded = api.post(EMBED, {"namespace": DEFAULT_NAMESPACE, "texts": [text]}, token=token_a_write)

    assert validated.status_code == 200, validated.content[:500]
    assert validated.json()["valid"] is False
    assert_error(embedded, 422, "token_budget_exceeded")


# --- characters that the database or the tokenizer cannot take ---


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("text", ["\x00", "a\x00b", "aspirin\x00"], ids=repr)
def test_nul_characters_in_texts_are_a_400(api: Api, token_a_write: str, path: str, text: str) -> None:
    response = api.post(path, body_with_texts(path, [text]), token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert TEXTS_FIELD[path] in field_errors(body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (EMBED, {"namespace": "single\x00vector", "texts": ["a"]}),
        (OPENAI, {"model": "\x00", "input": ["a"]}),
        (OPENAI, {"model": DEFAULT_NAMESPACE, "input": ["a"], "user": "\x00"}),
    ],
)
def test_nul_characters_in_other_fields_are_a_400(
    api: Api, token_a_write: str, path: str, body: dict[str, Any]
) -> None:
    response = api.post(path, body, token=token_a_write)

    assert_error(response, 400, "invalid_request")
    assert AccessAuditEvent.objects.count() == 0


@pytest.mark.parametrize("path", [EMBED, VALIDATE])
def test_nul_in_tenant_id_is_a_mismatch_audited_without_the_nul(api: Api, token_a_write: str, path: str) -> None:
    body = {"namespace": DEFAULT_NAMESPACE, "texts": ["a"], "tenant_id": "tenant-a\x00"}
    if path == VALIDATE:
        del body["namespace"]

    response = api.post(path, body, token=token_a_write)

    assert_error(response, 403, "tenant_mismatch")
    assert AccessAuditEvent.objects.get().claimed_tenant == "tenant-a\ufffd"


@pytest.mark.parametrize("namespace", ["%00", "single_vector%00", "%00" * 300, "a" * 500, "%F0%9F%92%8A", "%FF"])
def test_any_namespace_in_the_path_is_not_found_rather_than_a_500(api: Api, token_a_write: str, namespace: str) -> None:
    response = api.post(f"/v1/namespaces/{namespace}/validate", {"texts": ["a"]}, token=token_a_write)

    assert_error(response, 404, "namespace_not_found")
    assert AccessAuditEvent.objects.get().reason == "namespace_unknown"


def test_a_nul_in_the_path_namespace_is_audited_with_a_replacement_character(api: Api, token_a_write: str) -> None:
    """PostgreSQL text cannot hold NUL: the evidence keeps the attempt, with U+FFFD in its place."""
    api.post("/v1/namespaces/a%00b/validate", {"texts": ["a"]}, token=token_a_write)

    event = AccessAuditEvent.objects.get()
    assert (event.namespace, event.token_tenant, event.endpoint) == ("a\ufffdb", "tenant-a", "namespace_validate")


# --- the OpenAI-compatible endpoint's own parameters ---


@pytest.mark.parametrize("token_ids", [[1, 2, 3], [[1, 2], [3]], ["text", 7], [[101, 2054]]], ids=repr)
def test_openai_token_id_input_is_a_400_that_says_it_is_unsupported(
    api: Api, token_a_write: str, token_ids: Any
) -> None:
    response = api.post(OPENAI, {"model": DEFAULT_NAMESPACE, "input": token_ids}, token=token_a_write)

    body = assert_error(response, 400, "unsupported_input")
    assert "not supported" in body["error"]["message"]
    assert body["error"]["details"] == {"field": "input"}


@pytest.mark.parametrize("encoding_format", ["hex", "FLOAT", "", None, 1, ["float"]], ids=repr)
def test_openai_bogus_encoding_format_is_a_400(api: Api, token_a_write: str, encoding_format: Any) -> None:
    body = {"model": DEFAULT_NAMESPACE, "input": ["aspirin"], "encoding_format": encoding_format}

    response = api.post(OPENAI, body, token=token_a_write)

    assert "encoding_format" in field_errors(assert_error(response, 400, "invalid_request"))


@pytest.mark.parametrize("dimensions", [128, 385, 4096])
def test_openai_dimensions_other_than_the_namespace_dim_are_a_400(
    api: Api, token_a_write: str, dimensions: int
) -> None:
    body = {"model": DEFAULT_NAMESPACE, "input": ["aspirin"], "dimensions": dimensions}

    response = api.post(OPENAI, body, token=token_a_write)

    body = assert_error(response, 400, "invalid_request")
    assert body["error"]["details"] == {"dimensions": DIM, "allowed_dimensions": [DIM]}


@pytest.mark.parametrize("dimensions", [0, -1, "many", None, 1.5, [384], 10**30], ids=repr)
def test_openai_dimensions_that_are_not_a_positive_integer_are_a_400(
    api: Api, token_a_write: str, dimensions: Any
) -> None:
    body = {"model": DEFAULT_NAMESPACE, "input": ["aspirin"], "dimensions": dimensions}

    response = api.post(OPENAI, body, token=token_a_write)

    assert "dimensions" in field_errors(assert_error(response, 400, "invalid_request"))


def test_openai_dimensions_equal_to_the_namespace_dim_are_accepted(api: Api, token_a_write: str) -> None:
    body = {"model": DEFAULT_NAMESPACE, "input": ["aspirin"], "dimensions": DIM}

    response = api.post(OPENAI, body, token=token_a_write)

    assert response.status_code == 200, response.content[:500]
    assert len(response.json()["data"][0]["embedding"]) == DIM


# --- a refused request changes nothing ---


REFUSED_BODIES = [
    pytest.param(EMBED, b'{"texts": [', id="malformed"),
    pytest.param(EMBED, json.dumps({"namespace": DEFAULT_NAMESPACE, "texts": [""]}).encode(), id="empty-text"),
    pytest.param(EMBED, json.dumps({"namespace": DEFAULT_NAMESPACE, "texts": ["a"], "x": 1}).encode(), id="unknown"),
    pytest.param(
        EMBED,
        json.dumps(
            {"namespace": DEFAULT_NAMESPACE, "texts": ["a"] * (settings.MEDKG_MAX_TEXTS_PER_REQUEST + 1)}
        ).encode(),
        id="too-many",
    ),
    pytest.param(OPENAI, json.dumps({"model": DEFAULT_NAMESPACE, "input": [1, 2]}).encode(), id="token-ids"),
    pytest.param(
        OPENAI, json.dumps({"model": DEFAULT_NAMESPACE, "input": "a", "dimensions": 8}).encode(), id="dimensions"
    ),
    pytest.param(VALIDATE, json.dumps({"texts": ["a\x00"]}).encode(), id="nul"),
]


@pytest.mark.parametrize(("path", "raw"), REFUSED_BODIES)
def test_a_refused_request_stores_and_counts_nothing(api: Api, token_a_write: str, path: str, raw: bytes) -> None:
    before = stored_state()

    response = api.post(path, raw=raw, token=token_a_write)

    assert_uniform_client_error(response)
    assert stored_state() == before
    assert AccessAuditEvent.objects.count() == 0


def test_a_request_that_is_stored_or_counted_is_seen_by_stored_state(api: Api, token_a_write: str) -> None:
    """The check above could pass vacuously; a refusal and an embedding do change what it compares."""
    before = stored_state()

    api.post(EMBED, {"namespace": DEFAULT_NAMESPACE, "texts": ["aspirin"]}, token=token_a_write)
    api.post(EMBED, {"namespace": "no.such.namespace", "texts": ["aspirin"]}, token=token_a_write)

    after = stored_state()
    assert after["audit_events"] == before["audit_events"] + 1
    assert after["refusals"] == before["refusals"] + 1
    assert after["vectors"] == before["vectors"] + 1


# --- properties ---


JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Objects with the endpoints' own keys, so that generation reaches past the type checks of the body itself.
FIELD_NAMES = ["namespace", "texts", "model", "input", "options", "tenant_id", "encoding_format", "dimensions"]
OBJECTS_WITH_KNOWN_KEYS = st.dictionaries(
    st.sampled_from(FIELD_NAMES),
    JSON_VALUES | st.just(DEFAULT_NAMESPACE) | st.lists(st.text(max_size=20), max_size=3),
    max_size=4,
)
FUZZ_SETTINGS = hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("path", ENDPOINTS)
@FUZZ_SETTINGS
@given(body=JSON_VALUES | OBJECTS_WITH_KNOWN_KEYS)
def test_any_json_body_gets_a_4xx_in_the_error_shape_or_a_200(
    api: Api, token_a_write: str, path: str, body: Any
) -> None:
    response = api.post(path, body, token=token_a_write)

    if response.status_code != 200:
        assert_uniform_client_error(response)


VALID_TEXT = st.text(min_size=1, max_size=50).filter(lambda text: "\x00" not in text)


@FUZZ_SETTINGS
@given(texts=st.lists(st.text(max_size=50), min_size=1, max_size=6))
def test_any_list_of_texts_is_embedded_unless_a_text_is_empty_or_has_a_nul(
    api: Api, token_a_write: str, texts: list[str]
) -> None:
    response = api.post(EMBED, {"namespace": DEFAULT_NAMESPACE, "texts": texts}, token=token_a_write)

    if any(text == "" or "\x00" in text for text in texts):
        assert "texts" in field_errors(assert_error(response, 400, "invalid_request"))
        return
    assert response.status_code == 200, (texts, response.content[:500])
    embeddings = response.json()["embeddings"]
    assert [item["text_index"] for item in embeddings] == list(range(len(texts)))
    vectors = np.array([item["vector"] for item in embeddings], dtype=np.float32)
    assert vectors.shape == (len(texts), DIM)
    assert np.all(np.isfinite(vectors))


@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(VALID_TEXT, min_size=1, max_size=4), as_string=st.booleans())
def test_any_valid_openai_input_gets_one_embedding_per_text(
    api: Api, token_a_write: str, texts: list[str], as_string: bool
) -> None:
    payload = texts[0] if as_string else texts

    response = api.post(OPENAI, {"model": DEFAULT_NAMESPACE, "input": payload}, token=token_a_write)

    assert response.status_code == 200, (payload, response.content[:500])
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(1 if as_string else len(texts)))
    assert all(len(item["embedding"]) == DIM for item in data)
