"""The per-process cache of tenant and namespace rows on the request path (namespaces/selectors.py).

What it must never do is keep serving a revoked tenant or grant: a change saved through the ORM in the
process (the admin, sync_namespaces) applies to the very next request; one it cannot see (another process,
a bulk update) within MEDKG_ACCESS_CACHE_TTL. A warm cache costs the request no tenant or namespace query.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from namespaces.models import AccessAuditEvent, Namespace, Tenant
from tests.conftest import DEFAULT_NAMESPACE, RESTRICTED_NAMESPACE, assert_error

pytestmark = pytest.mark.django_db


def validate(api: Any, token: str, namespace: str = DEFAULT_NAMESPACE, tenant: str = "tenant-a") -> Any:
    return api.post(f"/v1/namespaces/{namespace}/validate", {"tenant_id": tenant, "texts": ["aspirin"]}, token=token)


def access_queries(api: Any, token: str, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """The SQL that one request sends for the caller's tenant and the namespace it names."""
    with CaptureQueriesContext(connection) as queries:
        assert validate(api, token, namespace).status_code == 200
    # (the rollback routes, which join namespaces, have their own snapshot: operations/serving.py)
    tables = ('FROM "namespaces_tenant"', 'FROM "namespaces_namespace"', 'FROM "namespaces_namespace_allowed_tenants"')
    return [query["sql"] for query in queries.captured_queries if any(table in query["sql"] for table in tables)]


def test_a_warm_cache_costs_no_tenant_or_namespace_query(api, synced, token_a_read, settings):
    settings.MEDKG_ACCESS_CACHE_TTL = 60.0
    assert access_queries(api, token_a_read), "the first request must read the rows"
    assert access_queries(api, token_a_read) == []


def test_ttl_zero_reads_the_rows_at_every_request(api, synced, token_a_read, settings):
    settings.MEDKG_ACCESS_CACHE_TTL = 0.0
    access_queries(api, token_a_read)
    assert len(access_queries(api, token_a_read)) >= 2


def test_a_tenant_deactivated_in_the_admin_is_refused_at_the_next_request(
    api, synced, tenant_a, token_a_read, settings
):
    settings.MEDKG_ACCESS_CACHE_TTL = 60.0
    assert validate(api, token_a_read).status_code == 200

    tenant_a.is_active = False
    tenant_a.save()  # what the admin does: the save signal empties the cache

    assert_error(validate(api, token_a_read), 401, "invalid_token")
    assert AccessAuditEvent.objects.get().reason == "tenant_inactive"


def test_a_revoked_grant_is_refused_at_the_next_request(api, restricted_namespace, tenant_a, token_a_read, settings):
    settings.MEDKG_ACCESS_CACHE_TTL = 60.0
    assert validate(api, token_a_read, RESTRICTED_NAMESPACE).status_code == 200

    restricted_namespace.allowed_tenants.remove(tenant_a)  # m2m_changed

    assert_error(validate(api, token_a_read, RESTRICTED_NAMESPACE), 404, "namespace_not_found")
    assert AccessAuditEvent.objects.get().reason == "namespace_not_granted"


def test_a_namespace_edit_applies_at_the_next_request(api, synced, token_a_read, settings):
    settings.MEDKG_ACCESS_CACHE_TTL = 60.0
    assert validate(api, token_a_read).status_code == 200

    namespace = Namespace.objects.get(name=DEFAULT_NAMESPACE)
    namespace.allowed_scopes = ["embed:write"]
    namespace.save()

    assert_error(validate(api, token_a_read), 403, "insufficient_scope")


def test_a_change_the_process_cannot_see_applies_within_the_ttl(api, synced, tenant_a, token_a_read, settings):
    """A bulk update sends no signal, like a change made by another process: bounded by the TTL."""
    settings.MEDKG_ACCESS_CACHE_TTL = 0.5
    assert validate(api, token_a_read).status_code == 200
    Tenant.objects.filter(pk=tenant_a.pk).update(is_active=False)
    loaded = time.monotonic()

    answers = []
    while time.monotonic() - loaded < 2.0:
        status = validate(api, token_a_read).status_code
        answers.append((time.monotonic() - loaded, status))
        if status == 401:
            break
        time.sleep(0.05)

    refused_at = next((at for at, status in answers if status == 401), None)
    assert refused_at is not None and refused_at <= 0.5 + 0.2, answers
    assert all(status == 200 for at, status in answers if at < refused_at)


def test_unknown_tenants_and_namespaces_are_not_cached(api, synced, tenant_a, token_a_read, settings):
    """Garbage names cannot fill the cache, and a namespace created later is found at once."""
    from namespaces import selectors

    settings.MEDKG_ACCESS_CACHE_TTL = 60.0
    assert_error(validate(api, token_a_read, "single_vector.nope.384.v1"), 404, "namespace_not_found")
    assert "single_vector.nope.384.v1" not in selectors._namespaces
    assert selectors.tenant_get_active(slug="nobody") is None and "nobody" not in selectors._tenants
