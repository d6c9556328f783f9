"""GET /health: 200 when the default provider can serve, 503 otherwise; per-provider readiness."""

from __future__ import annotations

import pytest

from embeddings.providers.registry import providers_reset
from namespaces.models import Namespace
from tests.conftest import DEFAULT_NAMESPACE


@pytest.fixture(autouse=True)
def fresh_providers():
    providers_reset()
    yield
    providers_reset()


def providers_by_name(body):
    return {entry["namespace"]: entry for entry in body["providers"]}


@pytest.mark.django_db
def test_healthy_with_per_provider_readiness(api, synced, monkeypatch):
    monkeypatch.delenv("VLLM_URL", raising=False)
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["database"]["ready"] is True
    providers = providers_by_name(body)
    assert providers[DEFAULT_NAMESPACE]["ready"] is True
    qwen = providers["single_vector.qwen3.4096.v1"]
    assert qwen["ready"] is False and "VLLM_URL" in qwen["detail"]


@pytest.mark.django_db
def test_unhealthy_when_default_model_cannot_load(api, synced):
    Namespace.objects.filter(name=DEFAULT_NAMESPACE).update(model_path="/nonexistent/minilm")
    response = api.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    default = providers_by_name(body)[DEFAULT_NAMESPACE]
    assert default["ready"] is False and "/nonexistent/minilm" in default["detail"]


@pytest.mark.django_db
def test_unhealthy_when_default_namespace_missing(api, synced, settings):
    settings.MEDKG_DEFAULT_NAMESPACE = "single_vector.gone.384.v1"
    response = api.get("/health")
    assert response.status_code == 503
    assert providers_by_name(response.json())["single_vector.gone.384.v1"]["detail"] == "not configured or disabled"


@pytest.mark.django_db
def test_health_needs_no_token_and_sends_request_id(api, synced):
    response = api.get("/health", HTTP_X_REQUEST_ID="probe-123")
    assert response["X-Request-ID"] == "probe-123"
