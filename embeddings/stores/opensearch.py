"""OpenSearch k-NN store: one index per namespace, every tenant's vectors in it, searched with the tenant filter
applied inside the k-NN query (efficient filtering), never after it.

Documented OpenSearch API only (2.16 or later: efficient filtering with the Faiss engine, `method_parameters`):
- the `knn_vector` field and its HNSW `method`:
  https://docs.opensearch.org/latest/mappings/supported-field-types/knn-methods-engines/
- efficient filtering, a `filter` inside the `knn` query:
  https://docs.opensearch.org/latest/vector-search/filter-search-knn/efficient-knn-filtering/
- scores of the `innerproduct` space: https://docs.opensearch.org/latest/mappings/supported-field-types/knn-spaces/

Design choices, each for a reason:
- Engine `faiss`: the same HNSW library as the embedded store, so M / efConstruction / efSearch mean the same on both;
  it supports efficient filtering (exact search when the filtered set is small, so a tenant with few documents still
  gets all of them for a large k) and honours ef_search (Lucene ignores it and searches with k).
- Tenants, ids, metadata (`flat_object`), refresh and failures: embeddings.stores.opensearch_index.
- The mapping is `dynamic: strict` and records the namespace in `_meta`; an existing index is checked once per store
  (namespace and dimension) so two namespaces can never share an index and a dimension change is refused, not mixed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import BackendError, DimensionMismatch
from embeddings.stores.base import SearchHit, StoreConfig, StoredVector, VectorStore
from embeddings.stores.opensearch_index import (
    STORE,
    TenantIndex,
    TenantIndexStore,
    document_id,
    filter_clauses,
    index_name,
    metadata_clause,
    opensearch_client,
    translate_error,
)

__all__ = [
    "OpenSearchStore",
    "document_id",
    "index_name",
    "inner_product_from_score",
    "metadata_clause",
    "opensearch_client",
    "translate_error",
]

VECTOR_FIELD = "vector"


def inner_product_from_score(score: float) -> float:
    """The raw inner product behind an OpenSearch k-NN `_score` of the `innerproduct` space.

    The spaces table of the k-NN docs (https://docs.opensearch.org/latest/mappings/supported-field-types/knn-spaces/)
    gives, for Faiss, d(x, y) = -x·y and "If d >= 0, score = 1 / (1 + d); if d < 0, score = -d + 1" (Lucene's
    formula, with d = x·y, is the same function of x·y). Inverting it:
        score >= 1  ->  x·y = score - 1        (x·y >= 0)
        score <  1  ->  x·y = 1 - 1 / score    (x·y <  0)
    Both branches give 0 at score 1, so the inverse is continuous and keeps the order of the scores.
    """
    if not score > 0 or not math.isfinite(score):
        raise BackendError(
            f"OpenSearch returned the k-NN score {score!r}; innerproduct scores are positive.",
            details={"store": STORE, "score": repr(score)},
        )
    return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score


def _search_hits(answer: dict[str, Any]) -> list[SearchHit]:
    return [
        SearchHit(label=int(hit["fields"]["label"][0]), score=inner_product_from_score(float(hit["_score"])))
        for hit in answer["hits"]["hits"]
    ]


# --- the store -----------------------------------------------------------------------------------------------------
class OpenSearchStore(TenantIndexStore, VectorStore):
    """Vectors of one namespace in one OpenSearch index; tenants are a keyword field filtered inside every query."""

    filters_natively = True

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self._index = TenantIndex(
            namespace=config.namespace,
            field=VECTOR_FIELD,
            field_type="knn_vector",
            index_body=self.index_body,
            check_field=self._check_vector_field,
        )

    # --- bodies ---------------------------------------------------------------------------------------------------
    def index_body(self) -> dict[str, Any]:
        """Settings and mappings the index is created with."""
        return {
            "settings": {"index": {"knn": True, "knn.algo_param.ef_search": self.config.ef_search}},
            "mappings": {
                "dynamic": "strict",
                "_meta": {"namespace": self.config.namespace, "dim": self.config.dim, "created_by": "medkg"},
                "properties": {
                    "tenant": {"type": "keyword"},
                    "label": {"type": "long"},
                    "external_id": {"type": "keyword"},
                    "metadata": {"type": "flat_object"},
                    VECTOR_FIELD: {
                        "type": "knn_vector",
                        "dimension": self.config.dim,
                        "method": {
                            "name": "hnsw",
                            "engine": "faiss",
                            "space_type": "innerproduct",
                            "parameters": {"m": self.config.hnsw_m, "ef_construction": self.config.ef_construction},
                        },
                    },
                },
            },
        }

    def _check_vector_field(self, index: str, vector: dict[str, Any]) -> None:
        """An existing index of this namespace: same dimension, innerproduct space."""
        dimension = int(vector["dimension"])
        space = vector.get("space_type") or (vector.get("method") or {}).get("space_type")
        if dimension != self.config.dim:
            raise DimensionMismatch(
                f"Index {index} stores {dimension}-dimensional vectors; namespace {self.config.namespace} has "
                f"{self.config.dim}. Rebuild the index.",
                details={"namespace": self.config.namespace, "expected": self.config.dim, "got": dimension},
            )
        if space not in (None, "innerproduct"):
            raise BackendError(
                f"Index {index} uses the {space} space; the store needs innerproduct. Rebuild the index.",
                details={"namespace": self.config.namespace, "store": STORE, "index": index},
            )

    # --- VectorStore ----------------------------------------------------------------------------------------------
    def upsert(self, *, tenant: str, items: Sequence[StoredVector]) -> int:
        self._index.check_tenant(tenant)
        if not items:
            return 0
        # Every vector is checked before anything is sent: one wrong row must not leave half a batch written.
        vectors = [self.check_query(item.vector)[0].tolist() for item in items]
        return self._index.upsert(tenant=tenant, items=items, values=vectors)

    def search_body(
        self,
        *,
        tenant: str,
        vector: np.ndarray,
        k: int,
        allowed_labels: Sequence[int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The k-NN search: every restriction sits in the `filter` of the knn query itself (efficient filtering),
        so OpenSearch returns the k nearest of the tenant's allowed documents, never fewer because of others."""
        clauses = filter_clauses(tenant=tenant, allowed_labels=allowed_labels, filters=filters)
        return {
            "size": k,
            "_source": False,
            "docvalue_fields": ["label"],
            "query": {
                "knn": {
                    VECTOR_FIELD: {
                        "vector": vector.tolist(),
                        "k": k,
                        "method_parameters": {"ef_search": self.config.ef_search},
                        "filter": {"bool": {"filter": clauses}},
                    }
                }
            },
        }

    def search(
        self,
        *,
        tenant: str,
        query: np.ndarray,
        k: int,
        allowed_labels: Sequence[int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        vector = self.check_query(query)[0]
        self._index.check_tenant(tenant)
        k = self._index.check_search(k=k, allowed_labels=allowed_labels)
        body = self.search_body(tenant=tenant, vector=vector, k=k, allowed_labels=allowed_labels, filters=filters)
        return self._index.search(body=body, allowed_labels=allowed_labels, filters=filters, hits=_search_hits)
