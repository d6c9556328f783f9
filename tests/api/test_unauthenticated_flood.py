"""Refusals before authentication are cheap: throttled per client address and audited in aggregate.

Every one is still counted in medicalkg_cross_tenant_access_attempts_total; authenticated refusals stay one
audit row each. Real PostgreSQL, in-process buckets (REDIS_URL unset here) and Redis buckets.
"""

from __future__ import annotations

from typing import Any

import pytest

from namespaces.models import AccessAuditEvent, UnauthenticatedRefusalWindow
from namespaces.services import access_refusal_windows_flush
from tests.conftest import DEFAULT_NAMESPACE, Api, assert_error, counter_value

EMBED = "/v1/embed"
BODY = {"namespace": DEFAULT_NAMESPACE, "texts": ["a"]}

pytestmark = pytest.mark.usefixtures("synced")


def attempts(reason: str) -> float:
    return counter_value("medicalkg_cross_tenant_access_attempts_total", reason=reason, endpoint="embed")


@pytest.mark.parametrize("redis", [False, True])
def test_bad_tokens_past_the_burst_get_429_with_retry_after_and_the_counter_counts_every_one(
    api: Api, settings: Any, redis: bool
) -> None:
    settings.MEDKG_UNAUTHENTICATED_BURST = 5
    settings.MEDKG_UNAUTHENTICATED_PER_SECOND = 0.5
    if not redis:
        settings.REDIS_URL = ""
    else:
        import redis as redis_client

        redis_client.Redis.from_url(settings.REDIS_URL).delete("medkg:unauthenticated:127.0.0.1")
    before = attempts("invalid_token")

    statuses = [api.post(EMBED, BODY, token="not-a-jwt").status_code for _ in range(12)]

    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 7
    limited = api.post(EMBED, BODY, token="not-a-jwt")
    body = assert_error(limited, 429, "rate_limited")
    assert int(limited["Retry-After"]) >= 1 and body["error"]["details"]["retry_after_seconds"] >= 1
    assert attempts("invalid_token") == before + 13
    access_refusal_windows_flush()
    assert list(UnauthenticatedRefusalWindow.objects.values_list("reason", "count", "throttled")) == [
        ("invalid_token", 13, 8)
    ]
    assert not AccessAuditEvent.objects.exists()


def test_a_valid_token_from_a_throttled_address_is_served(api: Api, settings: Any, token_a_write: str) -> None:
    settings.MEDKG_UNAUTHENTICATED_BURST = 1
    settings.MEDKG_UNAUTHENTICATED_PER_SECOND = 0.01
    settings.REDIS_URL = ""
    assert [api.post(EMBED, BODY).status_code for _ in range(3)] == [401, 429, 429]
    assert api.post(EMBED, BODY, token=token_a_write).status_code == 200


def test_a_flood_of_bad_tokens_writes_one_row_per_source_reason_and_window(api: Api, settings: Any) -> None:
    settings.MEDKG_UNAUTHENTICATED_PER_SECOND = 0  # the throttle off: every request reaches the audit
    sources = ["10.0.0.1", "10.0.0.2", "2001:db8::7"]
    for i in range(600):
        token = None if i % 3 == 0 else "not-a-jwt"
        api.post(EMBED, BODY, token=token, REMOTE_ADDR=sources[i % len(sources)])
    access_refusal_windows_flush()

    rows = list(UnauthenticatedRefusalWindow.objects.values_list("client_address", "reason", "count"))
    assert len(rows) <= 2 * 3 * 2  # sources x reasons x (one window, or two if the minute turned)
    assert sum(count for _, _, count in rows) == 600
    assert {address for address, _, _ in rows} == set(sources)
    assert not AccessAuditEvent.objects.exists()


def test_an_authenticated_refusal_is_still_one_audit_row(api: Api, token_a_write: str) -> None:
    for _ in range(3):
        assert_error(api.post(EMBED, {**BODY, "tenant_id": "tenant-b"}, token=token_a_write), 403, "tenant_mismatch")
    assert AccessAuditEvent.objects.filter(reason="tenant_mismatch").count() == 3
    assert not UnauthenticatedRefusalWindow.objects.exists()
