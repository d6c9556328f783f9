"""Ingestion services: accept documents, run jobs that embed and index them, delete, pause and resume.

Order of a step, so that a crash anywhere loses nothing and indexes nothing twice:
  1. embed the documents that have no vector yet, store the vectors on their rows (committed);
  2. write the vectors to the store (durable when `upsert` returns; a label already there is replaced);
  3. mark the rows indexed (`indexed_version = version`, only if the text did not change meanwhile).
A job killed between 2 and 3 runs step 2 again for those rows: the store replaces, never duplicates.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any
from uuid import UUID

import numpy as np
import orjson
from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from core.errors import BackendUnavailable, MedkgError
from core.logging import log_event
from core.work import WorkClass, work_for
from embeddings import metrics
from embeddings.models import (
    MIRROR_PURPOSES,
    UNFINISHED_JOB_STATUSES,
    Document,
    IngestionJob,
    IngestionSwitch,
    JobKind,
    JobPurpose,
    JobStatus,
)
from embeddings.providers.registry import sparse_provider_for
from embeddings.services import (
    INDEXED_KINDS,
    embeddings_compute,
    namespace_check_usable,
    sparse_compute,
    texts_token_counts,
)
from embeddings.stores.base import SparseItem, SparseStore, StoredVector
from embeddings.stores.registry import index_for
from namespaces.models import Namespace, NamespaceKind, Tenant
from namespaces.quotas import quota_charge_tokens, tenant_usage_change, tenant_usage_lock
from namespaces.selectors import namespace_standbys

logger = logging.getLogger("medkg.embeddings.ingestion")

_local_runner_instance: _LocalRunner | None = None
_local_runner_lock = threading.Lock()


@dataclass(frozen=True)
class IncomingDocument:
    id: str
    text: str
    metadata: dict[str, Any]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def document_stored_bytes(text: str, metadata: dict[str, Any]) -> int:
    """What a document counts against its tenant's limit of stored bytes: its UTF-8 text and compact metadata JSON."""
    return len(text.encode("utf-8")) + len(orjson.dumps(metadata))


def namespace_provenance(namespace: Namespace) -> str:
    """What a stored vector (or term weights) of `namespace` must have been produced by to be indexed."""
    return f"{namespace.name}|{namespace.model_id}@{namespace.model_version}"[:400]


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype="<f4")


# --- the pause switch ---


def ingestion_is_paused(*, namespace: Namespace | None = None) -> bool:
    scope = Q(namespace__isnull=True) if namespace is None else Q(namespace__isnull=True) | Q(namespace=namespace)
    return IngestionSwitch.objects.filter(scope, paused=True).exists()


def ingestion_pause(*, namespace: Namespace | None = None, reason: str = "", changed_by: str = "") -> bool:
    """Persist the pause. Running jobs stop after their current step; new documents are accepted and wait.

    False when the switch was paused already: its reason and author are kept (a rollback does not take over an
    operator's pause, and so does not lift it at its undo).
    """
    switch, created = IngestionSwitch.objects.get_or_create(
        namespace=namespace, defaults={"paused": True, "reason": reason[:500], "changed_by": changed_by[:200]}
    )
    if not created and switch.paused:
        return False
    if not created:
        switch.paused, switch.reason, switch.changed_by = True, reason[:500], changed_by[:200]
        switch.save(update_fields=["paused", "reason", "changed_by", "updated_at"])
    log_event(logger, "ingestion_paused", namespace=namespace.name if namespace else "*", reason=reason)
    return True


def ingestion_resume(
    *, namespace: Namespace | None = None, changed_by: str = "", reason: str = ""
) -> list[IngestionJob]:
    """Lift the pause and queue every job that waited. Returns the jobs queued again."""
    IngestionSwitch.objects.filter(namespace=namespace).update(
        paused=False, reason=reason[:500], changed_by=changed_by[:200], updated_at=timezone.now()
    )
    log_event(logger, "ingestion_resumed", namespace=namespace.name if namespace else "*")
    return ingestion_requeue(namespace=namespace, statuses=(JobStatus.QUEUED, JobStatus.PAUSED))


def ingestion_requeue(
    *, namespace: Namespace | None = None, statuses: Sequence[str] = UNFINISHED_JOB_STATUSES, worker: str = ""
) -> list[IngestionJob]:
    """Queue unfinished jobs again (after a pause, a lost broker message or a killed worker)."""
    jobs = IngestionJob.objects.filter(status__in=list(statuses)).order_by("created_at")
    if namespace is not None:
        jobs = jobs.filter(namespace=namespace)
    if worker:
        jobs = jobs.filter(worker=worker)
    requeued = []
    for job in jobs:
        if ingestion_is_paused(namespace=job.namespace):
            continue
        # The lease of a step its worker died in is lifted: the job is free for the next fair step.
        IngestionJob.objects.filter(pk=job.pk, status__in=list(statuses)).update(
            status=JobStatus.QUEUED, stepping_until=None
        )
        transaction.on_commit(partial(ingestion_dispatch, job_id=job.pk))
        requeued.append(job)
    return requeued


def ingestion_status() -> dict[str, Any]:
    switches = IngestionSwitch.objects.filter(paused=True).select_related("namespace")
    jobs = {status: IngestionJob.objects.filter(status=status).count() for status in UNFINISHED_JOB_STATUSES}
    pending = Document.objects.filter(deleted_at__isnull=True).exclude(indexed_version=F("version")).count()
    return {
        "paused": [switch.namespace.name if switch.namespace else "*" for switch in switches],
        "jobs": jobs,
        "pending_documents": pending,
        "pending_deletes": Document.objects.filter(deleted_at__isnull=False).count(),
    }


# --- accepting work ---


def documents_accept(*, namespace: Namespace, tenant: Tenant, documents: Sequence[IncomingDocument]) -> IngestionJob:
    """Store the documents and queue a job that embeds and indexes them. Re-sending an id replaces it.

    Refused whole (DocumentLimitExceeded, StorageLimitExceeded: 413) when the tenant's stored documents or bytes
    would pass its limits; an update counts only its difference. The tokens of the texts the job will embed are
    charged to the tenant's token quota now, counted as /v1/embed counts them.
    """
    namespace_check_usable(namespace=namespace, kinds=INDEXED_KINDS)
    index_for(namespace)  # an unusable store configuration is refused now, not in the worker
    latest = {document.id: document for document in documents}  # the same id twice: the last one wins
    for attempt in range(2):
        try:
            with transaction.atomic():  # the primary's rows and every standby's, or none of them
                job, to_embed = _documents_accept_once(namespace, tenant, list(latest.values()))
                for standby in namespace_standbys(namespace):
                    _documents_accept_once(standby, tenant, list(latest.values()), purpose=JobPurpose.STANDBY)
        except IntegrityError:
            if attempt:  # a concurrent request inserted the same new id; the second pass sees its row
                raise
            continue
        quota_charge_tokens(tenant=tenant, tokens=sum(texts_token_counts(namespace=namespace, texts=to_embed)))
        return job
    raise AssertionError("unreachable")


def documents_mirror(
    *, namespace: Namespace, tenant: Tenant, documents: Sequence[IncomingDocument], purpose: str
) -> IngestionJob:
    """Write documents the platform already holds into `namespace` (a standby, a migration's next version): a job of
    its own, re-embedded from the text, not charged to the tenant (its usage counts them once, in the primary)."""
    assert purpose in MIRROR_PURPOSES
    latest = {document.id: document for document in documents}
    for attempt in range(2):
        try:
            with transaction.atomic():
                return _documents_accept_once(namespace, tenant, list(latest.values()), purpose=purpose)[0]
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def job_create(
    namespace: Namespace, tenant: Tenant, kind: str, total: int, purpose: str = JobPurpose.CLIENT
) -> IngestionJob:
    """A new job, paused when the namespace's ingestion is paused (resume queues it)."""
    paused = ingestion_is_paused(namespace=namespace)
    return IngestionJob.objects.create(
        namespace=namespace,
        tenant=tenant,
        kind=kind,
        total=total,
        purpose=purpose,
        status=JobStatus.PAUSED if paused else JobStatus.QUEUED,
    )


@transaction.atomic
def _documents_accept_once(
    namespace: Namespace, tenant: Tenant, documents: list[IncomingDocument], purpose: str = JobPurpose.CLIENT
) -> tuple[IngestionJob, list[str]]:
    """The job, and the texts it will embed (new or changed). A mirror (`purpose` standby or backfill) changes
    no usage: the tenant's usage counts each document once, where a client sent it."""
    mirror = purpose in MIRROR_PURPOSES
    # Before the document rows: one tenant's accepts and deletes queue here.
    usage = tenant_usage_lock(tenant=tenant) if not mirror else None
    job = job_create(namespace, tenant, JobKind.UPSERT, len(documents), purpose)
    paused = job.status == JobStatus.PAUSED
    existing = {
        row.external_id: row
        for row in Document.objects.select_for_update().filter(
            namespace=namespace, tenant=tenant, external_id__in=[document.id for document in documents]
        )
    }
    created, changed = [], []
    unchanged = added_documents = added_bytes = 0
    to_embed: list[str] = []
    for incoming in documents:
        digest = text_hash(incoming.text)
        row = existing.get(incoming.id)
        if row is None or row.deleted_at is not None:  # a new document, or one deleted and sent again
            added_documents += 1
            added_bytes += document_stored_bytes(incoming.text, incoming.metadata)
        if row is None:
            to_embed.append(incoming.text)
            created.append(
                Document(
                    namespace=namespace,
                    tenant=tenant,
                    external_id=incoming.id,
                    text=incoming.text,
                    text_hash=digest,
                    metadata=incoming.metadata,
                    job=job,
                )
            )
            continue
        same_text = row.text_hash == digest and row.deleted_at is None
        if same_text and row.metadata == incoming.metadata and row.is_indexed:
            unchanged += 1
            continue
        if row.deleted_at is None:  # an update counts only its difference
            added_bytes += document_stored_bytes(incoming.text, incoming.metadata)
            added_bytes -= document_stored_bytes(row.text, row.metadata)
        row.job = job
        if not same_text:
            to_embed.append(incoming.text)
            row.text, row.text_hash, row.vector, row.terms = incoming.text, digest, None, None
            row.deleted_at = None
        if not same_text or row.metadata != incoming.metadata:
            row.version += 1  # written to the store again (stores that index metadata need it); the vector is kept
        row.metadata = incoming.metadata
        changed.append(row)
    # Refused here, the transaction rolls back: nothing of the request (not even its job) is stored.
    if usage is not None:
        tenant_usage_change(usage=usage, tenant=tenant, documents=added_documents, stored_bytes=added_bytes)
    Document.objects.bulk_create(created, batch_size=500)
    Document.objects.bulk_update(
        changed, ["text", "text_hash", "vector", "terms", "version", "deleted_at", "metadata", "job"], batch_size=500
    )
    job.processed = unchanged
    if unchanged == len(documents) and not paused:
        job.status, job.finished_at = JobStatus.SUCCEEDED, timezone.now()
    job.save(update_fields=["processed", "status", "finished_at"])
    metrics.INGESTION_DOCUMENTS.labels(namespace=namespace.name, outcome="unchanged").inc(unchanged)
    log_event(
        logger,
        "documents_accepted",
        namespace=namespace.name,
        tenant=tenant.slug,
        job=str(job.pk),
        documents=len(documents),
        unchanged=unchanged,
        paused=paused,
        purpose=purpose,
    )
    if job.status == JobStatus.QUEUED:
        transaction.on_commit(lambda: ingestion_dispatch(job_id=job.pk))
    return job, to_embed


@transaction.atomic
def documents_delete(*, namespace: Namespace, tenant: Tenant, external_ids: Sequence[str]) -> IngestionJob:
    """Hide the documents at once (search skips them) and queue the job that removes them from the store; the same
    in every standby of the namespace."""
    job = _documents_delete_once(namespace, tenant, sorted(set(external_ids)))
    for standby in namespace_standbys(namespace):
        _documents_delete_once(standby, tenant, sorted(set(external_ids)), purpose=JobPurpose.STANDBY)
    return job


def _documents_delete_once(
    namespace: Namespace, tenant: Tenant, ids: list[str], purpose: str = JobPurpose.CLIENT
) -> IngestionJob:
    mirror = purpose in MIRROR_PURPOSES
    usage = tenant_usage_lock(tenant=tenant) if not mirror else None  # before the rows, as documents_accept takes it
    job = job_create(namespace, tenant, JobKind.DELETE, len(ids), purpose)
    rows = Document.objects.filter(namespace=namespace, tenant=tenant, external_id__in=ids)
    live = rows.filter(deleted_at__isnull=True).values_list("text", "metadata")
    freed = [document_stored_bytes(text, metadata) for text, metadata in live]
    found = rows.update(deleted_at=timezone.now(), job=job)
    if usage is not None:  # frees at once
        tenant_usage_change(usage=usage, tenant=tenant, documents=-len(freed), stored_bytes=-sum(freed))
    job.processed = len(ids) - found  # ids that were never there are done already
    job.save(update_fields=["processed"])
    log_event(logger, "documents_delete_accepted", namespace=namespace.name, tenant=tenant.slug, job=str(job.pk))
    if job.status == JobStatus.QUEUED:
        transaction.on_commit(lambda: ingestion_dispatch(job_id=job.pk))
    return job


# --- running jobs ---


def ingestion_dispatch(*, job_id: UUID) -> None:
    """Run the job on Celery workers when a broker is configured (one fair step per task); otherwise in this
    process."""
    if settings.CELERY_BROKER_URL:
        from embeddings.tasks import ingestion_step_task

        ingestion_step_task.delay()
    elif settings.MEDKG_INGESTION_LOCAL_MODE == "inline":
        ingestion_job_run(job_id=job_id)
    else:
        _local_runner().add(job_id)


class _LocalRunner:
    """The embedded mode's ingestion thread: one step at a time, tenants in turn (a job waits at most one step of
    each other tenant with work), a tenant's own jobs in the order they were accepted."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, deque[UUID]] = OrderedDict()  # tenant -> its jobs; order: the rotation
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="medkg-ingestion", daemon=True)
        self._thread.start()

    def add(self, job_id: UUID) -> None:
        tenant = IngestionJob.objects.filter(pk=job_id).values_list("tenant__slug", flat=True).first() or ""
        with self._ready:
            self._jobs.setdefault(tenant, deque()).append(job_id)
            self._ready.notify()

    def _next(self) -> tuple[str, UUID]:
        with self._ready:
            if not self._jobs:
                connection.close()  # an idle runner holds no database connection
            while not self._jobs:
                self._ready.wait()
            tenant, jobs = next(iter(self._jobs.items()))
            return tenant, jobs[0]

    def _done_with(self, tenant: str, job_id: UUID, finished: bool) -> None:
        with self._ready:
            jobs = self._jobs[tenant]
            if finished:
                jobs.remove(job_id)
            if jobs:
                self._jobs.move_to_end(tenant)  # the next tenant's turn
            else:
                del self._jobs[tenant]

    def _run(self) -> None:
        while True:
            tenant, job_id = self._next()
            close_old_connections()
            status: str = JobStatus.FAILED
            try:
                status = ingestion_job_step(job_id=job_id)
            except Exception:
                logger.exception("ingestion job %s failed", job_id)
            finally:
                close_old_connections()
            self._done_with(tenant, job_id, finished=status != JobStatus.RUNNING)


def _local_runner() -> _LocalRunner:
    global _local_runner_instance
    with _local_runner_lock:
        if _local_runner_instance is None:
            _local_runner_instance = _LocalRunner()
        return _local_runner_instance


# How long a worker may hold a step before another may take the job (a step takes seconds; a dead worker's lease
# is also lifted when it restarts, ingestion_requeue).
STEP_LEASE = timedelta(minutes=15)
_UNFINISHED_RUNNABLE = (JobStatus.QUEUED, JobStatus.RUNNING)


def ingestion_step_fair(*, worker: str = "") -> tuple[UUID | None, str]:
    """One step of the job whose tenant waited longest for a step, database-wide: the Celery workers' fair pick.

    Every accepted job puts one task on the broker; a task takes a step of whichever job is fairest now (not
    necessarily its own) and puts itself back while that job has steps left. So there are as many tasks as
    unfinished jobs, and a tenant's new job is stepped by the next task any worker takes, whatever another
    tenant's backlog: its wait is at most the steps in flight. (job, status after the step); (None, "idle").
    """
    job_id = _claim_fair()
    if job_id is None:
        return None, "idle"
    try:
        return job_id, ingestion_job_step(job_id=job_id, worker=worker)
    finally:
        IngestionJob.objects.filter(pk=job_id).update(stepping_until=None)


def _claim_fair() -> UUID | None:
    now = timezone.now()
    unfinished = IngestionJob.objects.filter(status__in=_UNFINISHED_RUNNABLE)
    # A tenant's turn: its latest step over all its unfinished jobs (one being stepped now counts as now).
    last_turn = dict(unfinished.values("tenant").annotate(last=Max("last_step_at")).values_list("tenant", "last"))
    free = Q(stepping_until__isnull=True) | Q(stepping_until__lt=now)
    candidates = unfinished.filter(free).order_by("created_at").values_list("pk", "tenant")[:1000]
    never = now - timedelta(days=36500)
    for pk, _ in sorted(candidates, key=lambda row: last_turn.get(row[1]) or never):  # stable: oldest job first
        claimed = IngestionJob.objects.filter(free, pk=pk, status__in=_UNFINISHED_RUNNABLE).update(
            stepping_until=now + STEP_LEASE, last_step_at=now
        )
        if claimed:
            return UUID(str(pk))
    return None


def ingestion_job_run(*, job_id: UUID | str, worker: str = "") -> str:
    """Run (or continue) a job until done, paused or failed. Safe to call twice for the same job."""
    while True:
        status = ingestion_job_step(job_id=job_id, worker=worker)
        if status != JobStatus.RUNNING:
            return status


def ingestion_job_step(*, job_id: UUID | str, worker: str = "") -> str:
    """One step of a job: its next MEDKG_INGESTION_STEP documents (a delete is one step). The status after it:
    running while documents remain. Safe to call twice for the same job, and after a crash at any point."""
    job = IngestionJob.objects.select_related("namespace", "tenant").filter(pk=job_id).first()
    if job is None or job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        return job.status if job else "missing"
    if ingestion_is_paused(namespace=job.namespace):
        _job_update(job, status=JobStatus.PAUSED)
        return JobStatus.PAUSED
    if job.status != JobStatus.RUNNING or job.worker != worker:
        _job_update(
            job,
            status=JobStatus.RUNNING,
            started_at=job.started_at or timezone.now(),
            attempts=job.attempts + 1,
            worker=worker,
        )
        log_event(logger, "ingestion_job_started", job=str(job.pk), namespace=job.namespace.name, kind=job.kind)
    try:
        with work_for(tenant=job.tenant.slug, work_class=WorkClass.BULK):
            finished = _delete_run(job) if job.kind == JobKind.DELETE else _upsert_step(job)
    except BackendUnavailable as error:
        _job_update(job, status=JobStatus.QUEUED, error=error.message)
        raise  # the task retries later; the documents stay accepted
    except MedkgError as error:
        _job_finish(job, JobStatus.FAILED, error=f"{error.code}: {error.message}")
        return JobStatus.FAILED
    if not finished:
        return JobStatus.RUNNING
    _job_finish(job, JobStatus.SUCCEEDED)
    return JobStatus.SUCCEEDED


def _job_update(job: IngestionJob, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(job, name, value)
    IngestionJob.objects.filter(pk=job.pk).update(**fields, updated_at=timezone.now())


def _job_finish(job: IngestionJob, status: str, error: str = "") -> None:
    _job_update(job, status=status, error=error, finished_at=timezone.now())
    metrics.INGESTION_JOBS.labels(namespace=job.namespace.name, kind=job.kind, status=status).inc()
    log_event(
        logger,
        "ingestion_job_finished",
        level=logging.WARNING if error else logging.INFO,
        job=str(job.pk),
        namespace=job.namespace.name,
        status=status,
        processed=job.processed,
        total=job.total,
        error=error,
    )


def _pending_of(job: IngestionJob) -> Any:
    return Document.objects.filter(job=job, deleted_at__isnull=True).exclude(indexed_version=F("version"))


def _upsert_step(job: IngestionJob) -> bool:
    """Index the job's next step of documents. True when none are left."""
    namespace, tenant = job.namespace, job.tenant
    batch = list(_pending_of(job).order_by("pk")[: settings.MEDKG_INGESTION_STEP])
    if not batch:
        return True
    store = index_for(namespace)
    _encode_missing(namespace, batch)
    if isinstance(store, SparseStore):
        written = store.upsert(tenant=tenant.slug, items=[_sparse_item(row) for row in batch])
    else:
        written = store.upsert(tenant=tenant.slug, items=[_stored(row) for row in batch])
    metrics.VECTOR_STORE_UPSERTED.labels(namespace=namespace.name, store=store.config.backend).inc(written)
    for row in batch:  # only rows whose text did not change while we worked count as indexed
        Document.objects.filter(pk=row.pk, version=row.version).update(indexed_version=row.version)
    metrics.INGESTION_DOCUMENTS.labels(namespace=namespace.name, outcome="indexed").inc(written)
    if job.purpose in MIRROR_PURPOSES:
        metrics.STANDBY_DOCUMENTS.labels(namespace=namespace.name, purpose=job.purpose, operation="indexed").inc(
            written
        )
    remaining = _pending_of(job).count()
    _job_update(job, processed=max(job.total - remaining, 0))
    return remaining == 0


def _sparse_item(row: Document) -> SparseItem:
    assert row.terms is not None  # _encode_missing filled it
    return SparseItem(label=row.pk, terms=row.terms, text=row.text, external_id=row.external_id, metadata=row.metadata)


def _stored(row: Document) -> StoredVector:
    assert row.vector is not None  # _encode_missing filled it
    return StoredVector(
        label=row.pk, vector=vector_from_bytes(row.vector), external_id=row.external_id, metadata=row.metadata
    )


def _encode_missing(namespace: Namespace, batch: list[Document]) -> None:
    if namespace.kind == NamespaceKind.SPARSE:
        _weigh_missing(namespace, batch)
        return
    provenance = namespace_provenance(namespace)
    # A vector of another model version (the namespace's model changed under it) is never indexed: embed again.
    missing = [row for row in batch if row.vector is None or row.provenance != provenance]
    if not missing:
        return
    embedded = embeddings_compute(
        namespace=namespace, texts=[row.text for row in missing], normalize=True, truncate=True
    )
    for row, vector in zip(missing, embedded.vectors, strict=True):
        row.vector, row.provenance = vector_to_bytes(vector), provenance
        # Conditional: a newer text sent meanwhile keeps its empty vector and gets embedded by its own job.
        Document.objects.filter(pk=row.pk, version=row.version).update(vector=row.vector, provenance=provenance)


def _weigh_missing(namespace: Namespace, batch: list[Document]) -> None:
    """Term weights for the rows that have none; {} when the store analyses the text itself (BM25)."""
    provenance = namespace_provenance(namespace)
    missing = [row for row in batch if row.terms is None or row.provenance != provenance]
    if not missing:
        return
    if sparse_provider_for(namespace).encodes_documents:
        encoded = sparse_compute(namespace=namespace, texts=[row.text for row in missing], query=False, truncate=True)
        weights = encoded.terms
    else:
        weights = [{} for _ in missing]
    for row, terms in zip(missing, weights, strict=True):
        row.terms, row.provenance = terms, provenance
        Document.objects.filter(pk=row.pk, version=row.version).update(terms=terms, provenance=provenance)


def _delete_run(job: IngestionJob) -> bool:
    namespace = job.namespace
    labels = list(Document.objects.filter(job=job, deleted_at__isnull=False).values_list("pk", flat=True))
    store = index_for(namespace)
    removed = store.delete(tenant=job.tenant.slug, labels=labels)
    metrics.VECTOR_STORE_DELETED.labels(namespace=namespace.name, store=store.config.backend).inc(removed)
    # Rows re-sent after the delete was accepted have deleted_at cleared and belong to a newer job: kept.
    Document.objects.filter(pk__in=labels, job=job, deleted_at__isnull=False).delete()
    metrics.INGESTION_DOCUMENTS.labels(namespace=namespace.name, outcome="deleted").inc(len(labels))
    if job.purpose in MIRROR_PURPOSES:
        metrics.STANDBY_DOCUMENTS.labels(namespace=namespace.name, purpose=job.purpose, operation="deleted").inc(
            len(labels)
        )
    _job_update(job, processed=job.total)
    return True
