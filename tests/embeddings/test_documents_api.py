"""Documents, jobs and search through the API: real model, real FAISS, PostgreSQL; jobs run inline on commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from embeddings.ingestion import ingestion_pause, ingestion_resume
from embeddings.models import Document, IngestionJob, JobStatus
from embeddings.stores.registry import store_for
from namespaces.models import AccessAuditEvent, Namespace, Tenant
from tests.conftest import DEFAULT_NAMESPACE, RESTRICTED_NAMESPACE, assert_error, counter_value

DOCS = [
    {"id": "aspirin", "text": "Aspirin irreversibly inhibits platelet cyclooxygenase.", "metadata": {"kind": "drug"}},
    {"id": "insulin", "text": "Insulin lowers blood glucose in type 1 diabetes.", "metadata": {"kind": "hormone"}},
    {"id": "statin", "text": "Statins reduce LDL cholesterol and cardiovascular events.", "metadata": {"kind": "drug"}},
    {"id": "malaria", "text": "Plasmodium falciparum causes severe malaria.", "metadata": {"kind": "pathogen"}},
]
DOCUMENTS = f"/v1/namespaces/{DEFAULT_NAMESPACE}/documents"
SEARCH = f"/v1/namespaces/{DEFAULT_NAMESPACE}/search"


@pytest.fixture(autouse=True)
def _inline_ingestion(settings: Any) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"  # the job runs when the request's transaction commits


@pytest.fixture
def ingest(api: Any, django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    def post(token: str, tenant: str, documents: list[dict[str, Any]], path: str = DOCUMENTS) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return api.post(path, {"tenant_id": tenant, "documents": documents}, token=token)

    return post


def search(api: Any, token: str, tenant: str, query: str, **extra: Any) -> Any:
    return api.post(SEARCH, {"tenant_id": tenant, "query": query, **extra}, token=token)


def hit_ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content[:500]
    return [hit["id"] for hit in response.json()["hits"]]


def test_ingest_then_search_round_trip(synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str) -> None:
    before = counter_value("embedding_vector_store_upserted_total", namespace=DEFAULT_NAMESPACE, store="faiss")
    response = ingest(token_a_write, "tenant-a", DOCS)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 4 and body["status_url"] == f"/v1/jobs/{body['job_id']}"
    assert response["Location"] == body["status_url"]
    job = api.get(body["status_url"], token=token_a_write).json()
    assert job["status"] == "succeeded" and job["processed"] == job["total"] == 4 and job["kind"] == "upsert"
    hits = search(api, token_a_write, "tenant-a", "drug that lowers blood sugar", k=2).json()["hits"]
    assert hits[0]["id"] == "insulin" and hits[0]["metadata"] == {"kind": "hormone"}
    assert hits[0]["score"] > hits[1]["score"]
    assert counter_value("embedding_vector_store_upserted_total", namespace=DEFAULT_NAMESPACE, store="faiss") == (
        before + 4
    )
    rows = Document.objects.filter(tenant__slug="tenant-a")
    assert all(row.is_indexed and row.vector is not None and len(bytes(row.vector)) == 384 * 4 for row in rows)


def test_scores_are_cosine_similarities_of_the_model(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    from embeddings.services import embeddings_compute

    ingest(token_a_write, "tenant-a", DOCS)
    query = "cholesterol lowering medication"
    hits = search(api, token_a_write, "tenant-a", query, k=4).json()["hits"]
    namespace = synced[DEFAULT_NAMESPACE]
    vectors = embeddings_compute(namespace=namespace, texts=[query] + [d["text"] for d in DOCS], normalize=True).vectors
    expected = {doc["id"]: float(vectors[0] @ vectors[i + 1]) for i, doc in enumerate(DOCS)}
    assert [hit["id"] for hit in hits] == sorted(expected, key=expected.get, reverse=True)
    for hit in hits:
        assert hit["score"] == pytest.approx(expected[hit["id"]], abs=1e-4)


def test_resending_the_same_ids_is_idempotent(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DOCS)
    vectors_before = {row.external_id: bytes(row.vector) for row in Document.objects.all()}
    again = ingest(token_a_write, "tenant-a", [{**DOCS[0], "metadata": {"kind": "antiplatelet"}}, *DOCS[1:]])
    job = IngestionJob.objects.get(pk=again.json()["job_id"])
    assert job.status == JobStatus.SUCCEEDED and job.processed == 4
    assert Document.objects.count() == 4
    assert {row.external_id: bytes(row.vector) for row in Document.objects.all()} == vectors_before  # not re-embedded
    hits = search(api, token_a_write, "tenant-a", "platelet inhibitor", k=10).json()["hits"]
    assert len(hits) == 4 and len({hit["id"] for hit in hits}) == 4
    assert (hits[0]["id"], hits[0]["metadata"]) == ("aspirin", {"kind": "antiplatelet"})  # metadata updated


def test_a_changed_text_replaces_the_vector(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DOCS)
    ingest(token_a_write, "tenant-a", [{"id": "malaria", "text": "Tuberculosis is caused by Mycobacterium."}])
    row = Document.objects.get(external_id="malaria")
    assert row.version == 2 and row.is_indexed
    assert hit_ids(search(api, token_a_write, "tenant-a", "mycobacterial infection of the lungs", k=1)) == ["malaria"]
    assert store_for(synced[DEFAULT_NAMESPACE]).count(tenant="tenant-a") == 4  # replaced, not added


def test_delete_hides_at_once_and_removes_from_the_store(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, django_capture_on_commit_callbacks: Any
) -> None:
    ingest(token_a_write, "tenant-a", DOCS)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(
            DOCUMENTS, {"tenant_id": "tenant-a", "ids": ["insulin", "never-sent"]}, token=token_a_write
        )
    assert response.status_code == 202 and response.json()["accepted"] == 2
    job = api.get(response.json()["status_url"], token=token_a_write).json()
    assert job["kind"] == "delete" and job["status"] == "succeeded" and job["processed"] == 2
    assert "insulin" not in hit_ids(search(api, token_a_write, "tenant-a", "blood glucose", k=10))
    assert not Document.objects.filter(external_id="insulin").exists()
    assert store_for(synced[DEFAULT_NAMESPACE]).count(tenant="tenant-a") == 3


def test_a_deleted_document_is_hidden_before_its_delete_job_runs(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DOCS)
    ingestion_pause(namespace=synced[DEFAULT_NAMESPACE])
    response = api.delete(DOCUMENTS, {"tenant_id": "tenant-a", "ids": ["insulin"]}, token=token_a_write)
    assert response.json()["status"] == "paused"
    ids = hit_ids(search(api, token_a_write, "tenant-a", "blood glucose", k=3))
    assert "insulin" not in ids and len(ids) == 3  # still k hits: the store was asked for one more
    assert store_for(synced[DEFAULT_NAMESPACE]).count(tenant="tenant-a") == 4


def test_pause_accepts_and_holds_then_resume_indexes_everything(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, django_capture_on_commit_callbacks: Any
) -> None:
    namespace = synced[DEFAULT_NAMESPACE]
    ingestion_pause(namespace=None, reason="maintenance")
    response = ingest(token_a_write, "tenant-a", DOCS)
    assert response.status_code == 202 and response.json()["status"] == "paused"
    assert hit_ids(search(api, token_a_write, "tenant-a", "malaria")) == []
    assert Document.objects.count() == 4 and store_for(namespace).count(tenant="tenant-a") == 0
    with django_capture_on_commit_callbacks(execute=True):
        requeued = ingestion_resume(namespace=None)
    assert [job.pk for job in requeued] == [IngestionJob.objects.get().pk]
    assert IngestionJob.objects.get().status == JobStatus.SUCCEEDED
    assert sorted(hit_ids(search(api, token_a_write, "tenant-a", "malaria", k=10))) == sorted(d["id"] for d in DOCS)
    assert store_for(namespace).count(tenant="tenant-a") == 4


def test_metadata_filters_restrict_the_hits(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DOCS)
    assert sorted(hit_ids(search(api, token_a_write, "tenant-a", "medicine", k=10, filters={"kind": "drug"}))) == [
        "aspirin",
        "statin",
    ]
    either = hit_ids(search(api, token_a_write, "tenant-a", "x", k=10, filters={"kind": ["hormone", "pathogen"]}))
    assert sorted(either) == ["insulin", "malaria"]
    assert hit_ids(search(api, token_a_write, "tenant-a", "x", filters={"kind": "nothing"})) == []


def test_filters_on_declared_keys_run_in_the_store_with_no_cap_on_matches(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embeddings import selectors

    monkeypatch.setattr(selectors, "MAX_FILTER_CANDIDATES", 1)  # stands for 100,000: both drugs are "too many"
    ingest(token_a_write, "tenant-a", DOCS)
    capped = search(api, token_a_write, "tenant-a", "medicine", k=10, filters={"kind": "drug"})
    assert_error(capped, 400, "invalid_request")  # resolved by the database: capped

    namespace = synced[DEFAULT_NAMESPACE]
    namespace.parameters = {**namespace.parameters, "filterable_metadata": ["kind"]}
    namespace.save()
    store_for(namespace).drop(tenant="tenant-a")
    Document.objects.filter(tenant__slug="tenant-a").delete()
    ingest(token_a_write, "tenant-a", DOCS)  # indexed with a column of "kind"
    assert store_for(namespace).filters_natively
    drugs = hit_ids(search(api, token_a_write, "tenant-a", "medicine", k=10, filters={"kind": "drug"}))
    assert sorted(drugs) == ["aspirin", "statin"]
    either = hit_ids(search(api, token_a_write, "tenant-a", "x", k=10, filters={"kind": ["hormone", "pathogen"]}))
    assert sorted(either) == ["insulin", "malaria"]
    undeclared = search(api, token_a_write, "tenant-a", "x", filters={"author": "x"})
    assert_error(undeclared, 400, "invalid_request")
    assert "not filterable" in undeclared.json()["error"]["message"]


def test_tenants_never_see_each_others_documents(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, token_b_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DOCS)
    ingest(token_b_write, "tenant-b", [{"id": "b-only", "text": "Ebola virus disease outbreak in West Africa."}])
    assert hit_ids(search(api, token_b_write, "tenant-b", "aspirin platelets", k=100)) == ["b-only"]
    assert "b-only" not in hit_ids(search(api, token_a_write, "tenant-a", "Ebola virus", k=100))
    # The same external id in two tenants is two documents.
    ingest(token_b_write, "tenant-b", [{"id": "aspirin", "text": "B's own aspirin note."}])
    assert Document.objects.filter(external_id="aspirin").count() == 2


def test_search_query_count_does_not_grow_with_k(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, settings: Any
) -> None:
    # Every request reads its tenant, namespace and routes afresh: a cache expiring between the two
    # searches must not look like a query count that grows with k.
    settings.MEDKG_ACCESS_CACHE_TTL = 0.0
    settings.MEDKG_SERVING_STATE_TTL = 0.0
    ingest(token_a_write, "tenant-a", DOCS)
    search(api, token_a_write, "tenant-a", "warm up")
    counts = []
    for k in (1, 4):
        with CaptureQueriesContext(connection) as queries:
            assert search(api, token_a_write, "tenant-a", "aspirin", k=k).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 8


# --- access control: same rules, counter and audit as the core ---


def test_outsider_cannot_ingest_or_search_a_namespace_not_granted(
    restricted_namespace: Namespace, api: Any, outsider: dict[str, Any], refusals: Any
) -> None:
    before = refusals(reason="namespace_not_granted", endpoint="documents")
    response = api.post(
        f"/v1/namespaces/{RESTRICTED_NAMESPACE}/documents",
        {"tenant_id": "tenant-b", "documents": DOCS},
        token=outsider["token"],
    )
    assert_error(response, 404, "namespace_not_found")
    assert refusals(reason="namespace_not_granted", endpoint="documents") == before + 1
    response = api.post(
        f"/v1/namespaces/{RESTRICTED_NAMESPACE}/search",
        {"tenant_id": "tenant-b", "query": "x"},
        token=outsider["token"],
    )
    assert_error(response, 404, "namespace_not_found")
    assert AccessAuditEvent.objects.filter(token_tenant="tenant-b", reason="namespace_not_granted").count() == 2
    assert Document.objects.count() == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", DOCUMENTS, {"documents": DOCS}),
        ("delete", DOCUMENTS, {"ids": ["aspirin"]}),
        ("post", SEARCH, {"query": "aspirin"}),
    ],
)
def test_a_swapped_tenant_id_is_refused_counted_and_audited(
    synced: dict[str, Namespace],
    api: Any,
    token_b_write: str,
    refusals: Any,
    method: str,
    path: str,
    body: dict[str, Any],
) -> None:
    endpoint = "search" if path == SEARCH else "documents"
    before = refusals(reason="tenant_mismatch", endpoint=endpoint)
    response = getattr(api, method)(path, {"tenant_id": "tenant-a", **body}, token=token_b_write)
    assert_error(response, 403, "tenant_mismatch")
    assert refusals(reason="tenant_mismatch", endpoint=endpoint) == before + 1
    event = AccessAuditEvent.objects.get(reason="tenant_mismatch")
    assert (event.token_tenant, event.claimed_tenant) == ("tenant-b", "tenant-a")


def test_jobs_of_another_tenant_are_not_found_and_audited(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, token_b_read: str, refusals: Any
) -> None:
    job_id = ingest(token_a_write, "tenant-a", DOCS).json()["job_id"]
    before = refusals(reason="job_not_owned", endpoint="job")
    assert_error(api.get(f"/v1/jobs/{job_id}", token=token_b_read), 404, "job_not_found")
    assert refusals(reason="job_not_owned", endpoint="job") == before + 1
    assert AccessAuditEvent.objects.filter(reason="job_not_owned", token_tenant="tenant-b").exists()
    assert_error(api.get("/v1/jobs/not-a-uuid", token=token_b_read), 404, "job_not_found")
    assert_error(api.get(f"/v1/jobs/{job_id}"), 401, "not_authenticated")


def test_scopes_are_enforced(synced: dict[str, Namespace], api: Any, token_a_read: str) -> None:
    response = api.post(DOCUMENTS, {"tenant_id": "tenant-a", "documents": DOCS}, token=token_a_read)
    assert_error(response, 403, "insufficient_scope")
    assert search(api, token_a_read, "tenant-a", "ok").status_code == 200


# --- bad input: a clear 4xx, nothing stored ---


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"tenant_id": "tenant-a"}, 400, "invalid_request"),
        ({"tenant_id": "tenant-a", "documents": []}, 400, "invalid_request"),
        ({"tenant_id": "tenant-a", "documents": [{"id": "x"}]}, 400, "invalid_request"),
        ({"tenant_id": "tenant-a", "documents": [{"id": "x", "text": "   "}]}, 400, "invalid_request"),
        ({"tenant_id": "tenant-a", "documents": [{"id": "x", "text": "a\x00b"}]}, 400, "invalid_request"),
        ({"tenant_id": "tenant-a", "documents": [{"id": "x\x00", "text": "ok"}]}, 400, "invalid_request"),
        ({"tenant_id": "tenant-a", "documents": [{"id": 5, "text": "ok"}]}, 400, "invalid_request"),
        ({"tenant_id": "tenant-a", "documents": [{"id": "x", "text": "ok", "metadata": []}]}, 400, "invalid_request"),
        (
            {"tenant_id": "tenant-a", "documents": [{"id": "x", "text": "ok", "metadata": {"k": "v\x00"}}]},
            400,
            "invalid_request",
        ),
        (
            {"tenant_id": "tenant-a", "documents": [{"id": "x", "text": "ok", "metadata": {"k": "v" * 20000}}]},
            400,
            "invalid_request",
        ),
        ({"tenant_id": "tenant-a", "documents": [{"id": "x", "text": "ok", "extra": 1}]}, 400, "invalid_request"),
        ({"tenant_id": "tenant-a", "documents": [{"id": "x", "text": "ok"}] * 1001}, 413, "payload_too_large"),
    ],
)
def test_bad_documents_get_a_clear_4xx_and_nothing_is_stored(
    synced: dict[str, Namespace], api: Any, token_a_write: str, body: dict[str, Any], status: int, code: str
) -> None:
    assert_error(api.post(DOCUMENTS, body, token=token_a_write), status, code)
    assert Document.objects.count() == 0 and IngestionJob.objects.count() == 0


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"k": 0}, "invalid_request"),
        ({"k": 100_000}, "invalid_request"),
        ({"k": "5"}, "invalid_request"),
        ({"filters": {"a__gt": 1}}, "invalid_request"),
        ({"filters": {"a": {"nested": 1}}}, "invalid_request"),
        ({"filters": {"a": []}}, "invalid_request"),
        ({"filters": "kind=drug"}, "invalid_request"),
        ({"query": ""}, "invalid_request"),
        ({"query": "a\x00"}, "invalid_request"),
    ],
)
def test_bad_searches_get_a_clear_4xx(
    synced: dict[str, Namespace], api: Any, token_a_read: str, extra: dict[str, Any], code: str
) -> None:
    assert_error(api.post(SEARCH, {"tenant_id": "tenant-a", "query": "ok", **extra}, token=token_a_read), 400, code)


def test_search_on_a_namespace_with_no_documents_is_empty_not_an_error(
    synced: dict[str, Namespace], api: Any, token_a_read: str
) -> None:
    assert hit_ids(search(api, token_a_read, "tenant-a", "anything", k=50)) == []


def test_store_errors_do_not_lose_accepted_documents(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that fails mid-job (disk full, say: simulated, it cannot be provoked safely here) keeps the rows."""
    from core.errors import BackendError
    from embeddings.stores.faiss import FaissStore

    def failing(*args: Any, **kwargs: Any) -> int:
        raise BackendError("disk full")

    monkeypatch.setattr(FaissStore, "bulk_load", failing)
    response = ingest(token_a_write, "tenant-a", DOCS)
    assert response.status_code == 202
    job = IngestionJob.objects.get()
    assert job.status == JobStatus.FAILED and "disk full" in job.error
    assert Document.objects.count() == 4  # accepted documents are kept and can be indexed again
    monkeypatch.undo()
    ingest(token_a_write, "tenant-a", DOCS)
    assert store_for(synced[DEFAULT_NAMESPACE]).count(tenant="tenant-a") == 4


def test_vectors_in_the_store_equal_the_vectors_in_the_database(
    synced: dict[str, Namespace], ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DOCS)
    store = store_for(synced[DEFAULT_NAMESPACE])
    for row in Document.objects.all():
        vector = np.frombuffer(bytes(row.vector), dtype="<f4")
        assert store.search(tenant="tenant-a", query=vector, k=1)[0].label == row.pk
    assert Tenant.objects.filter(slug="tenant-a").exists()


def test_store_and_ingestion_metrics_are_exported(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DOCS)
    search(api, token_a_write, "tenant-a", "aspirin")
    ingestion_pause(namespace=None)
    ingest(token_a_write, "tenant-a", [{"id": "waiting", "text": "Held while paused."}])
    text = api.get("/metrics").content.decode()
    labels = f'namespace="{DEFAULT_NAMESPACE}",store="faiss"'
    for line in (
        f"embedding_vector_store_upserted_total{{{labels}}}",
        f'embedding_vector_store_search_duration_seconds_bucket{{le="0.001",{labels}}}',
        f"embedding_search_duration_seconds_count{{{labels}}}",
        f"embedding_vector_store_vectors{{{labels}}} 4.0",
        f'embedding_ingestion_queue_depth{{namespace="{DEFAULT_NAMESPACE}"}} 1.0',
    ):
        assert line in text, line
