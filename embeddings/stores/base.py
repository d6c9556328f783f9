"""The vector-store interface and the value types it speaks.

A store holds the vectors of one namespace, partitioned by tenant. Labels are `Document` primary keys:
the database says what a label means, the store only finds labels near a query vector.
Stores raise only the project's errors (DimensionMismatch, BackendUnavailable, BackendError).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from core.errors import DimensionMismatch


@dataclass(frozen=True)
class StoreConfig:
    """What a store needs from its namespace; frozen and hashable so stores can be cached per configuration."""

    namespace: str
    dim: int
    backend: str  # "faiss" or "opensearch"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 64
    use_gpu: bool = False
    storage: str = "float32"  # how the embedded store keeps vectors: float32, float16 or sq8 (re-scored)
    filterable: tuple[str, ...] = ()  # metadata keys the store keeps a column of, to filter inside the search


@dataclass(frozen=True)
class StoredVector:
    label: int  # Document.id
    vector: np.ndarray  # (dim,) float32
    external_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchHit:
    label: int
    score: float


@dataclass(frozen=True)
class StoreStats:
    tenant: str
    vectors: int  # live vectors
    tombstones: int  # dead entries still in the files (until their segment is merged)
    bytes_on_disk: int


Item = TypeVar("Item")  # what a store holds per label: a StoredVector or a SparseItem


class IndexStore(ABC, Generic[Item]):
    """What every store of one namespace does, dense or sparse: one partition per tenant, labels are Document ids.
    Shared by threads: implementations are thread-safe."""

    filters_natively = False  # True: search() applies metadata `filters` itself (an indexed metadata field)

    @abstractmethod
    def upsert(self, *, tenant: str, items: Sequence[Item]) -> int:
        """Add or replace entries by label; returns how many were written. Durable when it returns."""

    def bulk_load(
        self,
        *,
        tenant: str,
        chunks: Iterable[Sequence[Item]],
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Upsert many chunks (bootstrap, rebuild). Stores that can make one durable write at the end override it."""
        written = 0
        for chunk in chunks:
            count = self.upsert(tenant=tenant, items=chunk)
            written += count
            if on_progress:
                on_progress(count)
        return written

    @abstractmethod
    def delete(self, *, tenant: str, labels: Sequence[int]) -> int:
        """Remove entries by label; unknown labels are ignored. Returns how many were removed."""

    @abstractmethod
    def count(self, *, tenant: str) -> int:
        """Live entries of `tenant`."""

    @abstractmethod
    def labels(self, *, tenant: str) -> set[int]:
        """Live labels of `tenant` (reconciliation and tests)."""

    @abstractmethod
    def drop(self, *, tenant: str | None = None) -> None:
        """Remove the index of `tenant`, or of every tenant of the namespace."""

    def stats(self) -> list[StoreStats]:
        """Per-tenant sizes, for gauges and the admin."""
        return []

    def tenants(self) -> list[str]:
        """Tenants with an index in this namespace."""
        return [stats.tenant for stats in self.stats()]

    def optimize(self, *, tenant: str) -> None:
        """Bring the tenant's index to its best read shape after bulk work (Lucene: merge segments). Default: none."""
        return None

    def purge(self, *, tenant: str) -> int | None:
        """Remove deleted and replaced entries of `tenant` from the index files now (the right to erasure: a
        tombstone is not erasure). Returns how many entries left the files, or None when this store cannot do it
        on demand (its own merges remove them)."""
        return None

    def readiness(self) -> tuple[bool, str]:
        return True, ""


class VectorStore(IndexStore[StoredVector]):
    """Dense vectors of one namespace."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config

    @abstractmethod
    def search(
        self,
        *,
        tenant: str,
        query: np.ndarray,
        k: int,
        allowed_labels: Sequence[int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        """The k nearest live labels of `tenant` by inner product, best first.

        `allowed_labels` restricts the search to those labels (metadata filters resolved by the database);
        stores that index metadata themselves take `filters` instead and apply them inside the query.
        """

    # Shared checks: every write and read goes through these.
    def check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.config.dim:
            got = vectors.shape[-1] if vectors.ndim else 0
            raise DimensionMismatch(
                f"Namespace {self.config.namespace} stores {self.config.dim}-dimensional vectors, got {got}.",
                details={"namespace": self.config.namespace, "expected": self.config.dim, "got": int(got)},
            )
        if not np.isfinite(vectors).all():
            raise DimensionMismatch(
                f"Vectors for {self.config.namespace} contain NaN or infinity.",
                details={"namespace": self.config.namespace},
            )
        return vectors

    def check_query(self, query: np.ndarray) -> np.ndarray:
        return self.check_vectors(np.asarray(query, dtype=np.float32).reshape(1, -1))


# --- sparse stores ---------------------------------------------------------------


@dataclass(frozen=True)
class SparseStoreConfig:
    """What a sparse store needs from its namespace; frozen and hashable like StoreConfig."""

    namespace: str
    backend: str  # "impact" (embedded), "opensearch" (rank_features) or "lucene" (BM25 via Pyserini)
    parameters_json: str = "{}"  # the namespace's parameters (bm25 k1/b, ...), as JSON text to stay hashable

    def parameter(self, name: str, default: Any = None) -> Any:
        return json.loads(self.parameters_json).get(name, default)


@dataclass(frozen=True)
class SparseItem:
    label: int  # Document.id
    terms: dict[str, float]  # term -> weight > 0; empty for stores that index the text (indexes_text)
    text: str = ""
    external_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class SparseStore(IndexStore[SparseItem]):
    """Term-weighted documents of one sparse namespace.

    Scores are the store's own: a dot product of term weights (impact, rank_features) or BM25 (lucene).
    """

    indexes_text = False  # True: the store analyses `text` itself (BM25); `terms` are ignored

    def __init__(self, config: SparseStoreConfig) -> None:
        self.config = config

    @abstractmethod
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
        """The k best live labels of `tenant` for the query, best first (score > 0 only).

        Impact stores score `query_terms`; text-indexing stores (indexes_text) analyse `query_text`.
        """

    def check_terms(self, terms: dict[str, float]) -> dict[str, float]:
        """Every weight finite and > 0, every term a non-empty string; raises DimensionMismatch otherwise."""
        for term, weight in terms.items():
            if not isinstance(term, str) or not term or not math.isfinite(weight) or weight <= 0:
                raise DimensionMismatch(
                    f"Sparse vector for {self.config.namespace} has an invalid entry {term!r}: {weight!r}.",
                    details={"namespace": self.config.namespace, "term": str(term)[:100]},
                )
        return terms
