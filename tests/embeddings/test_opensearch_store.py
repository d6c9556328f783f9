"""The OpenSearch k-NN store.

A real OpenSearch (a JVM cluster with the k-NN plugin's native libraries) cannot run here: it is not on PyPI,
Debian or npm, and nothing else can be fetched. So there are two kinds of tests:

- Unit tests (always run): the store talks through the real opensearch-py client and its real serialisation to a
  real HTTP server on loopback (`FakeOpenSearch`, a `http.server` in a thread). The server records every request
  and answers in the response shapes of the OpenSearch REST docs. The tests check the exact index body, query
  bodies and bulk actions the store sends, how it reads answers, and how every failure becomes the project's error.
  The server does not search: where an answer matters, the test scripts it (tests/embeddings/opensearch_fake.py).
- Integration tests (marked `opensearch`): run against a real cluster when OPENSEARCH_URL is set, and are skipped
  with that reason otherwise.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import BackendError, BackendUnavailable, DimensionMismatch, InvalidRequest, MedkgError
from embeddings.stores import opensearch_index
from embeddings.stores.base import SearchHit, StoreConfig, StoredVector
from embeddings.stores.opensearch import OpenSearchStore, index_name, inner_product_from_score
from tests.embeddings.opensearch_fake import (
    SHARDS_OK,
    FakeOpenSearch,
    assert_project_error,
    error_body,
    on_live_cluster,
    requires_opensearch,
    search_answer,
)
from tests.servers import free_port

NAMESPACE = "single_vector.test.4.v1"
INDEX = "medkg-single_vector-test-4-v1"
CONFIG = StoreConfig(namespace=NAMESPACE, dim=4, backend="opensearch", hnsw_m=16, ef_construction=128, ef_search=48)

# The index body the store must send, written out by hand (not taken from the store) so that a change shows here.
EXPECTED_INDEX_BODY: dict[str, Any] = {
    "settings": {"index": {"knn": True, "knn.algo_param.ef_search": 48}},
    "mappings": {
        "dynamic": "strict",
        "_meta": {"namespace": NAMESPACE, "dim": 4, "created_by": "medkg"},
        "properties": {
            "tenant": {"type": "keyword"},
            "label": {"type": "long"},
            "external_id": {"type": "keyword"},
            "metadata": {"type": "flat_object"},
            "vector": {
                "type": "knn_vector",
                "dimension": 4,
                "method": {
                    "name": "hnsw",
                    "engine": "faiss",
                    "space_type": "innerproduct",
                    "parameters": {"m": 16, "ef_construction": 128},
                },
            },
        },
    },
}


def knn_hit(tenant: str, label: int, score: float) -> dict[str, Any]:
    return {"_index": INDEX, "_id": f"{tenant}:{label}", "_score": score, "fields": {"label": [label]}}


@pytest.fixture
def store() -> OpenSearchStore:
    return OpenSearchStore(CONFIG)


@pytest.fixture
def indexed(fake: FakeOpenSearch) -> FakeOpenSearch:
    """The namespace's index exists, as the store would have created it."""
    fake.create_index(INDEX, json.loads(json.dumps(EXPECTED_INDEX_BODY)))
    return fake


def item(label: int, vector: list[float], **metadata: Any) -> StoredVector:
    return StoredVector(
        label=label, vector=np.array(vector, dtype=np.float32), external_id=f"doc-{label}", metadata=metadata
    )


QUERY = np.array([0.5, 0.5, 0.5, 0.5], dtype=np.float32)


# --- names and scores ----------------------------------------------------------------------------------------------
def test_index_name_is_the_prefix_and_the_namespace_lowercased_with_dots_replaced(settings: Any) -> None:
    settings.OPENSEARCH_INDEX_PREFIX = "medkg-"
    assert index_name("single_vector.minilm.384.v1") == "medkg-single_vector-minilm-384-v1"
    assert index_name("Single_Vector.Qwen3.4096.V1", prefix="Staging.") == "staging-single_vector-qwen3-4096-v1"
    assert index_name("a b/c*d", prefix="x-") == "x-a-b-c-d"


def test_an_index_prefix_that_makes_an_invalid_name_is_a_clear_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="OPENSEARCH_INDEX_PREFIX"):
        index_name("ns", prefix="_hidden")
    with pytest.raises(BackendUnavailable, match="255 bytes"):
        index_name("n" * 300, prefix="medkg-")


def documented_score(inner_product: float) -> float:
    """The innerproduct score of the k-NN spaces table (Faiss): d = -x·y; 1 / (1 + d) if d >= 0, else -d + 1."""
    distance = -inner_product
    return 1.0 / (1.0 + distance) if distance >= 0 else -distance + 1.0


@given(st.floats(min_value=-1000.0, max_value=1000.0, allow_nan=False))
def test_scores_convert_back_to_the_raw_inner_product(inner_product: float) -> None:
    assert inner_product_from_score(documented_score(inner_product)) == pytest.approx(inner_product, rel=1e-9, abs=1e-9)


def test_score_conversion_examples_and_order() -> None:
    assert inner_product_from_score(1.75) == pytest.approx(0.75)
    assert inner_product_from_score(1.0) == 0.0
    assert inner_product_from_score(0.8) == pytest.approx(-0.25)
    scores = [2.0, 1.5, 1.0, 0.9, 0.5, 0.1]
    converted = [inner_product_from_score(score) for score in scores]
    assert converted == sorted(converted, reverse=True)
    for impossible in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(BackendError):
            inner_product_from_score(impossible)


# --- index creation and upsert -------------------------------------------------------------------------------------
def test_first_upsert_creates_the_index_with_the_exact_body_then_bulk_indexes(
    fake: FakeOpenSearch, store: OpenSearchStore
) -> None:
    written = store.upsert(
        tenant="tenant-a",
        items=[item(101, [0.5, 0.5, 0.5, 0.5], kind="trial", year=2020), item(102, [1.0, 0.0, 0.0, 0.0])],
    )

    assert written == 2
    assert fake.calls() == [
        ("HEAD", f"/{INDEX}"),
        ("PUT", f"/{INDEX}"),
        ("GET", f"/{INDEX}/_mapping"),
        ("POST", "/_bulk"),
    ]
    assert fake.requests[1].body == EXPECTED_INDEX_BODY
    bulk = fake.requests[3]
    assert bulk.query == {"refresh": "wait_for"}
    assert bulk.body == [
        {"index": {"_id": "tenant-a:101", "_index": INDEX}},
        {
            "tenant": "tenant-a",
            "label": 101,
            "external_id": "doc-101",
            "metadata": {"kind": "trial", "year": 2020},
            "vector": [0.5, 0.5, 0.5, 0.5],
        },
        {"index": {"_id": "tenant-a:102", "_index": INDEX}},
        {"tenant": "tenant-a", "label": 102, "external_id": "doc-102", "metadata": {}, "vector": [1.0, 0.0, 0.0, 0.0]},
    ]
    assert bulk.headers["content-type"].startswith("application/json")


def test_later_upserts_only_check_the_index_exists(fake: FakeOpenSearch, store: OpenSearchStore) -> None:
    store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0])])
    fake.requests.clear()

    assert store.upsert(tenant="tenant-b", items=[item(2, [0, 1, 0, 0]), item(1, [0, 0, 1, 0])]) == 2

    assert fake.calls() == [("HEAD", f"/{INDEX}"), ("POST", "/_bulk")]
    ids = [line["index"]["_id"] for line in fake.requests[1].body[::2]]
    assert ids == ["tenant-b:2", "tenant-b:1"]  # the same label in another tenant is another document


def test_an_index_created_by_another_worker_meanwhile_is_used(fake: FakeOpenSearch, store: OpenSearchStore) -> None:
    fake.script("HEAD", f"/{INDEX}", 404, None)  # not there when asked ...
    fake.create_index(INDEX, json.loads(json.dumps(EXPECTED_INDEX_BODY)))  # ... there when created

    assert store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0])]) == 1
    assert fake.calls()[:3] == [("HEAD", f"/{INDEX}"), ("PUT", f"/{INDEX}"), ("GET", f"/{INDEX}/_mapping")]


def test_upsert_of_nothing_sends_nothing(fake: FakeOpenSearch, store: OpenSearchStore) -> None:
    assert store.upsert(tenant="tenant-a", items=[]) == 0
    assert fake.requests == []


@pytest.mark.parametrize(
    "vector",
    [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], [math.nan, 0.0, 0.0, 0.0], [math.inf, 0.0, 0.0, 0.0]],
    ids=["too-short", "too-long", "nan", "inf"],
)
def test_upsert_checks_every_vector_before_sending_anything(
    fake: FakeOpenSearch, store: OpenSearchStore, vector: list[float]
) -> None:
    with pytest.raises(DimensionMismatch) as caught:
        store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0]), item(2, vector)])
    assert caught.value.code == "dimension_mismatch"
    assert fake.requests == []


def test_an_existing_index_of_another_dimension_is_refused(fake: FakeOpenSearch, store: OpenSearchStore) -> None:
    other = json.loads(json.dumps(EXPECTED_INDEX_BODY))
    other["mappings"]["properties"]["vector"]["dimension"] = 8
    fake.create_index(INDEX, other)

    with pytest.raises(DimensionMismatch) as caught:
        store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0])])

    assert caught.value.details == {"namespace": NAMESPACE, "expected": 4, "got": 8}
    assert ("POST", "/_bulk") not in fake.calls()


def test_an_index_of_another_namespace_or_not_made_by_medkg_is_refused(
    fake: FakeOpenSearch, store: OpenSearchStore
) -> None:
    other = json.loads(json.dumps(EXPECTED_INDEX_BODY))
    other["mappings"]["_meta"]["namespace"] = "single-vector.test.4.v1"  # sanitises to the same index name
    fake.create_index(INDEX, other)
    with pytest.raises(BackendError, match="holds namespace"):
        store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0])])

    fake.indexes[INDEX] = {"mappings": {"properties": {"vector": {"type": "float"}, "tenant": {"type": "text"}}}}
    with pytest.raises(BackendError, match="not created by medkg"):
        store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0])])
    assert ("POST", "/_bulk") not in fake.calls()


def test_a_failed_document_in_a_bulk_request_fails_the_upsert(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    failure = {
        "index": {
            "_index": INDEX,
            "_id": "tenant-a:2",
            "status": 400,
            "error": {"type": "mapper_parsing_exception", "reason": "failed to parse field [metadata]"},
        }
    }
    ok = {"index": {"_index": INDEX, "_id": "tenant-a:1", "_version": 1, "result": "created", "status": 201}}
    indexed.script("POST", "/_bulk", 200, {"took": 1, "errors": True, "items": [ok, failure]})

    with pytest.raises(BackendError) as caught:
        store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0]), item(2, [0, 1, 0, 0])])

    assert caught.value.details["failed"] == 1
    assert caught.value.details["ids"] == ["tenant-a:2"]
    assert caught.value.details["error"] == "mapper_parsing_exception"
    assert "failed to parse field [metadata]" in caught.value.message


# --- delete --------------------------------------------------------------------------------------------------------
def test_delete_sends_bulk_deletes_of_the_tenants_ids_and_counts_only_those_removed(
    indexed: FakeOpenSearch, store: OpenSearchStore
) -> None:
    store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0]), item(2, [0, 1, 0, 0])])
    indexed.requests.clear()

    removed = store.delete(tenant="tenant-a", labels=[2, 1, 999, 2])

    assert removed == 2  # 999 is unknown: ignored, and a repeated label is deleted once
    assert indexed.calls() == [("POST", "/_bulk")]
    assert indexed.requests[0].query == {"refresh": "wait_for"}
    assert indexed.requests[0].body == [
        {"delete": {"_id": "tenant-a:1", "_index": INDEX}},
        {"delete": {"_id": "tenant-a:2", "_index": INDEX}},
        {"delete": {"_id": "tenant-a:999", "_index": INDEX}},
    ]


def test_delete_in_the_name_of_another_tenant_touches_nothing(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    store.upsert(tenant="tenant-b", items=[item(7, [1, 0, 0, 0])])
    assert store.delete(tenant="tenant-a", labels=[7]) == 0
    assert f"{INDEX}/tenant-b:7" in indexed.documents


def test_delete_without_an_index_or_labels_sends_no_bulk(fake: FakeOpenSearch, store: OpenSearchStore) -> None:
    assert store.delete(tenant="tenant-a", labels=[]) == 0
    assert store.delete(tenant="tenant-a", labels=[1, 2]) == 0
    assert fake.calls() == [("HEAD", f"/{INDEX}")]


# --- search --------------------------------------------------------------------------------------------------------
def test_search_sends_a_knn_query_with_the_tenant_filter_inside_it(
    indexed: FakeOpenSearch, store: OpenSearchStore
) -> None:
    indexed.script(
        "POST",
        f"/{INDEX}/_search",
        200,
        search_answer([knn_hit("tenant-a", 7, 1.75), knn_hit("tenant-a", 9, 1.0), knn_hit("tenant-a", 3, 0.8)]),
    )

    hits = store.search(tenant="tenant-a", query=QUERY, k=5)

    assert hits == [SearchHit(7, pytest.approx(0.75)), SearchHit(9, 0.0), SearchHit(3, pytest.approx(-0.25))]
    assert indexed.calls() == [("HEAD", f"/{INDEX}"), ("GET", f"/{INDEX}/_mapping"), ("POST", f"/{INDEX}/_search")]
    body = indexed.requests[-1].body
    assert body == {
        "size": 5,
        "_source": False,
        "docvalue_fields": ["label"],
        "query": {
            "knn": {
                "vector": {
                    "vector": [0.5, 0.5, 0.5, 0.5],
                    "k": 5,
                    "method_parameters": {"ef_search": 48},
                    "filter": {"bool": {"filter": [{"term": {"tenant": "tenant-a"}}]}},
                }
            }
        },
    }
    # Efficient filtering: no post_filter and no bool around the knn query, which would filter after the search.
    assert set(body) == {"size", "_source", "docvalue_fields", "query"}
    assert list(body["query"]) == ["knn"]


def test_search_puts_allowed_labels_and_metadata_filters_in_the_knn_filter(
    indexed: FakeOpenSearch, store: OpenSearchStore
) -> None:
    store.search(
        tenant="tenant-a",
        query=QUERY,
        k=3,
        allowed_labels=[9, 3, 3, 7],
        filters={"year": 2020, "kind": "trial", "open": True, "phase": [2, "3b"], "site.country": "NL", "p": 0.5},
    )

    assert indexed.requests[-1].body["query"]["knn"]["vector"]["filter"] == {
        "bool": {
            "filter": [
                {"term": {"tenant": "tenant-a"}},
                {"terms": {"label": [3, 7, 9]}},
                {"term": {"metadata.kind": "trial"}},
                {"term": {"metadata.open": "true"}},
                {"term": {"metadata.p": "0.5"}},
                {"terms": {"metadata.phase": ["2", "3b"]}},
                {"term": {"metadata.site.country": "NL"}},
                {"term": {"metadata.year": "2020"}},
            ]
        }
    }


def test_later_searches_send_only_the_search(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    store.search(tenant="tenant-a", query=QUERY, k=1)
    indexed.requests.clear()
    store.search(tenant="tenant-b", query=QUERY, k=1)
    assert indexed.calls() == [("POST", f"/{INDEX}/_search")]


def test_searches_that_cannot_match_send_nothing(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    assert store.search(tenant="tenant-a", query=QUERY, k=5, allowed_labels=[]) == []
    assert store.search(tenant="tenant-a", query=QUERY, k=5, filters={"kind": []}) == []
    assert indexed.requests == []


def test_search_without_an_index_finds_nothing(fake: FakeOpenSearch, store: OpenSearchStore) -> None:
    assert store.search(tenant="tenant-a", query=QUERY, k=5) == []
    assert fake.calls() == [("HEAD", f"/{INDEX}")]


@pytest.mark.parametrize("query", [[1.0, 0.0, 0.0], [0.0] * 5, [math.nan, 0, 0, 0]], ids=["short", "long", "nan"])
def test_search_checks_the_query_dimension_before_sending(
    indexed: FakeOpenSearch, store: OpenSearchStore, query: list[float]
) -> None:
    with pytest.raises(DimensionMismatch):
        store.search(tenant="tenant-a", query=np.array(query, dtype=np.float32), k=5)
    assert indexed.requests == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 10_001}, "k must be"),
        ({"k": True}, "k must be"),
        ({"filters": {"kind": {"nested": "object"}}}, "filters.kind"),
        ({"filters": {"kind": None}}, "filters.kind"),
        ({"filters": {"kind": [1, None]}}, "filters.kind"),
        ({"filters": {"ratio": math.nan}}, "filters.ratio"),
        ({"filters": {"": "x"}}, "not a metadata key"),
        ({"filters": {"a..b": "x"}}, "not a metadata key"),
        ({"tenant": ""}, "tenant is required"),
    ],
)
def test_bad_search_arguments_are_invalid_requests(
    indexed: FakeOpenSearch, store: OpenSearchStore, arguments: dict[str, Any], message: str
) -> None:
    call: dict[str, Any] = {"tenant": "tenant-a", "query": QUERY, "k": 5, **arguments}
    with pytest.raises(InvalidRequest, match=message) as caught:
        store.search(**call)
    assert caught.value.status_code == 400
    assert indexed.requests == []


def test_a_partial_answer_from_some_shards_is_refused(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    answer = search_answer([knn_hit("tenant-a", 7, 1.5)])
    answer["_shards"] = {"total": 2, "successful": 1, "skipped": 0, "failed": 1}
    indexed.script("POST", f"/{INDEX}/_search", 200, answer)
    with pytest.raises(BackendUnavailable, match="only some shards"):
        store.search(tenant="tenant-a", query=QUERY, k=5)


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        (f"/{INDEX}/_search", search_answer([{"_id": "tenant-a:7", "_score": 1.5}])),  # no fields.label
        (f"/{INDEX}/_search", {"took": 1}),
        (f"/{INDEX}/_search", ["not", "an", "object"]),
        (f"/{INDEX}/_count", {"took": 1}),
    ],
)
def test_an_answer_of_another_shape_is_a_backend_error(
    indexed: FakeOpenSearch, store: OpenSearchStore, path: str, answer: Any
) -> None:
    indexed.script("POST", path, 200, answer)
    with pytest.raises(BackendError, match="unexpected body") as caught:
        store.search(tenant="tenant-a", query=QUERY, k=5) if path.endswith("_search") else store.count(
            tenant="tenant-a"
        )
    assert_project_error(caught.value)


def test_an_answer_that_is_not_json_is_a_backend_error(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    indexed.script("POST", f"/{INDEX}/_count", 200, b"<html>proxy error</html>")
    with pytest.raises(BackendError) as caught:
        store.count(tenant="tenant-a")
    assert_project_error(caught.value)
    assert caught.value.details["exception"] == "SerializationError"


# --- count, labels, drop, stats ------------------------------------------------------------------------------------
def test_count_counts_the_tenants_documents(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    indexed.script("POST", f"/{INDEX}/_count", 200, {"count": 42, "_shards": SHARDS_OK})
    assert store.count(tenant="tenant-a") == 42
    assert indexed.requests[-1].body == {"query": {"term": {"tenant": "tenant-a"}}}


def test_count_and_labels_without_an_index_are_empty(fake: FakeOpenSearch, store: OpenSearchStore) -> None:
    assert store.count(tenant="tenant-a") == 0
    assert store.labels(tenant="tenant-a") == set()


def test_labels_pages_through_the_tenant_with_search_after(
    indexed: FakeOpenSearch, store: OpenSearchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opensearch_index, "PAGE_SIZE", 2)
    page = [{"_index": INDEX, "_id": f"tenant-a:{label}", "_score": None, "sort": [label]} for label in (1, 5, 9)]
    indexed.script("POST", f"/{INDEX}/_search", 200, search_answer(page[:2]))
    indexed.script("POST", f"/{INDEX}/_search", 200, search_answer(page[2:]))

    assert store.labels(tenant="tenant-a") == {1, 5, 9}

    first, second = (request.body for request in indexed.requests)
    assert first == {
        "size": 2,
        "_source": False,
        "track_total_hits": False,
        "query": {"term": {"tenant": "tenant-a"}},
        "sort": [{"label": "asc"}],
    }
    assert second == {**first, "search_after": [5]}


def test_drop_of_a_tenant_deletes_by_query_on_the_tenant(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    store.drop(tenant="tenant-a")
    request = indexed.requests[-1]
    assert (request.method, request.path) == ("POST", f"/{INDEX}/_delete_by_query")
    assert request.query == {"refresh": "true", "conflicts": "proceed"}
    assert request.body == {"query": {"term": {"tenant": "tenant-a"}}}


def test_drop_of_a_tenant_with_failures_is_a_backend_error(indexed: FakeOpenSearch, store: OpenSearchStore) -> None:
    answer = {"took": 1, "deleted": 3, "failures": [{"index": INDEX, "id": "tenant-a:1", "status": 500}]}
    indexed.script("POST", f"/{INDEX}/_delete_by_query", 200, answer)
    with pytest.raises(BackendError, match="could not delete"):
        store.drop(tenant="tenant-a")


def test_drop_of_every_tenant_deletes_the_index_and_a_later_upsert_recreates_it(
    indexed: FakeOpenSearch, store: OpenSearchStore
) -> None:
    store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0])])
    store.drop()
    assert indexed.calls()[-1] == ("DELETE", f"/{INDEX}")
    assert INDEX not in indexed.indexes
    store.drop()  # already gone: nothing to do

    indexed.requests.clear()
    store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0])])
    assert indexed.calls() == [
        ("HEAD", f"/{INDEX}"),
        ("PUT", f"/{INDEX}"),
        ("GET", f"/{INDEX}/_mapping"),
        ("POST", "/_bulk"),
    ]


def test_stats_counts_vectors_per_tenant_with_a_paged_composite_aggregation(
    indexed: FakeOpenSearch, store: OpenSearchStore
) -> None:
    first = {"after_key": {"tenant": "tenant-b"}, "buckets": [{"key": {"tenant": "tenant-a"}, "doc_count": 3}]}
    first["buckets"].append({"key": {"tenant": "tenant-b"}, "doc_count": 5})
    indexed.script("POST", f"/{INDEX}/_search", 200, search_answer([], aggregations={"tenants": first}))
    indexed.script("POST", f"/{INDEX}/_search", 200, search_answer([], aggregations={"tenants": {"buckets": []}}))

    stats = store.stats()

    assert [(entry.tenant, entry.vectors) for entry in stats] == [("tenant-a", 3), ("tenant-b", 5)]
    composite = {"size": 1000, "sources": [{"tenant": {"terms": {"field": "tenant"}}}]}
    assert indexed.requests[0].body == {
        "size": 0,
        "track_total_hits": False,
        "aggs": {"tenants": {"composite": composite}},
    }
    assert indexed.requests[1].body["aggs"]["tenants"]["composite"]["after"] == {"tenant": "tenant-b"}


# --- errors, credentials and readiness -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "kind", "expected", "code"),
    [
        (400, "illegal_argument_exception", BackendError, "backend_error"),
        (500, "exception", BackendError, "backend_error"),
        (401, "security_exception", BackendError, "backend_error"),
        (403, "security_exception", BackendError, "backend_error"),
        (429, "rejected_execution_exception", BackendUnavailable, "backend_unavailable"),
        (503, "cluster_block_exception", BackendUnavailable, "backend_unavailable"),
    ],
)
def test_error_answers_become_the_projects_errors(
    indexed: FakeOpenSearch,
    store: OpenSearchStore,
    status: int,
    kind: str,
    expected: type[MedkgError],
    code: str,
) -> None:
    indexed.script("POST", f"/{INDEX}/_search", status, error_body(status, kind, "the reason"), times=None)
    with pytest.raises(expected) as caught:
        store.search(tenant="tenant-a", query=QUERY, k=5)
    assert_project_error(caught.value)
    assert caught.value.code == code
    assert caught.value.details["status"] == status
    assert caught.value.details["reason"] == "the reason"
    assert caught.value.details["operation"] == "search"
    if status in (401, 403):
        assert "OPENSEARCH_USERNAME" in caught.value.message


def test_an_unreachable_server_is_backend_unavailable(settings: Any, store: OpenSearchStore) -> None:
    settings.OPENSEARCH_URL = f"http://127.0.0.1:{free_port()}"
    for call in (
        lambda: store.upsert(tenant="tenant-a", items=[item(1, [1, 0, 0, 0])]),
        lambda: store.search(tenant="tenant-a", query=QUERY, k=5),
        lambda: store.count(tenant="tenant-a"),
        lambda: store.delete(tenant="tenant-a", labels=[1]),
        lambda: store.drop(),
    ):
        with pytest.raises(BackendUnavailable, match="unreachable") as caught:
            call()
        assert_project_error(caught.value)
        assert caught.value.status_code == 503


def test_a_slow_server_is_a_timeout_and_backend_unavailable(
    indexed: FakeOpenSearch, store: OpenSearchStore, settings: Any
) -> None:
    store.search(tenant="tenant-a", query=QUERY, k=1)  # the index is checked; next comes the search only
    settings.OPENSEARCH_TIMEOUT_SECONDS = 1
    indexed.script("POST", f"/{INDEX}/_search", 200, search_answer([]), delay=2.5)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="timed out") as caught:
        store.search(tenant="tenant-a", query=QUERY, k=5)
    assert time.monotonic() - started < 2.4  # not retried: a timed-out search may still be running
    assert_project_error(caught.value)


def test_without_opensearch_url_the_store_is_unavailable_and_not_ready(settings: Any, store: OpenSearchStore) -> None:
    settings.OPENSEARCH_URL = ""
    with pytest.raises(BackendUnavailable, match="OPENSEARCH_URL is not set"):
        store.search(tenant="tenant-a", query=QUERY, k=5)
    assert store.readiness() == (False, "OPENSEARCH_URL is not set: the OpenSearch store has no server to talk to.")


def test_credentials_are_sent_as_basic_auth(fake: FakeOpenSearch, store: OpenSearchStore, settings: Any) -> None:
    settings.OPENSEARCH_USERNAME = "medkg"
    settings.OPENSEARCH_PASSWORD = "s3cret"
    assert store.readiness() == (True, "")
    assert fake.calls() == [("GET", "/")]
    assert fake.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"medkg:s3cret").decode()


def test_readiness_says_why_not(fake: FakeOpenSearch, store: OpenSearchStore, settings: Any) -> None:
    fake.script("GET", "/", 401, error_body(401, "security_exception", "missing authentication credentials"))
    ready, reason = store.readiness()
    assert not ready
    assert "OPENSEARCH_USERNAME" in reason

    settings.OPENSEARCH_URL = f"http://127.0.0.1:{free_port()}"
    ready, reason = store.readiness()
    assert not ready
    assert "unreachable" in reason


# --- against a real OpenSearch ------------------------------------------------------------------------------------
@pytest.fixture
def live_store(settings: Any) -> Iterator[OpenSearchStore]:
    """A store on the real cluster, in an index of its own that is deleted afterwards."""
    on_live_cluster(settings)
    store = OpenSearchStore(StoreConfig(namespace="single_vector.live.8.v1", dim=8, backend="opensearch"))
    yield store
    store.drop()


def unit_vectors(rng: np.random.Generator, count: int, dim: int = 8) -> np.ndarray:
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def stored(labels: range | list[int], vectors: np.ndarray, **metadata: Any) -> list[StoredVector]:
    return [
        StoredVector(label, vector, f"doc-{label}", dict(metadata))
        for label, vector in zip(labels, vectors, strict=True)
    ]


@pytest.mark.opensearch
@requires_opensearch
def test_live_round_trip_with_tenant_isolation(live_store: OpenSearchStore) -> None:
    rng = np.random.default_rng(7)
    vectors_a, vectors_b = unit_vectors(rng, 3), unit_vectors(rng, 40)
    labels_a, labels_b = [1, 2, 3], list(range(100, 140))
    assert live_store.readiness() == (True, "")
    assert live_store.upsert(tenant="tenant-a", items=stored(labels_a, vectors_a)) == 3
    assert live_store.upsert(tenant="tenant-b", items=stored(labels_b, vectors_b)) == 40
    assert live_store.count(tenant="tenant-a") == 3
    assert live_store.labels(tenant="tenant-b") == set(labels_b)

    for query in unit_vectors(rng, 20):
        hits = live_store.search(tenant="tenant-a", query=query, k=50)  # k far beyond A's 3 documents
        assert [hit.label for hit in hits] == [labels_a[i] for i in np.argsort(-(vectors_a @ query))]
        assert [hit.score for hit in hits] == pytest.approx(
            sorted((vectors_a @ query).tolist(), reverse=True), abs=1e-4
        )
        assert {hit.label for hit in live_store.search(tenant="tenant-b", query=query, k=50)} <= set(labels_b)


@pytest.mark.opensearch
@requires_opensearch
def test_live_delete_reupsert_filters_and_drop(live_store: OpenSearchStore) -> None:
    rng = np.random.default_rng(11)
    vectors = unit_vectors(rng, 4)
    live_store.upsert(tenant="tenant-a", items=stored([1, 2], vectors[:2], kind="trial", year=2020))
    live_store.upsert(tenant="tenant-a", items=stored([3], vectors[2:3], kind="review", year=2021))
    live_store.upsert(tenant="tenant-b", items=stored([4], vectors[3:4], kind="trial", year=2020))

    trial = live_store.search(tenant="tenant-a", query=vectors[0], k=10, filters={"kind": "trial"})
    assert {hit.label for hit in trial} == {1, 2}
    assert {
        hit.label for hit in live_store.search(tenant="tenant-a", query=vectors[0], k=10, filters={"year": 2021})
    } == {3}
    assert [hit.label for hit in live_store.search(tenant="tenant-a", query=vectors[0], k=10, allowed_labels=[2])] == [
        2
    ]

    assert live_store.delete(tenant="tenant-a", labels=[4, 999]) == 0  # B's label and an unknown one: untouched
    assert live_store.count(tenant="tenant-b") == 1
    assert live_store.delete(tenant="tenant-a", labels=[1]) == 1
    assert live_store.labels(tenant="tenant-a") == {2, 3}

    live_store.upsert(tenant="tenant-a", items=stored([2], -vectors[1:2]))  # the same label, replaced
    assert live_store.count(tenant="tenant-a") == 2
    (hit,) = live_store.search(tenant="tenant-a", query=vectors[1], k=10, allowed_labels=[2])
    assert hit.score == pytest.approx(-1.0, abs=1e-4)

    live_store.drop(tenant="tenant-a")
    assert live_store.count(tenant="tenant-a") == 0
    assert live_store.count(tenant="tenant-b") == 1
    live_store.drop()
    assert live_store.count(tenant="tenant-b") == 0


@pytest.mark.opensearch
@requires_opensearch
def test_live_index_of_another_dimension_is_refused(live_store: OpenSearchStore) -> None:
    live_store.upsert(tenant="tenant-a", items=stored([1], unit_vectors(np.random.default_rng(1), 1)))
    wider = OpenSearchStore(StoreConfig(namespace=live_store.config.namespace, dim=16, backend="opensearch"))
    with pytest.raises(DimensionMismatch):
        wider.upsert(tenant="tenant-a", items=stored([2], unit_vectors(np.random.default_rng(2), 1, dim=16)))
