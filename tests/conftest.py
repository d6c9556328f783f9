"""Shared fixtures. Roles are named: tenant_a, tenant_b, token_a_read, token_b_write, outsider ...

The suite runs on PostgreSQL (make test sets DATABASE_URL) with the real MiniLM model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from namespaces.models import AccessAuditEvent, Namespace, Tenant
from namespaces.services import namespace_sync_from_yaml, tenant_create, token_issue
from tests.deploy.live import make_run_server  # noqa: F401 - session fixture of tests/deploy and tests/smoke

DEFAULT_NAMESPACE = "single_vector.minilm.384.v1"
RESTRICTED_NAMESPACE = "single_vector.minilm-a.384.v1"


@pytest.fixture
def synced(db: None) -> dict[str, Namespace]:
    """The seed namespaces of config/embedding/namespaces, as `make run` syncs them."""
    namespace_sync_from_yaml(directory=settings.MEDKG_CONFIG_DIR / "embedding" / "namespaces")
    return {namespace.name: namespace for namespace in Namespace.objects.all()}


@pytest.fixture
def tenant_a(db: None) -> Tenant:
    return tenant_create(slug="tenant-a", name="Tenant A")[0]


@pytest.fixture
def tenant_b(db: None) -> Tenant:
    return tenant_create(slug="tenant-b", name="Tenant B")[0]


def make_token(tenant: Tenant, scopes: list[str], ttl: timedelta = timedelta(minutes=10)) -> str:
    return token_issue(tenant=tenant, scopes=scopes, ttl=ttl)


@pytest.fixture
def token_a_read(tenant_a: Tenant) -> str:
    return make_token(tenant_a, ["embed:read"])


@pytest.fixture
def token_a_write(tenant_a: Tenant) -> str:
    return make_token(tenant_a, ["embed:read", "embed:write"])


@pytest.fixture
def token_b_read(tenant_b: Tenant) -> str:
    return make_token(tenant_b, ["embed:read"])


@pytest.fixture
def token_b_write(tenant_b: Tenant) -> str:
    return make_token(tenant_b, ["embed:read", "embed:write"])


@pytest.fixture
def restricted_namespace(synced: dict[str, Namespace], tenant_a: Tenant) -> Namespace:
    """A copy of the default namespace granted to tenant A only."""
    namespace = synced[DEFAULT_NAMESPACE]
    namespace.pk = None
    namespace.name = RESTRICTED_NAMESPACE
    namespace.allow_all_tenants = False
    namespace.source_file = ""
    namespace.save()
    namespace.allowed_tenants.set([tenant_a])
    return namespace


@pytest.fixture
def outsider(tenant_b: Tenant, token_b_write: str) -> dict[str, Any]:
    """Tenant B with a valid read+write token: it must never reach tenant A's namespace."""
    return {"tenant": tenant_b, "token": token_b_write}


class Api:
    """A JSON client: `api.post(path, body, token=...)` returns the DRF response."""

    def __init__(self) -> None:
        self.client = APIClient()

    def _auth(self, token: str | None) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

    def get(self, path: str, *, token: str | None = None, **extra: Any) -> Any:
        return self.client.get(path, **self._auth(token), **extra)

    def post(
        self, path: str, body: Any = None, *, token: str | None = None, raw: bytes | str | None = None, **extra: Any
    ) -> Any:
        data = raw if raw is not None else json.dumps(body)
        return self.client.generic(
            "POST", path, data, content_type=extra.pop("content_type", "application/json"), **self._auth(token), **extra
        )

    def delete(self, path: str, body: Any = None, *, token: str | None = None) -> Any:
        return self.client.generic(
            "DELETE", path, json.dumps(body), content_type="application/json", **self._auth(token)
        )


@pytest.fixture(autouse=True)
def _faiss_in_tmp(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Indexes of a test live in its own folder, never in var/."""
    settings.FAISS_DATA_DIR = tmp_path_factory.mktemp("faiss")


@pytest.fixture(autouse=True)
def _no_query_sampling(settings: Any) -> None:
    """Searches keep no query samples unless a test asks (a random insert would change the queries tests count)."""
    settings.MEDKG_QUERY_SAMPLE_RATE = 0.0


@pytest.fixture(autouse=True)
def _serving_state_fresh() -> None:
    """Circuit breakers, quota buckets and the access cache are per process: each test starts afresh."""
    from embeddings.failover import breakers_reset
    from namespaces.quotas import quotas_reset
    from namespaces.selectors import access_cache_clear
    from namespaces.services import access_refusal_windows_reset

    breakers_reset()
    quotas_reset()
    access_refusal_windows_reset()
    access_cache_clear()  # rows cached by an earlier test were rolled back with its transaction


@pytest.fixture
def api() -> Api:
    return Api()


def counter_value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def refusals() -> Callable[..., float]:
    """Current value of the cross-tenant counter for the given labels."""

    def value(**labels: str) -> float:
        return counter_value("medicalkg_cross_tenant_access_attempts_total", **labels)

    return value


def audit_events(**filters: Any) -> list[AccessAuditEvent]:
    return list(AccessAuditEvent.objects.filter(**filters))


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The uniform error shape, with the expected status and code."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body
