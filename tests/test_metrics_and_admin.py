"""/metrics exports what dashboards need; the admin shows audit events read-only."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from namespaces.models import AccessAuditEvent
from namespaces.quotas import quotas_reset
from tests.conftest import DEFAULT_NAMESPACE, RESTRICTED_NAMESPACE


@pytest.mark.django_db
def test_metrics_endpoint_exports_service_metrics(api, restricted_namespace, outsider, token_a_write):
    api.post("/v1/embed", {"namespace": RESTRICTED_NAMESPACE, "texts": ["x"]}, token=token_a_write)
    api.post("/v1/embed", {"namespace": RESTRICTED_NAMESPACE, "texts": ["x"]}, token=outsider["token"])

    text = api.get("/metrics").content.decode()

    for name in (
        "medicalkg_cross_tenant_access_attempts_total",
        "embedding_requests_total",
        "embedding_request_duration_seconds_bucket",
        "embedding_vectors_produced_total",
        "embedding_tokens_processed_total",
        "embedding_provider_duration_seconds_bucket",
        "django_http_requests_total_by_view_transport_method_total",
    ):
        assert name in text, name
    assert 'medicalkg_cross_tenant_access_attempts_total{endpoint="embed",reason="namespace_not_granted"}' in text
    assert "tenant-b" not in text and "tenant-a" not in text  # no tenant ids as labels


@pytest.fixture
def staff_client(client):
    user = User.objects.create_superuser("ops", "ops@example.org", "pw-ops-123")
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_audit_events_read_only_with_filters(staff_client, api, restricted_namespace, outsider):
    api.post("/v1/embed", {"namespace": RESTRICTED_NAMESPACE, "texts": ["x"]}, token=outsider["token"])
    event = AccessAuditEvent.objects.get()

    listing = staff_client.get("/admin/namespaces/accessauditevent/?reason__exact=namespace_not_granted")
    assert listing.status_code == 200
    assert b"tenant-b" in listing.content and b"namespace_not_granted" in listing.content

    assert staff_client.get("/admin/namespaces/accessauditevent/add/").status_code == 403
    detail = staff_client.get(f"/admin/namespaces/accessauditevent/{event.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    assert (
        staff_client.post(f"/admin/namespaces/accessauditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    )
    assert AccessAuditEvent.objects.count() == 1


@pytest.mark.django_db
def test_namespaces_managed_in_admin(staff_client, synced):
    response = staff_client.get("/admin/namespaces/namespace/")
    assert response.status_code == 200
    assert b"single_vector.minilm.384.v1" in response.content


@pytest.mark.django_db
def test_openapi_schema_and_docs(api):
    schema = api.get("/v1/schema?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/v1/embed", "/v1/embeddings", "/v1/namespaces", "/v1/namespaces/{namespace}/validate", "/health"} <= set(
        paths
    )
    assert api.get("/v1/docs").status_code == 200


@pytest.mark.django_db
def test_openapi_schema_documents_the_quota_and_failover_answers(api, synced, tenant_a, token_a_write, settings):
    """429 quota_exceeded with Retry-After on every operation the quota throttle can refuse, X-Medkg-Served-By
    and the 503 naming the fallback on the embedding endpoints; then real answers carry what the schema says."""
    schema = api.get("/v1/schema?format=json").json()
    operations = {
        (method.upper(), path): operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    error = {"$ref": "#/components/schemas/Error"}
    assert len(operations) >= 10
    for (method, path), operation in operations.items():
        responses = operation["responses"]
        if path == "/health":
            assert "429" not in responses  # public: the quota only counts authenticated tenants
            continue
        quota = responses.get("429")
        assert quota is not None, f"{method} {path} does not document 429"
        assert quota["content"]["application/json"]["schema"] == error, path
        assert quota["headers"]["Retry-After"] == {
            "schema": {"type": "integer"},
            "description": "Whole seconds to wait before the quota lets the request through.",
            "required": True,
        }
        assert quota["description"].startswith("quota_exceeded"), path
    for path in ("/v1/embed", "/v1/embeddings"):
        responses = operations[("POST", path)]["responses"]
        assert responses["200"]["headers"]["X-Medkg-Served-By"]["required"] is True, path
        unavailable = responses["503"]["content"]["application/json"]
        assert unavailable["schema"] == error, path
        (example,) = unavailable["examples"].values()
        assert {"fallback", "fallback_dim"} <= set(example["value"]["error"]["details"]), path
    assert "503" not in operations[("GET", "/v1/namespaces")]["responses"]  # failover is the embedding endpoints'
    components = schema["components"]["schemas"]
    assert components["Error"]["required"] == ["error"]
    error_keys = set(components["ErrorDetail"]["required"])
    assert error_keys == {"code", "message", "details"}

    served = api.post("/v1/embed", {"namespace": DEFAULT_NAMESPACE, "texts": ["aspirin"]}, token=token_a_write)
    assert served.status_code == 200 and served["X-Medkg-Served-By"] == DEFAULT_NAMESPACE
    settings.REDIS_URL = ""  # the in-process quota store: nothing shared with other tests
    quotas_reset()
    tenant_a.quota_requests_per_second = 1
    tenant_a.save()  # as the admin saves it: applies at once (a bulk update would wait out the access cache)
    refused = [api.get("/v1/namespaces", token=token_a_write) for _ in range(2)][-1]
    quotas_reset()
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert set(refused.json()["error"]) == error_keys and refused.json()["error"]["code"] == "quota_exceeded"


@pytest.mark.django_db
def test_unknown_url_is_json_404(api):
    response = api.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_tenant_limits_usage_and_scheduling_weight_in_admin(staff_client, tenant_a):
    from django.core.exceptions import ValidationError

    from namespaces.models import TenantUsage

    TenantUsage.objects.create(tenant=tenant_a, documents=12, stored_bytes=3456)
    listing = staff_client.get("/admin/namespaces/tenant/")
    assert listing.status_code == 200
    assert b"12 documents, 3456 bytes" in listing.content
    page = staff_client.get(f"/admin/namespaces/tenant/{tenant_a.pk}/change/").content.decode()
    for field in ("max_documents", "max_stored_bytes", "scheduling_weight"):
        assert f'name="{field}"' in page
    assert "a tenant of weight 2 gets twice the tokens of weight 1" in page
    form = {"slug": tenant_a.slug, "name": "", "is_active": "on", "scheduling_weight": "2.5", "max_documents": "10"}
    assert staff_client.post(f"/admin/namespaces/tenant/{tenant_a.pk}/change/", form).status_code == 302
    tenant_a.refresh_from_db()
    assert (tenant_a.scheduling_weight, tenant_a.max_documents, tenant_a.max_stored_bytes) == (2.5, 10, None)
    refused = staff_client.post(f"/admin/namespaces/tenant/{tenant_a.pk}/change/", {**form, "scheduling_weight": "0"})
    assert refused.status_code == 200 and b"must be greater than 0" in refused.content
    tenant_a.scheduling_weight = -1
    with pytest.raises(ValidationError):
        tenant_a.full_clean()
