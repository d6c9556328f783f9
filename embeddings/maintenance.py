"""Index maintenance: bootstrap a store from the database, rebuild it (the runbook's FAISS procedures)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, Q, QuerySet

from core.errors import BackendUnavailable
from core.logging import log_event
from embeddings import metrics
from embeddings.ingestion import ingestion_is_paused, ingestion_pause, ingestion_resume, vector_from_bytes
from embeddings.models import Document, IngestionJob, JobStatus
from embeddings.stores.base import SparseItem, SparseStore, StoredVector
from embeddings.stores.registry import index_for
from namespaces.models import Namespace, NamespaceKind, Tenant

logger = logging.getLogger("medkg.embeddings.maintenance")

BOOTSTRAP_CHUNK = 2048
Progress = Callable[[str, int, int], None]  # (tenant, done, total)


@dataclass
class BootstrapReport:
    namespace: str
    tenants: dict[str, int] = field(default_factory=dict)  # tenant -> vectors written
    removed: int = 0  # labels in the store that the database no longer has
    pending: int = 0  # documents without a vector yet: their ingestion jobs will index them
    seconds: float = 0.0


def _encoded(namespace: Namespace) -> Q:
    """Rows that carry what the store needs: a vector (dense) or term weights (sparse; {} for text-indexing stores)."""
    return Q(terms__isnull=False) if namespace.kind == NamespaceKind.SPARSE else Q(vector__isnull=False)


def _with_vectors(namespace: Namespace, tenant: Tenant) -> QuerySet[Document]:
    return Document.objects.filter(
        _encoded(namespace), namespace=namespace, tenant=tenant, deleted_at__isnull=True
    ).order_by("pk")


def _chunks(rows: QuerySet[Document], size: int, skip: set[int]) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    fields = ("pk", "version", "vector", "terms", "text", "external_id", "metadata")
    for row in rows.values_list(*fields).iterator(chunk_size=size):
        if row[0] in skip:
            continue
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def index_bootstrap(*, namespace: Namespace, progress: Progress | None = None) -> BootstrapReport:
    """Create or load the namespace's indexes and make them hold exactly the database's live vectors.

    Missing labels are added, labels the database no longer has are removed, and rows whose vector reached the
    store are marked indexed. Documents still without a vector are left to their ingestion jobs.
    """
    started = time.perf_counter()
    store = index_for(namespace)
    report = BootstrapReport(namespace=namespace.name)
    tenant_ids = Document.objects.filter(namespace=namespace).values_list("tenant", flat=True).distinct()
    for tenant in Tenant.objects.filter(pk__in=tenant_ids).order_by("slug"):
        rows = _with_vectors(namespace, tenant)
        wanted = set(rows.values_list("pk", flat=True))
        present = store.labels(tenant=tenant.slug)
        stale = present - wanted
        report.removed += store.delete(tenant=tenant.slug, labels=sorted(stale)) if stale else 0
        total, done = len(wanted - present), 0

        def on_progress(count: int, tenant_slug: str = tenant.slug, total: int = total) -> None:
            nonlocal done
            done += count
            if progress:
                progress(tenant_slug, done, total)

        chunks = list(_chunks(rows, BOOTSTRAP_CHUNK, skip=present))
        if isinstance(store, SparseStore):
            written = store.bulk_load(
                tenant=tenant.slug, chunks=(_sparse_items(c) for c in chunks), on_progress=on_progress
            )
        else:
            written = store.bulk_load(tenant=tenant.slug, chunks=(_vectors(c) for c in chunks), on_progress=on_progress)
        metrics.VECTOR_STORE_UPSERTED.labels(namespace=namespace.name, store=store.config.backend).inc(written)
        for chunk in chunks:
            for pk, version, *_ in chunk:
                Document.objects.filter(pk=pk, version=version).update(indexed_version=version)
        report.tenants[tenant.slug] = written
        if written or stale:
            store.optimize(tenant=tenant.slug)
        if progress and not total:
            progress(tenant.slug, 0, 0)
    report.pending = (
        Document.objects.filter(namespace=namespace, deleted_at__isnull=True)
        .exclude(_encoded(namespace))
        .exclude(indexed_version=F("version"))
        .count()
    )
    report.seconds = time.perf_counter() - started
    log_event(
        logger,
        "index_bootstrapped",
        namespace=namespace.name,
        store=store.config.backend,
        written=sum(report.tenants.values()),
        removed=report.removed,
        pending=report.pending,
        seconds=round(report.seconds, 3),
    )
    return report


def _vectors(chunk: list[tuple[Any, ...]]) -> list[StoredVector]:
    return [
        StoredVector(label=pk, vector=vector_from_bytes(vector), external_id=external_id, metadata=metadata)
        for pk, _, vector, _, _, external_id, metadata in chunk
    ]


def _sparse_items(chunk: list[tuple[Any, ...]]) -> list[SparseItem]:
    return [
        SparseItem(label=pk, terms=terms, text=text, external_id=external_id, metadata=metadata)
        for pk, _, _, terms, text, external_id, metadata in chunk
    ]


@dataclass
class RebuildReport:
    bootstrap: BootstrapReport
    steps: dict[str, float]  # step -> seconds


def index_rebuild(
    *, namespace: Namespace, progress: Progress | None = None, wait_seconds: float = 300.0, changed_by: str = ""
) -> RebuildReport:
    """Pause ingestion, drop the index files, bootstrap from the database, resume (unless it was paused before)."""
    steps: dict[str, float] = {}
    clock = time.perf_counter()
    was_paused = ingestion_is_paused(namespace=namespace)
    ingestion_pause(namespace=namespace, reason="rebuild_index", changed_by=changed_by)
    try:
        _wait_for_running_jobs(namespace, wait_seconds)
        steps["pause"] = time.perf_counter() - clock
        clock = time.perf_counter()
        index_for(namespace).drop()
        steps["drop"] = time.perf_counter() - clock
        clock = time.perf_counter()
        report = index_bootstrap(namespace=namespace, progress=progress)
        steps["bootstrap"] = time.perf_counter() - clock
    finally:
        clock = time.perf_counter()
        if not was_paused:
            ingestion_resume(namespace=namespace, changed_by=changed_by)
        steps["resume"] = time.perf_counter() - clock
    log_event(logger, "index_rebuilt", namespace=namespace.name, steps={k: round(v, 3) for k, v in steps.items()})
    return RebuildReport(bootstrap=report, steps=steps)


def _wait_for_running_jobs(namespace: Namespace, wait_seconds: float) -> None:
    """Running jobs stop at their next step once paused; a rebuild must not race their writes."""
    deadline = time.monotonic() + wait_seconds
    while IngestionJob.objects.filter(namespace=namespace, status=JobStatus.RUNNING).exists():
        if time.monotonic() > deadline:
            raise BackendUnavailable(
                f"Ingestion jobs of {namespace.name} are still running after {wait_seconds:.0f} s; "
                "the rebuild stopped before dropping anything. Retry, or check the workers.",
                details={"namespace": namespace.name},
            )
        time.sleep(0.5)
