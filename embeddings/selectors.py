"""Reads: search within one tenant, jobs of one tenant."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db.models import JSONField, Q, Value
from django.db.models.fields.json import KeyTransform

from core.errors import AccessRefused, InvalidRequest
from embeddings import metrics
from embeddings.fusion import RRF_K, FusionMethod, SourceHit, fuse
from embeddings.models import Document, IngestionJob
from embeddings.services import INDEXED_KINDS, embeddings_compute, namespace_check_usable, sparse_compute
from embeddings.stores.base import SearchHit, SparseStore, VectorStore
from embeddings.stores.registry import index_for
from namespaces.models import Namespace, Tenant

MAX_FILTER_CANDIDATES = 100_000


@dataclass(frozen=True)
class DocumentHit:
    id: str
    score: float
    metadata: dict[str, Any]
    rerank_score: float | None = None  # set by a rerank stage (embeddings.reranking.hits_rerank)


def job_get_for_tenant(*, job_id: str, tenant: Tenant) -> IngestionJob:
    """The tenant's own job; another tenant's job is as missing as an unknown one (audited as job_not_owned)."""
    try:
        key = UUID(job_id)
    except ValueError:
        key = None
    job = IngestionJob.objects.select_related("namespace", "tenant").filter(pk=key).first() if key else None
    if job is None:
        raise AccessRefused("job_unknown", detail=f"job {job_id[:64]}")
    if job.tenant_id != tenant.pk:
        raise AccessRefused("job_not_owned", namespace=job.namespace.name, detail=f"job {job_id}")
    return job


class ObjectKey(KeyTransform):
    """A top-level metadata key read as an object key, always.

    Django reads a key such as "0" or "-1" as an array index (and one past 64 bits as a numeric, which
    PostgreSQL refuses with a 500), so `metadata__-1` would neither match the stored key nor run.
    """

    def as_postgresql(self, compiler: Any, connection: Any) -> tuple[str, tuple[Any, ...]]:
        lhs, params = compiler.compile(self.lhs)
        return f"({lhs} -> %s)", (*params, self.key_name)

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, tuple[Any, ...]]:
        lhs, params = compiler.compile(self.lhs)
        path = "$." + json.dumps(self.key_name)
        datatypes = ",".join(repr(datatype) for datatype in connection.ops.jsonfield_datatype_values)
        sql = (
            f"(CASE WHEN JSON_TYPE({lhs}, %s) IN ({datatypes}) "
            f"THEN JSON_TYPE({lhs}, %s) ELSE JSON_EXTRACT({lhs}, %s) END)"
        )
        return sql, (*params, path, *params, path, *params, path)


def metadata_filter_q(filters: dict[str, Any]) -> Q:
    """Equality on top-level metadata keys; a list value means any of its values."""
    condition = Q()
    for key, value in filters.items():
        if not key or "__" in key:
            raise InvalidRequest(f"Filter key {key!r} is not a metadata key.", details={"filter": key})
        # "Any of" as ORed equalities: the same SQL on PostgreSQL and SQLite (Django's key `in` differs by
        # vendor), with each value typed as JSON, as the lookup is built before the query resolves the key.
        transform = ObjectKey(key, "metadata")
        exact = transform.get_lookup("exact")
        assert exact is not None  # KeyTransform registers it
        either = Q()
        for item in value if isinstance(value, list) else [value]:
            either |= Q(exact(transform, Value(item, output_field=JSONField())))
        condition &= either
    return condition


def documents_search(
    *, namespace: Namespace, tenant: Tenant, query: str, k: int, filters: dict[str, Any] | None = None
) -> list[DocumentHit]:
    """The k documents of `tenant` nearest to `query`, best first. Never looks at another tenant's documents.

    Dense namespaces score by inner product of unit vectors; sparse ones by the store's own score (term-weight dot
    product, or BM25).
    """
    namespace_check_usable(namespace=namespace, kinds=INDEXED_KINDS)
    started = time.perf_counter()
    store = index_for(namespace)
    query_arguments = _query_arguments(namespace, store, query)
    mine = Document.objects.filter(namespace=namespace, tenant=tenant)
    allowed: list[int] | None = None
    if filters and not store.filters_natively:  # a store that indexes metadata applies them in its own query
        allowed = list(
            mine.filter(metadata_filter_q(filters), deleted_at__isnull=True).values_list("pk", flat=True)[
                : MAX_FILTER_CANDIDATES + 1
            ]
        )
        if len(allowed) > MAX_FILTER_CANDIDATES:
            raise InvalidRequest(
                f"The filters match more than {MAX_FILTER_CANDIDATES} documents; narrow them.",
                details={"max_candidates": MAX_FILTER_CANDIDATES},
            )
        if not allowed:
            return []
    # Deleted documents stay in the store until their delete job ran: ask for enough to still return k.
    hidden = mine.filter(deleted_at__isnull=False).count()
    hits = store_search_timed(
        store,
        **query_arguments,
        tenant=tenant.slug,
        k=k + hidden,
        allowed_labels=allowed,
        filters=filters if store.filters_natively else None,
    )
    rows = {
        row.pk: row
        for row in mine.filter(pk__in=[hit.label for hit in hits], deleted_at__isnull=True).only(
            "pk", "external_id", "metadata"
        )
    }
    result = [
        DocumentHit(rows[hit.label].external_id, hit.score, rows[hit.label].metadata)
        for hit in hits
        if hit.label in rows
    ]
    metrics.SEARCH_REQUEST_LATENCY.labels(namespace=namespace.name, store=store.config.backend).observe(
        time.perf_counter() - started
    )
    return result[:k]


def documents_texts(*, tenant: Tenant, namespaces: Sequence[Namespace], ids: Sequence[str]) -> dict[str, str]:
    """The stored text of each live document id of `tenant`, from the first of `namespaces` that holds it."""
    preference = {namespace.pk: position for position, namespace in enumerate(namespaces)}
    rows = Document.objects.filter(
        tenant=tenant, namespace__in=list(namespaces), external_id__in=list(ids), deleted_at__isnull=True
    ).values_list("namespace_id", "external_id", "text")
    texts: dict[str, str] = {}
    for _, external_id, text in sorted(rows, key=lambda row: preference[row[0]]):
        texts.setdefault(external_id, text)
    return texts


def _query_arguments(namespace: Namespace, store: VectorStore | SparseStore, query: str) -> dict[str, Any]:
    """The query as the store takes it: a unit vector, term weights, or the text for stores that analyse it."""
    if not isinstance(store, SparseStore):
        return {
            "query": embeddings_compute(
                namespace=namespace, texts=[query], normalize=True, truncate=True, input_type="query"
            ).vectors[0]
        }
    if store.indexes_text:
        return {"query_terms": {}, "query_text": query}
    terms = sparse_compute(namespace=namespace, texts=[query], query=True, truncate=True).terms[0]
    return {"query_terms": terms, "query_text": query}


def store_search_timed(store: VectorStore | SparseStore, **arguments: Any) -> list[SearchHit]:
    started = time.perf_counter()
    try:
        return store.search(**arguments)
    finally:
        metrics.VECTOR_STORE_SEARCH_LATENCY.labels(
            namespace=store.config.namespace, store=store.config.backend
        ).observe(time.perf_counter() - started)


# --- hybrid search ---


@dataclass(frozen=True)
class HybridPart:
    namespace: Namespace
    weight: float = 1.0


@dataclass(frozen=True)
class HybridHit:
    id: str
    score: float
    metadata: dict[str, Any]
    sources: dict[str, SourceHit]
    rerank_score: float | None = None  # set by a rerank stage (embeddings.reranking.hits_rerank)


@dataclass(frozen=True)
class HybridPage:
    hits: list[HybridHit]
    offset: int
    has_more: bool
    rankings: dict[str, list[DocumentHit]]  # each namespace's own list, best first (evaluation reads it)


def hybrid_search(
    *,
    tenant: Tenant,
    query: str,
    parts: Sequence[HybridPart],
    method: FusionMethod = "rrf",
    k: int = 10,
    offset: int = 0,
    depth: int = 100,
    rrf_k: int = RRF_K,
    filters: dict[str, Any] | None = None,
) -> HybridPage:
    """One page of the fusion of several namespaces' searches in `tenant`; documents match by their id.

    Each namespace returns its best `depth` (at least offset + k) candidates, which are fused (RRF or min-max).
    """
    depth = max(depth, offset + k)
    rankings = {
        part.namespace.name: documents_search(
            namespace=part.namespace, tenant=tenant, query=query, k=depth, filters=filters
        )
        for part in parts
    }
    fused = fuse(
        {name: [(hit.id, hit.score) for hit in hits] for name, hits in rankings.items()},
        {part.namespace.name: part.weight for part in parts},
        method=method,
        rrf_k=rrf_k,
    )
    metadata: dict[str, dict[str, Any]] = {}
    for hits in rankings.values():
        for hit in hits:
            metadata.setdefault(hit.id, hit.metadata)
    page = [
        HybridHit(id=hit.id, score=hit.score, metadata=metadata[hit.id], sources=hit.sources)
        for hit in fused[offset : offset + k]
    ]
    return HybridPage(hits=page, offset=offset, has_more=len(fused) > offset + k, rankings=rankings)
