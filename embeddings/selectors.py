"""Reads: search within one tenant, jobs of one tenant."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db.models import Q

from embeddings import metrics
from embeddings.models import Document, IngestionJob
from embeddings.services import embeddings_compute, namespace_check_usable
from embeddings.stores.base import SearchHit, VectorStore
from embeddings.stores.registry import store_for
from medkg.errors import AccessRefused, InvalidRequest
from namespaces.models import Namespace, Tenant

MAX_FILTER_CANDIDATES = 100_000


@dataclass(frozen=True)
class DocumentHit:
    id: str
    score: float
    metadata: dict[str, Any]


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


def metadata_filter_q(filters: dict[str, Any]) -> Q:
    """Equality on top-level metadata keys; a list value means any of its values."""
    condition = Q()
    for key, value in filters.items():
        if not key or "__" in key:
            raise InvalidRequest(f"Filter key {key!r} is not a metadata key.", details={"filter": key})
        if isinstance(value, list):
            condition &= Q(**{f"metadata__{key}__in": value})
        else:
            condition &= Q(**{f"metadata__{key}": value})
    return condition


def documents_search(
    *, namespace: Namespace, tenant: Tenant, query: str, k: int, filters: dict[str, Any] | None = None
) -> list[DocumentHit]:
    """The k documents of `tenant` nearest to `query`, best first. Never looks at another tenant's documents."""
    namespace_check_usable(namespace=namespace)
    started = time.perf_counter()
    store = store_for(namespace)
    query_vector = embeddings_compute(namespace=namespace, texts=[query], normalize=True, truncate=True).vectors[0]
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
        tenant=tenant.slug,
        query=query_vector,
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


def store_search_timed(store: VectorStore, **arguments: Any) -> list[SearchHit]:
    started = time.perf_counter()
    try:
        return store.search(**arguments)
    finally:
        metrics.VECTOR_STORE_SEARCH_LATENCY.labels(
            namespace=store.config.namespace, store=store.config.backend
        ).observe(time.perf_counter() - started)
