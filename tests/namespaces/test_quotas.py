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


# --- ingestion and search charge the tokens they embed ---

DOCUMENTS = f"/v1/namespaces/{DEFAULT_NAMESPACE}/documents"
SEARCH = f"/v1/namespaces/{DEFAULT_NAMESPACE}/search"
SPLADE = "sparse.splade_tiny.30522.v1"
LONG_TEXT = "aspirin inhibits platelet aggregation in patients with coronary artery disease"  # 17 tokens


def embedded_tokens(api, token: str, texts: list[str], namespace: str = DEFAULT_NAMESPACE) -> int:
    """What /v1/embed charges for these texts: the count ingestion and search must charge too."""
    answer = api.post("/v1/embed", {"namespace": namespace, "texts": texts}, token=token)
    assert answer.status_code == 200, answer.content[:300]
    return int(answer.json()["usage"]["total_tokens"])


@pytest.fixture
def charges(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The tokens charged to tenants' quotas, in order (the real charge still happens)."""
    from namespaces import quotas

    charged: list[int] = []
    real = quotas.quota_charge_tokens

    def spy(*, tenant: Tenant, tokens: int) -> None:
        charged.append(tokens)
        real(tenant=tenant, tokens=tokens)

    monkeypatch.setattr("embeddings.ingestion.quota_charge_tokens", spy)
    monkeypatch.setattr("medkg.api.v1.search.quota_charge_tokens", spy)
    return charged


@pytest.mark.django_db
def test_ingestion_over_the_token_quota_gets_429_with_retry_after_and_stores_nothing(
    api, synced, quota_store, tenant_a: Tenant, token_a_write, token_b_write
):
    from embeddings.models import Document, IngestionJob

    Tenant.objects.filter(pk=tenant_a.pk).update(quota_tokens_per_minute=30)
    first = [{"id": f"doc-{i}", "text": LONG_TEXT} for i in range(3)]  # 51 tokens: let in, overdraws by 21
    assert api.post(DOCUMENTS, {"tenant_id": "tenant-a", "documents": first}, token=token_a_write).status_code == 202
    limited = decisions("tokens", "limited", "ingest")

    refused = api.post(
        DOCUMENTS, {"tenant_id": "tenant-a", "documents": [{"id": "late", "text": "insulin"}]}, token=token_a_write
    )

    error = assert_error(refused, 429, "quota_exceeded")
    assert error["error"]["details"]["kind"] == "tokens"
    assert 41 <= int(refused["Retry-After"]) <= 43  # 21 tokens below zero at 0.5 token/s
    assert decisions("tokens", "limited", "ingest") == limited + 1
    assert not Document.objects.filter(external_id="late").exists()
    assert IngestionJob.objects.filter(tenant=tenant_a).count() == 1
    other = api.post(DOCUMENTS, {"tenant_id": "tenant-b", "documents": first}, token=token_b_write)
    assert other.status_code == 202  # tenant B's bucket is its own


@pytest.mark.django_db
def test_search_over_the_token_quota_gets_429_with_retry_after(
    api, synced, quota_store, tenant_a: Tenant, token_a_write, token_b_write
):
    Tenant.objects.filter(pk=tenant_a.pk).update(quota_tokens_per_minute=10)
    query = {"tenant_id": "tenant-a", "query": LONG_TEXT}
    assert api.post(SEARCH, query, token=token_a_write).status_code == 200  # 17 tokens: overdraws by 7
    limited = decisions("tokens", "limited", "search")

    refused = api.post(SEARCH, query, token=token_a_write)
    hybrid = api.post("/v1/search", {**query, "namespaces": [{"namespace": DEFAULT_NAMESPACE}]}, token=token_a_write)

    for answer in (refused, hybrid):
        assert assert_error(answer, 429, "quota_exceeded")["error"]["details"]["kind"] == "tokens"
        assert 40 <= int(answer["Retry-After"]) <= 43  # 7 tokens below zero at 1/6 token/s
    assert decisions("tokens", "limited", "search") == limited + 2
    assert api.post(SEARCH, {**query, "tenant_id": "tenant-b"}, token=token_b_write).status_code == 200


@pytest.mark.django_db
def test_ingestion_charges_what_embed_charges_for_the_texts_it_will_embed(
    api, synced, quota_store, tenant_a: Tenant, token_a_write, charges, django_capture_on_commit_callbacks, settings
):
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"  # the job runs in the request's thread when it commits
    texts = [LONG_TEXT, "Insulin lowers blood glucose.", "Statins reduce LDL cholesterol. " * 40]  # the last: cut
    documents = [{"id": f"doc-{i}", "text": text, "metadata": {"i": i}} for i, text in enumerate(texts)]

    def post(batch: list[dict]) -> None:
        with django_capture_on_commit_callbacks(execute=True):  # the job runs: the documents get indexed
            answer = api.post(DOCUMENTS, {"tenant_id": "tenant-a", "documents": batch}, token=token_a_write)
        assert answer.status_code == 202, answer.content[:300]

    post(documents)
    post(documents)  # the same again: nothing to embed
    post([{**documents[0], "metadata": {"i": 9}}])  # metadata only: the vector is kept
    post([{**documents[1], "text": "Insulin raises glycogen synthesis."}])  # a new text: embedded again

    truncated = api.post(
        "/v1/embed",
        {"namespace": DEFAULT_NAMESPACE, "texts": texts, "options": {"truncate": True}},
        token=token_a_write,
    )
    assert charges == [
        truncated.json()["usage"]["total_tokens"],
        0,
        0,
        embedded_tokens(api, token_a_write, ["Insulin raises glycogen synthesis."]),
    ]
    assert charges[0] > 256  # the third text alone is cut to the namespace's budget of 256


@pytest.mark.django_db
def test_search_charges_the_query_once_per_namespace_it_searches(
    api, synced, quota_store, tenant_a: Tenant, token_a_write, charges
):
    query = {"tenant_id": "tenant-a", "query": LONG_TEXT}
    assert api.post(SEARCH, query, token=token_a_write).status_code == 200
    namespaces = [{"namespace": DEFAULT_NAMESPACE}, {"namespace": SPLADE}]
    assert api.post("/v1/search", {**query, "namespaces": namespaces}, token=token_a_write).status_code == 200

    dense = embedded_tokens(api, token_a_write, [LONG_TEXT])
    sparse = embedded_tokens(api, token_a_write, [LONG_TEXT], namespace=SPLADE)
    assert charges == [dense, dense + sparse]
