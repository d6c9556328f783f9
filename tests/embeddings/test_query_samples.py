"""Sampled real queries (embeddings.query_samples): kept by the search endpoints at the sample rate, bounded per
tenant and namespace, one tenant's never another's, erased with the tenant. PostgreSQL, the real search path."""

from __future__ import annotations

from typing import Any

import pytest

from embeddings.maintenance import tenant_erase
from embeddings.models import QuerySample
from embeddings.query_samples import TRIM_EVERY, query_samples_recent, query_samples_trim
from namespaces.models import Namespace, Tenant
from tests.conftest import DEFAULT_NAMESPACE

pytestmark = pytest.mark.django_db
SEARCH = f"/v1/namespaces/{DEFAULT_NAMESPACE}/search"
BM25 = "sparse.bm25.auto.v1"


def search(api: Any, token: str, tenant: str, query: str) -> None:
    response = api.post(SEARCH, {"tenant_id": tenant, "query": query, "k": 3}, token=token)
    assert response.status_code == 200, response.content[:300]


def test_searches_keep_their_queries_per_tenant_and_never_show_another_tenants(
    synced: dict[str, Namespace],
    api: Any,
    tenant_a: Tenant,
    tenant_b: Tenant,
    token_a_write: str,
    token_b_write: str,
    settings: Any,
) -> None:
    settings.MEDKG_QUERY_SAMPLE_RATE = 1.0
    for index in range(3):
        search(api, token_a_write, "tenant-a", f"statins and LDL {index}")
    search(api, token_a_write, "tenant-a", "statins and LDL 2")  # the same question again: one sample to run
    search(api, token_b_write, "tenant-b", "B's own question")
    namespace = synced[DEFAULT_NAMESPACE]
    assert query_samples_recent(namespace=namespace, tenant=tenant_a, limit=10) == [
        "statins and LDL 2",
        "statins and LDL 1",
        "statins and LDL 0",
    ]
    assert query_samples_recent(namespace=namespace, tenant=tenant_b, limit=10) == ["B's own question"]
    assert query_samples_recent(namespace=namespace, tenant=tenant_a, limit=2) == [
        "statins and LDL 2",
        "statins and LDL 1",
    ]


def test_hybrid_search_keeps_the_query_on_each_namespace_it_searched(
    synced: dict[str, Namespace], api: Any, tenant_a: Tenant, token_a_write: str, settings: Any
) -> None:
    settings.MEDKG_QUERY_SAMPLE_RATE = 1.0
    body = {
        "tenant_id": "tenant-a",
        "query": "aspirin and platelets",
        "namespaces": [{"namespace": DEFAULT_NAMESPACE}, {"namespace": BM25}],
    }
    response = api.post("/v1/search", body, token=token_a_write)
    assert response.status_code == 200, response.content[:300]
    for name in (DEFAULT_NAMESPACE, BM25):
        assert query_samples_recent(namespace=synced[name], tenant=tenant_a, limit=5) == ["aspirin and platelets"]


def test_at_rate_zero_nothing_is_kept_and_at_a_fraction_about_that_fraction(
    synced: dict[str, Namespace], api: Any, token_a_write: str, settings: Any
) -> None:
    settings.MEDKG_QUERY_SAMPLE_RATE = 0.0
    for index in range(20):
        search(api, token_a_write, "tenant-a", f"query {index}")
    assert not QuerySample.objects.exists()
    settings.MEDKG_QUERY_SAMPLE_RATE = 0.25
    for index in range(200):
        search(api, token_a_write, "tenant-a", f"query {index}")
    assert 20 <= QuerySample.objects.count() <= 80  # 50 expected; outside this, p < 1e-6


def test_what_is_kept_stays_bounded_whatever_the_traffic(
    synced: dict[str, Namespace], api: Any, tenant_a: Tenant, token_a_write: str, settings: Any
) -> None:
    settings.MEDKG_QUERY_SAMPLE_RATE = 1.0
    settings.MEDKG_QUERY_SAMPLE_KEEP = 5
    for index in range(3 * TRIM_EVERY):
        search(api, token_a_write, "tenant-a", f"query {index}")
    assert QuerySample.objects.count() < 5 + TRIM_EVERY  # trimmed as it grew, not only at the end
    namespace = synced[DEFAULT_NAMESPACE]
    query_samples_trim(namespace=namespace, tenant=tenant_a)
    newest = [f"query {index}" for index in range(3 * TRIM_EVERY - 1, 3 * TRIM_EVERY - 6, -1)]
    assert query_samples_recent(namespace=namespace, tenant=tenant_a, limit=10) == newest


@pytest.mark.django_db(transaction=True)
def test_a_tenants_queries_are_erased_with_it(
    synced: dict[str, Namespace],
    api: Any,
    tenant_a: Tenant,
    tenant_b: Tenant,
    token_a_write: str,
    token_b_write: str,
    settings: Any,
) -> None:
    settings.MEDKG_QUERY_SAMPLE_RATE = 1.0
    search(api, token_a_write, "tenant-a", "A's question")
    search(api, token_b_write, "tenant-b", "B's question")
    tenant_erase(tenant=tenant_a, keep_tenant=True)
    assert list(QuerySample.objects.values_list("text", flat=True)) == ["B's question"]
