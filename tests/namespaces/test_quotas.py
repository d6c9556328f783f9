"""Per-tenant quotas: a tenant over its quota gets 429 with Retry-After while another tenant is unaffected.

Each test runs twice: on Redis (REDIS_URL, the deployed path) and in process (no REDIS_URL, the embedded mode).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings as django_settings

from namespaces.models import Tenant
from namespaces.quotas import quotas_reset
from tests.conftest import DEFAULT_NAMESPACE, assert_error, counter_value


@pytest.fixture(params=["redis", "in_process"])
def quota_store(request: pytest.FixtureRequest, settings) -> Iterator[str]:
    if request.param == "in_process":
        settings.REDIS_URL = ""
    elif not django_settings.REDIS_URL:
        pytest.skip("REDIS_URL is not set: the Redis quota store needs a Redis server")
    else:
        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter("medkg:quota:*"):
            client.delete(key)
    quotas_reset()
    yield request.param
    quotas_reset()


def decisions(kind: str, outcome: str, operation: str = "other") -> float:
    return counter_value("medkg_quota_decisions_total", kind=kind, operation=operation, outcome=outcome)


@pytest.mark.django_db
def test_requests_over_quota_get_429_with_retry_after_and_other_tenants_do_not(
    api, quota_store, tenant_a: Tenant, token_a_read, token_b_read
):
    Tenant.objects.filter(pk=tenant_a.pk).update(quota_requests_per_second=2)
    limited = decisions("requests", "limited")

    answers = [api.get("/v1/namespaces", token=token_a_read) for _ in range(3)]

    assert [answer.status_code for answer in answers[:2]] == [200, 200]
    body = assert_error(answers[2], 429, "quota_exceeded")
    assert answers[2]["Retry-After"] == "1"
    assert body["error"]["details"] == {"kind": "requests", "limit": 2.0, "retry_after_seconds": 1}
    assert decisions("requests", "limited") == limited + 1
    # Tenant B has no quota of its own and the default is off in development: it is never refused.
    assert all(api.get("/v1/namespaces", token=token_b_read).status_code == 200 for _ in range(10))


@pytest.mark.django_db
def test_the_request_quota_refills(api, quota_store, tenant_a: Tenant, token_a_read, settings):
    Tenant.objects.filter(pk=tenant_a.pk).update(quota_requests_per_second=20)
    answers = [api.get("/v1/namespaces", token=token_a_read).status_code for _ in range(25)]
    assert answers.count(429) >= 1
    time.sleep(0.2)  # 20/s: four requests' worth
    assert api.get("/v1/namespaces", token=token_a_read).status_code == 200


@pytest.mark.django_db
def test_tokens_per_minute_are_charged_and_then_refused(
    api, synced, quota_store, tenant_a: Tenant, token_a_write, token_b_write
):
    Tenant.objects.filter(pk=tenant_a.pk).update(quota_tokens_per_minute=30)
    texts = ["aspirin inhibits platelet aggregation in patients with coronary artery disease"] * 3  # 17 tokens each
    body = {"namespace": DEFAULT_NAMESPACE, "texts": texts}
    allowed = decisions("tokens", "allowed", "embed")

    first = api.post("/v1/embed", body, token=token_a_write)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] == 51  # let in, overdraws by 21
    refused = api.post("/v1/embed", body, token=token_a_write)

    error = assert_error(refused, 429, "quota_exceeded")
    assert error["error"]["details"]["kind"] == "tokens" and error["error"]["details"]["limit"] == 30.0
    # 21 tokens below zero at 0.5 token/s: 42 s until the bucket holds anything again.
    assert 41 <= int(refused["Retry-After"]) <= 43
    assert decisions("tokens", "allowed", "embed") == allowed + 1
    assert api.post("/v1/embed", body, token=token_b_write).status_code == 200


@pytest.mark.django_db
def test_a_tenant_quota_of_zero_is_unlimited_even_when_the_default_is_set(
    api, quota_store, tenant_a: Tenant, token_a_read, token_b_read, settings
):
    settings.MEDKG_QUOTA_REQUESTS_PER_SECOND = 1
    Tenant.objects.filter(pk=tenant_a.pk).update(quota_requests_per_second=0)
    assert all(api.get("/v1/namespaces", token=token_a_read).status_code == 200 for _ in range(5))
    statuses = [api.get("/v1/namespaces", token=token_b_read).status_code for _ in range(3)]
    assert statuses[0] == 200 and 429 in statuses  # B has the default: 1 per second


@pytest.mark.django_db
def test_redis_down_lets_requests_through_and_counts_them(api, tenant_a: Tenant, token_a_read, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    Tenant.objects.filter(pk=tenant_a.pk).update(quota_requests_per_second=1)
    unenforced = decisions("requests", "unenforced")
    assert all(api.get("/v1/namespaces", token=token_a_read).status_code == 200 for _ in range(3))
    assert decisions("requests", "unenforced") == unenforced + 3
