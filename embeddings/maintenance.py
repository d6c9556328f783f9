"""Index maintenance: bootstrap a store from the database, rebuild it (the runbook's FAISS procedures)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F, Q, QuerySet

from core.errors import BackendUnavailable
from core.logging import log_event
from embeddings import metrics
from embeddings.ingestion import (
    document_stored_bytes,
    ingestion_dispatch,
    ingestion_is_paused,
    ingestion_pause,
    ingestion_resume,
    job_create,
    namespace_provenance,
    vector_from_bytes,
)
from embeddings.models import Document, IngestionJob, JobKind, JobPurpose, JobStatus, QuerySample
from embeddings.services import INDEXED_KINDS
from embeddings.stores.base import SparseItem, SparseStore, StoredVector
from embeddings.stores.registry import index_for
from namespaces.models import Namespace, NamespaceKind, Tenant, TenantUsage
from namespaces.quotas import tenant_usage_lock

logger = logging.getLogger("medkg.embeddings.maintenance")

BOOTSTRAP_CHUNK = 2048
Progress = Callable[[str, int, int], None]  # (tenant, done, total)


@dataclass
class BootstrapReport:
    namespace: str
    tenants: dict[str, int] = field(default_factory=dict)  # tenant -> vectors written
    removed: int = 0  # labels in the store that the database no longer has
    pending: int = 0  # documents without a vector yet: their ingestion jobs will index them
    refused: int = 0  # rows whose vector another model version produced: not loaded, queued to be embedded again
    refused_provenance: list[str] = field(default_factory=list)  # a few of the provenances refused
    seconds: float = 0.0


def _encoded(namespace: Namespace) -> Q:
    """Rows that carry what the store needs: a vector (dense) or term weights (sparse; {} for text-indexing stores)."""
    return Q(terms__isnull=False) if namespace.kind == NamespaceKind.SPARSE else Q(vector__isnull=False)


def _with_vectors(namespace: Namespace, tenant: Tenant) -> QuerySet[Document]:
    return Document.objects.filter(
        _encoded(namespace),
        namespace=namespace,
        tenant=tenant,
        deleted_at__isnull=True,
        provenance=namespace_provenance(namespace),
    ).order_by("pk")


def _refuse_foreign_provenance(namespace: Namespace, tenant: Tenant, report: BootstrapReport) -> None:
    """Rows encoded by another namespace or model version never reach the index (one ranking, one model): they go
    to a job that embeds them again from their text."""
    foreign = Document.objects.filter(_encoded(namespace), namespace=namespace, tenant=tenant, deleted_at__isnull=True)
    foreign = foreign.exclude(provenance=namespace_provenance(namespace))
    found = sorted(set(foreign.values_list("provenance", flat=True)[:1000]))
    if not found:
        return
    with transaction.atomic():
        job = job_create(namespace, tenant, JobKind.UPSERT, 0, JobPurpose.BACKFILL)
        count = foreign.update(job=job, version=F("version") + 1)
        IngestionJob.objects.filter(pk=job.pk).update(total=count)
        if job.status == JobStatus.QUEUED:
            transaction.on_commit(lambda: ingestion_dispatch(job_id=job.pk))
    report.refused += count
    report.refused_provenance = sorted({*report.refused_provenance, *(p or "(none)" for p in found)})[:5]
    log_event(
        logger,
        "bootstrap_refused_provenance",
        logging.WARNING,
        namespace=namespace.name,
        tenant=tenant.slug,
        rows=count,
        provenance=found[:5],
        expected=namespace_provenance(namespace),
        job=str(job.pk),
    )


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
        _refuse_foreign_provenance(namespace, tenant, report)
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

        # Rows stream from the database chunk by chunk (bounded memory); only (pk, version) pairs are kept, to mark
        # the rows indexed once the store's write is durable.
        loaded: list[tuple[int, int]] = []
        streamed = _recording(_chunks(rows, BOOTSTRAP_CHUNK, skip=present), loaded)
        if isinstance(store, SparseStore):
            written = store.bulk_load(
                tenant=tenant.slug, chunks=(_sparse_items(c) for c in streamed), on_progress=on_progress
            )
        else:
            written = store.bulk_load(
                tenant=tenant.slug, chunks=(_vectors(c) for c in streamed), on_progress=on_progress
            )
        metrics.VECTOR_STORE_UPSERTED.labels(namespace=namespace.name, store=store.config.backend).inc(written)
        _mark_indexed(loaded)
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
        refused=report.refused,
        seconds=round(report.seconds, 3),
    )
    return report


def _recording(
    chunks: Iterator[list[tuple[Any, ...]]], loaded: list[tuple[int, int]]
) -> Iterator[list[tuple[Any, ...]]]:
    for chunk in chunks:
        loaded.extend((row[0], row[1]) for row in chunk)
        yield chunk


def _mark_indexed(loaded: list[tuple[int, int]], batch: int = 10_000) -> None:
    """indexed_version = version for the rows written, one UPDATE per batch and version (not one per row); a row
    whose version moved on meanwhile stays pending for its ingestion job."""
    by_version: dict[int, list[int]] = {}
    for pk, version in loaded:
        by_version.setdefault(version, []).append(pk)
    for version, pks in by_version.items():
        for start in range(0, len(pks), batch):
            Document.objects.filter(pk__in=pks[start : start + batch], version=version).update(indexed_version=version)


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
    _wait_until_stopped(
        IngestionJob.objects.filter(namespace=namespace),
        wait_seconds,
        f"Ingestion jobs of {namespace.name} are still running after {wait_seconds:.0f} s; "
        "the rebuild stopped before dropping anything. Retry, or check the workers.",
        {"namespace": namespace.name},
    )


def _wait_until_stopped(
    jobs: QuerySet[IngestionJob], wait_seconds: float, message: str, details: dict[str, str]
) -> None:
    deadline = time.monotonic() + wait_seconds
    while jobs.filter(status=JobStatus.RUNNING).exists():
        if time.monotonic() > deadline:
            raise BackendUnavailable(message, details=details)
        time.sleep(0.5)


@dataclass
class PurgeReport:
    namespace: str
    store: str
    removed: dict[str, int | None] = field(default_factory=dict)  # tenant -> entries removed (None: not on demand)
    where: dict[str, str] = field(default_factory=dict)  # tenant -> the file or index they left


def _location(store: Any, tenant: str) -> str:
    path_for = getattr(store, "path_for", None)
    return str(path_for(tenant)) if path_for else f"{store.config.backend} index of {tenant}"


def index_purge_deleted(*, namespace: Namespace, tenant: Tenant | None = None) -> PurgeReport:
    """Remove deleted and replaced documents' entries from the namespace's index files now, not at the next
    merge: after this, no file of the index holds their vectors or terms (their rows are already gone)."""
    store = index_for(namespace)
    report = PurgeReport(namespace=namespace.name, store=store.config.backend)
    for slug in [tenant.slug] if tenant is not None else store.tenants():
        report.removed[slug] = store.purge(tenant=slug)
        report.where[slug] = _location(store, slug)
    log_event(logger, "index_purged", namespace=namespace.name, removed=report.removed)
    return report


@dataclass
class MergeReport:
    namespace: str
    store: str
    segments: dict[str, tuple[int, int]] = field(default_factory=dict)  # tenant -> (before, after); -1: unknown
    merged: dict[str, int] = field(default_factory=dict)  # tenant -> segments merged away


def index_merge(*, namespace: Namespace, tenant: Tenant | None = None, full: bool = False) -> MergeReport:
    """Run the merges the store's policy wants now (what the background merges do after writes), or with `full`
    merge each partition into one segment without dead entries (the best read shape). Searches and writes go on
    meanwhile: a merge builds outside the write lock and swaps its result in with one commit."""
    store = index_for(namespace)
    report = MergeReport(namespace=namespace.name, store=store.config.backend)
    segments = getattr(store, "segments", None)
    for slug in [tenant.slug] if tenant is not None else store.tenants():
        before = len(segments(tenant=slug)) if segments else -1
        merged = 0
        if full or not hasattr(store, "merge"):
            store.optimize(tenant=slug)
        else:
            while count := store.merge(tenant=slug)[0]:
                merged += count
        after = len(segments(tenant=slug)) if segments else -1
        report.segments[slug] = (before, after)
        report.merged[slug] = merged if not full else max(0, before - after)
    log_event(logger, "index_merged", namespace=namespace.name, segments=report.segments)
    return report


@dataclass
class TenantEraseReport:
    tenant: str
    documents: dict[str, int] = field(default_factory=dict)  # namespace -> rows deleted
    indexes: dict[str, str] = field(default_factory=dict)  # namespace -> the index files removed
    jobs: int = 0
    tenant_deleted: bool = False


def tenant_erase(*, tenant: Tenant, wait_seconds: float = 60.0, keep_tenant: bool = False) -> TenantEraseReport:
    """Offboard a tenant: its documents (text, vectors, metadata), its index partitions in every namespace, its
    jobs and usage, then the tenant itself. Audit events stay: they are the record of who did what.

    Safe to run again after a crash at any point: the tenant is deactivated first (its tokens are refused, so
    nothing new is accepted), the indexes go before the rows that could rebuild them, and the rows go in one
    transaction; what a crash leaves behind, the next run removes."""
    report = TenantEraseReport(tenant=tenant.slug)
    tenant.is_active = False
    tenant.save(update_fields=["is_active"])  # a save, not update(): the access caches forget the tenant
    jobs = IngestionJob.objects.filter(tenant=tenant)
    jobs.filter(status__in=(JobStatus.QUEUED, JobStatus.PAUSED)).update(status=JobStatus.FAILED, error="tenant erased")
    _wait_until_stopped(  # a running step would write after the drop
        jobs,
        wait_seconds,
        f"Ingestion jobs of {tenant.slug} are still running after {wait_seconds:.0f} s; the tenant is "
        "deactivated and nothing was deleted yet. Retry, or check the workers.",
        {"tenant": tenant.slug},
    )
    with_rows = set(Document.objects.filter(tenant=tenant).values_list("namespace_id", flat=True))
    for namespace in Namespace.objects.filter(kind__in=INDEXED_KINDS).order_by("name"):
        store = index_for(namespace)
        if namespace.pk in with_rows or tenant.slug in store.tenants():
            store.drop(tenant=tenant.slug)
            report.indexes[namespace.name] = _location(store, tenant.slug)
    with transaction.atomic():
        for namespace_id, name in Namespace.objects.filter(pk__in=with_rows).values_list("pk", "name"):
            report.documents[name], _ = Document.objects.filter(tenant=tenant, namespace_id=namespace_id).delete()
        report.jobs, _ = jobs.delete()
        QuerySample.objects.filter(tenant=tenant).delete()  # with keep_tenant too: the query texts are its data
        TenantUsage.objects.filter(tenant=tenant).delete()
        if not keep_tenant:
            tenant.delete()
            report.tenant_deleted = True
    log_event(
        logger,
        "tenant_erased",
        tenant=tenant.slug,
        documents=report.documents,
        indexes=sorted(report.indexes),
        jobs=report.jobs,
    )
    return report


@dataclass
class UsageRecount:
    tenant: str
    before: tuple[int, int]  # (documents, stored bytes) on the usage row
    after: tuple[int, int]  # what the live rows add up to

    @property
    def drifted(self) -> bool:
        return self.before != self.after


def tenant_usage_recount(*, tenant: Tenant) -> UsageRecount:
    """Set the tenant's usage row to what its live documents add up to (after a restore, or rows changed by hand).

    Holds the usage row's lock while it counts, so the tenant's accepts and deletes wait instead of racing the
    sum; it reads only text and metadata, streamed."""
    with transaction.atomic():
        usage = tenant_usage_lock(tenant=tenant)
        before = (usage.documents, usage.stored_bytes)
        documents = stored_bytes = 0
        live = Document.objects.filter(tenant=tenant, deleted_at__isnull=True).values_list("text", "metadata")
        for text, metadata in live.iterator(chunk_size=BOOTSTRAP_CHUNK):
            documents += 1
            stored_bytes += document_stored_bytes(text, metadata)
        if (documents, stored_bytes) != before:
            TenantUsage.objects.filter(pk=usage.pk).update(documents=documents, stored_bytes=stored_bytes)
    report = UsageRecount(tenant=tenant.slug, before=before, after=(documents, stored_bytes))
    log_event(
        logger, "tenant_usage_recounted", tenant=tenant.slug, before=list(before), after=[documents, stored_bytes]
    )
    return report
