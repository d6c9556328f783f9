"""What is indexed, the ingestion jobs that index it, and retrieval-quality baselines.

The database is the source of truth: every vector in a store can be rebuilt from `Document` rows.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import F, Q

from namespaces.models import Namespace, Tenant


class Document(models.Model):
    """One document of one tenant in one namespace; its vector (dense) or term weights (sparse) are kept so an index
    can be rebuilt without the model.

    `version` moves on every change of text; the store holds the document once `indexed_version == version`.
    `deleted_at` hides a document at once; the row goes when the delete has reached the store.
    """

    id = models.BigAutoField(primary_key=True)  # also the label of the vector in the store
    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="documents")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="documents")
    external_id = models.CharField(max_length=256)
    text = models.TextField()
    text_hash = models.CharField(max_length=64, help_text="sha256 of the text")
    metadata = models.JSONField(default=dict, blank=True)
    vector = models.BinaryField(null=True, blank=True, help_text="float32 little-endian, namespace dim")
    terms = models.JSONField(
        null=True, blank=True, help_text="Sparse namespaces: {term: weight} (empty when the store indexes the text)"
    )
    provenance = models.CharField(
        max_length=400,
        blank=True,
        help_text="What produced the vector or term weights: <namespace>|<model_id>@<model_version> "
        "(embeddings.ingestion.namespace_provenance). Rows of another provenance are embedded again, never indexed.",
    )
    version = models.PositiveIntegerField(default=1)
    indexed_version = models.PositiveIntegerField(default=0)
    job = models.ForeignKey("IngestionJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="documents")
    deleted_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["namespace", "tenant", "external_id"], name="document_unique_per_tenant"),
        ]
        indexes = [
            models.Index(
                fields=["namespace", "tenant"],
                condition=Q(deleted_at__isnull=False),
                name="document_pending_delete",
            ),
            models.Index(fields=["job", "indexed_version"], name="document_job_progress"),
            # What a namespace still has to index (a standby's lag, a backfill's progress), counted without a scan.
            models.Index(
                fields=["namespace", "tenant"],
                condition=Q(indexed_version__lt=F("version"), deleted_at__isnull=True),
                name="document_unindexed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.namespace_id}/{self.tenant_id}/{self.external_id}"

    @property
    def is_indexed(self) -> bool:
        return self.indexed_version == self.version


class JobKind(models.TextChoices):
    UPSERT = "upsert"
    DELETE = "delete"


class JobPurpose(models.TextChoices):
    CLIENT = "client", "documents a client sent"
    STANDBY = "standby", "the mirror of a primary's documents into its standby"
    BACKFILL = "backfill", "a migration's re-embedding of stored documents"


MIRROR_PURPOSES = (JobPurpose.STANDBY, JobPurpose.BACKFILL)  # bulk work of the platform itself: never charged


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    PAUSED = "paused"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


UNFINISHED_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.PAUSED, JobStatus.RUNNING)


class IngestionJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="ingestion_jobs")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="ingestion_jobs")
    kind = models.CharField(max_length=10, choices=JobKind.choices, default=JobKind.UPSERT)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    purpose = models.CharField(
        max_length=10,
        choices=JobPurpose.choices,
        default=JobPurpose.CLIENT,
        help_text="Standby and backfill jobs are bulk work (scheduled after interactive requests) and are not charged",
    )
    total = models.PositiveIntegerField(default=0)
    processed = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="Times a worker started on it")
    worker = models.CharField(max_length=200, blank=True, help_text="Celery node that ran it last")
    last_step_at = models.DateTimeField(null=True, blank=True, help_text="When a worker last took a step of it")
    stepping_until = models.DateTimeField(
        null=True, blank=True, help_text="A worker is on a step of it until then (a lease: a dead worker's expires)"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"


class IngestionSwitch(models.Model):
    """The persisted pause switch. A row without namespace pauses every namespace."""

    namespace = models.OneToOneField(
        Namespace, null=True, blank=True, on_delete=models.CASCADE, related_name="ingestion_switch"
    )
    paused = models.BooleanField(default=False)
    reason = models.CharField(max_length=500, blank=True)
    changed_by = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["paused"], condition=Q(namespace__isnull=True), name="one_global_switch"),
        ]

    def __str__(self) -> str:
        scope = self.namespace.name if self.namespace else "all namespaces"
        return f"{scope}: {'paused' if self.paused else 'running'}"


class EvaluationRun(models.Model):
    """A retrieval-quality measurement; the latest run of a namespace is the baseline for rollback triggers."""

    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="evaluation_runs")
    model_version = models.CharField(max_length=100, blank=True)
    spec = models.CharField(
        max_length=500,
        blank=True,
        help_text="Hybrid runs: the fusion, e.g. 'rrf(k=60; ns-a:1, ns-b:1)'; empty when one namespace was evaluated.",
    )
    dataset = models.CharField(max_length=200, help_text="Dataset name, e.g. scifact")
    dataset_path = models.CharField(max_length=500, blank=True)
    metrics = models.JSONField(default=dict, help_text='e.g. {"ndcg_at_10": 0.6451, "recall_at_10": 0.7833}')
    queries = models.PositiveIntegerField(default=0)
    documents = models.PositiveIntegerField(default=0)
    duration_seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        get_latest_by = "created_at"

    def __str__(self) -> str:
        ndcg = self.metrics.get("ndcg_at_10")
        return f"{self.spec or self.namespace.name} on {self.dataset}: nDCG@10 {ndcg}"

    @property
    def ndcg_at_10(self) -> float | None:
        return self.metrics.get("ndcg_at_10")

    @property
    def recall_at_10(self) -> float | None:
        return self.metrics.get("recall_at_10")


class QuerySample(models.Model):
    """A sampled real search query of a tenant on a namespace: a migration's gate measures the agreement of the old
    and new versions (overlap@10) on what the tenant really asks, not only on a dataset's queries.

    Query texts are tenant data: sampled at MEDKG_QUERY_SAMPLE_RATE (0 stores none), at most MEDKG_QUERY_SAMPLE_KEEP
    kept per tenant and namespace (the oldest go), erased with the tenant."""

    namespace = models.ForeignKey(Namespace, on_delete=models.CASCADE, related_name="query_samples")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="query_samples")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["namespace", "tenant", "-id"], name="query_sample_recent")]

    def __str__(self) -> str:
        return f"{self.tenant_id}/{self.namespace_id}: {self.text[:60]}"
