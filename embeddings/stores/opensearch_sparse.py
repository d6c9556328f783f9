"""OpenSearch sparse store: the term weights of a sparse namespace (SPLADE) as one `rank_features` field, searched
with one `rank_feature` query per query term, so a document's score is the dot product of query and document
weights. One index per namespace, every tenant in it, the tenant filter inside the query (embeddings.stores.
opensearch_index holds what this store shares with the dense one: ids, refresh, metadata, errors).

Documented OpenSearch API only:
- the `rank_features` field: https://docs.opensearch.org/latest/field-types/supported-field-types/rank/
- the `rank_feature` query and its `linear` function (score = boost * stored value):
  https://docs.opensearch.org/latest/query-dsl/specialized/rank-feature/
- composable index templates (`PUT _index_template/<name>`): https://docs.opensearch.org/latest/im-plugin/index-templates/

The field's documented limits, and what the store does about each:
- Values must be finite, positive normal floats (Lucene's FeatureField refuses zero, negatives and subnormals):
  weights below float32's smallest normal number (2**-126) are dropped, at index and at query time; NaN and
  infinity are refused with DimensionMismatch (SparseStore.check_terms).
- Only ~9 significant bits of a value are kept (Lucene stores the float's top 16 bits): document weights are
  truncated by up to 2**-8, so scores are approximate to ~0.4 % and near-ties may swap. Weights are also clipped to
  pyserini.yaml's `opensearch.max_weight`, at index and at query time, as the embedded impact store does.
- A feature name may not contain a dot: Elasticsearch refuses it at index time, and OpenSearch's rank_feature query
  splits `<field>.<feature>` at the last dot, so such a feature could never be found. BERT's vocabulary has ".",
  "...", "##." and "u.s."-like pieces: term names are escaped percent-style, '%' as
  "%25" and '.' as "%2E" (see `feature_name`). The escape is reversible (`term_of_feature`), so two terms never
  share a feature, and the output has no dot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from embeddings.stores.base import SearchHit, SparseItem, SparseStore, SparseStoreConfig
from embeddings.stores.opensearch_index import (
    MAX_ALLOWED_LABELS,
    TenantIndex,
    TenantIndexStore,
    filter_clauses,
    index_name,
)
from namespaces.config import pyserini_config

FIELD_TYPE = "rank_features"
MIN_WEIGHT = 2.0**-126  # float32's smallest normal number: the least value a rank feature can hold
# The bool query's should clauses count against indices.query.bool.max_clause_count (1024 by default), together with
# the filter clauses: a query keeps its heaviest terms up to this many, as the expansion's top_k_terms would.
MAX_QUERY_TERMS = 1_000
TEMPLATE_PRIORITY = 500  # above the broad templates a cluster may hold for `medkg-*`, so this one's mapping wins
TEMPLATE_VERSION = 1  # bump when the template's shape changes, so `apply_rank_features` shows the change
_ESCAPED = re.compile("%25|%2E")


# --- feature names -------------------------------------------------------------------------------------------------
def feature_name(term: str) -> str:
    """A term as a rank feature name: '%' → "%25" first, then '.' → "%2E". No dot remains, and the mapping is
    one-to-one, because every '%' of the output starts one of the two escapes."""
    return term.replace("%", "%25").replace(".", "%2E")


def term_of_feature(feature: str) -> str:
    """The term behind a feature name (the inverse of feature_name), read left to right in one pass."""
    return _ESCAPED.sub(lambda match: "%" if match.group() == "%25" else ".", feature)


# --- index body and template ---------------------------------------------------------------------------------------
def sparse_index_body(*, namespace: str, field: str) -> dict[str, Any]:
    """Settings and mappings of a sparse namespace's index (the template's `template`, and the body the store
    creates a missing index with, so an index is right whether or not the template was applied first)."""
    return {
        # Pinned at its default: the store's allowed-labels limit relies on it, so a broader template must not lower it.
        "settings": {"index": {"max_terms_count": MAX_ALLOWED_LABELS}},
        "mappings": {
            "dynamic": "strict",
            "_meta": {"namespace": namespace, "created_by": "medkg"},
            "properties": {
                "tenant": {"type": "keyword"},
                "label": {"type": "long"},
                "external_id": {"type": "keyword"},
                "metadata": {"type": "flat_object"},
                field: {"type": FIELD_TYPE},
            },
        },
    }


def rank_features_template(*, namespace: str, field: str, max_weight: float) -> dict[str, Any]:
    """The composable index template (`PUT _index_template/<index name>`) of a sparse namespace's index."""
    return {
        "index_patterns": [index_name(namespace)],
        "template": sparse_index_body(namespace=namespace, field=field),
        "priority": TEMPLATE_PRIORITY,
        "version": TEMPLATE_VERSION,
        "_meta": {
            "namespace": namespace,
            "rank_features_field": field,
            "max_weight": max_weight,
            "managed_by": "medkg manage.py apply_rank_features",
        },
    }


def _search_hits(answer: dict[str, Any]) -> list[SearchHit]:
    hits = (
        SearchHit(label=int(hit["fields"]["label"][0]), score=float(hit["_score"])) for hit in answer["hits"]["hits"]
    )
    return [hit for hit in hits if hit.score > 0]


# --- the store -----------------------------------------------------------------------------------------------------
class OpenSearchSparseStore(TenantIndexStore, SparseStore):
    """Term weights of one sparse namespace as rank features in one OpenSearch index; tenants filtered inside."""

    filters_natively = True

    def __init__(self, config: SparseStoreConfig) -> None:
        super().__init__(config)
        options = pyserini_config().opensearch
        self.field = options.rank_features_field
        self.max_weight = float(options.max_weight)
        self._index = TenantIndex(
            namespace=config.namespace,
            field=self.field,
            field_type=FIELD_TYPE,
            index_body=lambda: sparse_index_body(namespace=config.namespace, field=self.field),
        )

    def features(self, terms: dict[str, float]) -> dict[str, float]:
        """Terms as rank features: too small or non-positive weights dropped, the rest checked, clipped to
        max_weight and named by feature_name."""
        kept = {term: weight for term, weight in terms.items() if not weight < MIN_WEIGHT}  # NaN stays: refused next
        self.check_terms(kept)
        return {feature_name(term): min(float(weight), self.max_weight) for term, weight in kept.items()}

    # --- SparseStore ----------------------------------------------------------------------------------------------
    def upsert(self, *, tenant: str, items: Sequence[SparseItem]) -> int:
        self._index.check_tenant(tenant)
        if not items:
            return 0
        # Every item is checked before anything is sent: one wrong row must not leave half a batch written.
        features = [self.features(item.terms) for item in items]
        return self._index.upsert(tenant=tenant, items=items, values=features)

    def search_body(
        self,
        *,
        tenant: str,
        features: dict[str, float],
        k: int,
        allowed_labels: Sequence[int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A bool query: the tenant and every restriction in its `filter` (no score, applied before scoring), one
        linear `rank_feature` per query term in its `should`, boosted by the query weight, so the score is the
        dot product. Total hits are not counted, which lets Lucene skip documents that cannot enter the top k."""
        heaviest = sorted(features.items(), key=lambda entry: (-entry[1], entry[0]))[:MAX_QUERY_TERMS]
        return {
            "size": k,
            "_source": False,
            "docvalue_fields": ["label"],
            "track_total_hits": False,
            "query": {
                "bool": {
                    "filter": filter_clauses(tenant=tenant, allowed_labels=allowed_labels, filters=filters),
                    "should": [
                        {"rank_feature": {"field": f"{self.field}.{feature}", "boost": weight, "linear": {}}}
                        for feature, weight in heaviest
                    ],
                    "minimum_should_match": 1,
                }
            },
        }

    def search(
        self,
        *,
        tenant: str,
        query_terms: dict[str, float],
        query_text: str,
        k: int,
        allowed_labels: Sequence[int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        features = self.features(query_terms)
        self._index.check_tenant(tenant)
        k = self._index.check_search(k=k, allowed_labels=allowed_labels)
        body = self.search_body(tenant=tenant, features=features, k=k, allowed_labels=allowed_labels, filters=filters)
        return self._index.search(
            body=body, allowed_labels=allowed_labels, filters=filters, hits=_search_hits, matches_nothing=not features
        )
