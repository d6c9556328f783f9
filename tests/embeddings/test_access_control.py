"""Access control on every endpoint: tokens, scopes, tenant mismatch, namespace grants.

Every refusal is answered with the uniform error, counted in
medicalkg_cross_tenant_access_attempts_total and stored as an AccessAuditEvent.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import jwt
import pytest
from django.conf import settings

from namespaces.models import AccessAuditEvent, Namespace, Tenant, UnauthenticatedRefusalWindow
from namespaces.services import access_refusal_windows_flush
from tests.conftest import DEFAULT_NAMESPACE, RESTRICTED_NAMESPACE, assert_error, make_token

TEXTS = ["metformin lowers hepatic glucose output"]


def embed_body(namespace: str, tenant: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"namespace": namespace, "texts": TEXTS}
    if tenant is not None:
        body["tenant_id"] = tenant
    return body


def call(api: Any, endpoint: str, token: str | None, namespace: str, tenant: str | None = None) -> Any:
    """One request to `endpoint` against `namespace`, the way a client would send it."""
    if endpoint == "embed":
        return api.post("/v1/embed", embed_body(namespace, tenant), token=token)
    if endpoint == "openai_embeddings":
        return api.post("/v1/embeddings", {"model": namespace, "input": TEXTS}, token=token)
    if endpoint == "namespace_validate":
        body: dict[str, Any] = {"texts": TEXTS}
        if tenant is not None:
            body["tenant_id"] = tenant
        return api.post(f"/v1/namespaces/{namespace}/validate", body, token=token)
    if endpoint == "namespace_list":
        return api.get("/v1/namespaces", token=token)
    raise AssertionError(endpoint)


NAMESPACE_ENDPOINTS = ["embed", "openai_embeddings", "namespace_validate"]
ALL_ENDPOINTS = [*NAMESPACE_ENDPOINTS, "namespace_list"]


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", NAMESPACE_ENDPOINTS)
def test_outsider_gets_404_counted_and_audited(api, restricted_namespace, outsider, refusals, endpoint):
    before = refusals(reason="namespace_not_granted", endpoint=endpoint)

    response = call(api, endpoint, outsider["token"], RESTRICTED_NAMESPACE)

    body = assert_error(response, 404, "namespace_not_found")
    assert "vector" not in response.content.decode() and 'embedding"' not in response.content.decode()
    assert body["error"]["details"] == {}
    assert refusals(reason="namespace_not_granted", endpoint=endpoint) == before + 1
    event = AccessAuditEvent.objects.get()
    assert event.reason == "namespace_not_granted"
    assert event.token_tenant == "tenant-b"
    assert event.namespace == RESTRICTED_NAMESPACE
    assert event.endpoint == endpoint
    assert event.status_code == 404
    assert event.client_address == "127.0.0.1"
    assert len(event.request_id) > 0 and response["X-Request-ID"] == event.request_id


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", NAMESPACE_ENDPOINTS)
def test_not_granted_and_unknown_look_the_same(api, restricted_namespace, outsider, endpoint):
    hidden = call(api, endpoint, outsider["token"], RESTRICTED_NAMESPACE)
    missing = call(api, endpoint, outsider["token"], "single_vector.nothing.384.v1")

    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == missing.json()
    assert sorted(AccessAuditEvent.objects.values_list("reason", flat=True)) == [
        "namespace_not_granted",
        "namespace_unknown",
    ]


@pytest.mark.django_db
def test_owner_reaches_its_restricted_namespace(api, restricted_namespace, token_a_write):
    response = call(api, "embed", token_a_write, RESTRICTED_NAMESPACE, "tenant-a")
    assert response.status_code == 200, response.content
    assert response.json()["namespace"] == RESTRICTED_NAMESPACE
    assert not AccessAuditEvent.objects.exists()


@pytest.mark.django_db
def test_outsider_does_not_see_restricted_namespace_in_list(api, restricted_namespace, outsider, token_a_read):
    theirs = [entry["name"] for entry in api.get("/v1/namespaces", token=outsider["token"]).json()["namespaces"]]
    ours = api.get("/v1/namespaces", token=token_a_read).json()["namespaces"]

    assert RESTRICTED_NAMESPACE not in theirs
    restricted = next(entry for entry in ours if entry["name"] == RESTRICTED_NAMESPACE)
    assert restricted["allowed_tenants"] == ["tenant-a"]


@pytest.mark.django_db
def test_granted_tenants_list_never_names_other_tenants(api, restricted_namespace, tenant_b, token_a_read):
    restricted_namespace.allowed_tenants.add(tenant_b)
    entry = next(
        entry
        for entry in api.get("/v1/namespaces", token=token_a_read).json()["namespaces"]
        if entry["name"] == RESTRICTED_NAMESPACE
    )
    assert entry["allowed_tenants"] == ["tenant-a"]


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ["embed", "namespace_validate"])
def test_payload_tenant_differs_from_token_tenant(api, synced, tenant_a, tenant_b, token_a_write, refusals, endpoint):
    before = refusals(reason="tenant_mismatch", endpoint=endpoint)

    response = call(api, endpoint, token_a_write, DEFAULT_NAMESPACE, tenant="tenant-b")

    assert_error(response, 403, "tenant_mismatch")
    assert refusals(reason="tenant_mismatch", endpoint=endpoint) == before + 1
    event = AccessAuditEvent.objects.get()
    assert (event.token_tenant, event.claimed_tenant, event.reason) == ("tenant-a", "tenant-b", "tenant_mismatch")


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ALL_ENDPOINTS)
def test_missing_token_is_401(api, synced, refusals, endpoint):
    before = refusals(reason="missing_token", endpoint=endpoint)
    response = call(api, endpoint, None, DEFAULT_NAMESPACE)
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert refusals(reason="missing_token", endpoint=endpoint) == before + 1
    assert unauthenticated_audit() == [("missing_token", 1, endpoint, "127.0.0.1")]
    assert not AccessAuditEvent.objects.exists()  # before authentication: aggregated, not one row per request


def unauthenticated_audit() -> list[tuple[str, int, str, str]]:
    access_refusal_windows_flush()
    rows = UnauthenticatedRefusalWindow.objects.values_list("reason", "count", "first_endpoint", "client_address")
    return sorted(rows)


def _forged(
    tenant: str, scopes: list[str], *, key: str = "not-the-key", algorithm: str = "HS256", **claims: Any
) -> str:
    payload = {"token_type": "access", "exp": 4102444800, "jti": "x", "tenant_id": tenant, "scopes": scopes, **claims}
    return jwt.encode(payload, key, algorithm=algorithm)


def _unsigned(tenant: str) -> str:
    """alg: none, the classic forgery."""
    import base64
    import json

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    header = {"alg": "none", "typ": "JWT"}
    payload = {"token_type": "access", "exp": 4102444800, "jti": "x", "tenant_id": tenant, "scopes": ["embed:write"]}
    return f"{part(header)}.{part(payload)}."


BAD_TOKENS = {
    "garbage": lambda: "not-a-jwt",
    "wrong_key": lambda: _forged("tenant-a", ["embed:read", "embed:write"]),
    "alg_none": lambda: _unsigned("tenant-a"),
    "refresh_type": lambda: _forged(
        "tenant-a", ["embed:write"], key=settings.SIMPLE_JWT["SIGNING_KEY"], token_type="refresh"
    ),
    "no_tenant": lambda: jwt.encode(
        {"token_type": "access", "exp": 4102444800, "jti": "x", "scopes": ["embed:write"]},
        settings.SIMPLE_JWT["SIGNING_KEY"],
        algorithm="HS256",
    ),
    "unknown_tenant": lambda: _forged("nobody", ["embed:write"], key=settings.SIMPLE_JWT["SIGNING_KEY"]),
}


@pytest.mark.django_db
@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
@pytest.mark.parametrize("endpoint", ALL_ENDPOINTS)
def test_bad_tokens_are_401_counted_and_audited(api, synced, tenant_a, refusals, kind, endpoint):
    reason = "tenant_inactive" if kind == "unknown_tenant" else "invalid_token"
    before = refusals(reason=reason, endpoint=endpoint)

    response = call(api, endpoint, BAD_TOKENS[kind](), DEFAULT_NAMESPACE)

    assert_error(response, 401, "invalid_token")
    assert refusals(reason=reason, endpoint=endpoint) == before + 1
    if reason == "tenant_inactive":  # validly signed: audited one by one
        event = AccessAuditEvent.objects.get()
        assert (event.reason, event.endpoint, event.token_tenant) == (reason, endpoint, "")
    else:
        assert unauthenticated_audit() == [(reason, 1, endpoint, "127.0.0.1")]


@pytest.mark.django_db
def test_expired_token_is_401_token_expired(api, synced, tenant_a, refusals):
    expired = make_token(tenant_a, ["embed:write"], ttl=timedelta(seconds=1))
    import time

    time.sleep(1.5)
    before = refusals(reason="expired_token", endpoint="embed")
    response = call(api, "embed", expired, DEFAULT_NAMESPACE)
    assert_error(response, 401, "token_expired")
    assert refusals(reason="expired_token", endpoint="embed") == before + 1
    assert unauthenticated_audit() == [("expired_token", 1, "embed", "127.0.0.1")]


@pytest.mark.django_db
def test_inactive_tenant_token_refused(api, synced, tenant_a, token_a_write):
    Tenant.objects.filter(pk=tenant_a.pk).update(is_active=False)
    assert_error(call(api, "embed", token_a_write, DEFAULT_NAMESPACE), 401, "invalid_token")
    assert AccessAuditEvent.objects.get().reason == "tenant_inactive"


@pytest.mark.django_db
@pytest.mark.parametrize("endpoint", ["embed", "openai_embeddings"])
def test_read_only_token_cannot_embed(api, synced, token_a_read, refusals, endpoint):
    before = refusals(reason="insufficient_scope", endpoint=endpoint)
    assert_error(call(api, endpoint, token_a_read, DEFAULT_NAMESPACE), 403, "insufficient_scope")
    assert refusals(reason="insufficient_scope", endpoint=endpoint) == before + 1
    assert AccessAuditEvent.objects.get().token_tenant == "tenant-a"


@pytest.mark.django_db
def test_write_only_token_cannot_list(api, synced, tenant_a):
    token = make_token(tenant_a, ["embed:write"])
    assert_error(api.get("/v1/namespaces", token=token), 403, "insufficient_scope")


@pytest.mark.django_db
def test_admin_scope_implies_read_and_write(api, synced, tenant_a):
    token = make_token(tenant_a, ["embed:admin"])
    assert call(api, "embed", token, DEFAULT_NAMESPACE).status_code == 200
    assert api.get("/v1/namespaces", token=token).status_code == 200


@pytest.mark.django_db
def test_namespace_that_does_not_allow_the_scope(api, synced, token_a_write):
    Namespace.objects.filter(name=DEFAULT_NAMESPACE).update(allowed_scopes=["embed:read"])
    assert_error(call(api, "embed", token_a_write, DEFAULT_NAMESPACE), 403, "insufficient_scope")
    event = AccessAuditEvent.objects.get()
    assert event.namespace == DEFAULT_NAMESPACE and event.reason == "insufficient_scope"


@pytest.mark.django_db
def test_non_bearer_scheme_refused(api, synced):
    response = api.client.get("/v1/namespaces", HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    assert_error(response, 401, "invalid_token")


@pytest.mark.django_db
def test_refusal_logs_a_structured_namespace_access_line(api, restricted_namespace, outsider, caplog):
    with caplog.at_level("INFO", logger="medkg.access"):
        call(api, "embed", outsider["token"], RESTRICTED_NAMESPACE, "tenant-b")
    record = next(r for r in caplog.records if r.getMessage() == "namespace_access")
    assert record.outcome == "refused"
    assert record.reason == "namespace_not_granted"
    assert record.namespace == RESTRICTED_NAMESPACE


@pytest.mark.django_db
def test_allowed_access_logs_namespace_access_too(api, synced, token_a_write, caplog):
    with caplog.at_level("INFO", logger="medkg.access"):
        call(api, "embed", token_a_write, DEFAULT_NAMESPACE, "tenant-a")
    record = next(r for r in caplog.records if r.getMessage() == "namespace_access")
    assert (record.outcome, record.token_tenant, record.namespace) == ("allowed", "tenant-a", DEFAULT_NAMESPACE)
