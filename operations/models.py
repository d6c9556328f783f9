"""Operations records: where traffic is served, rollbacks, drills and incidents.

`NamespaceRoute` is live state (consulted when a request's namespace is resolved); the others are evidence.
Names of namespaces are stored as text on the evidence so a record outlives the namespace it names.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import models

from namespaces.models import Namespace

POST_INCIDENT_REVIEW_DELAY = timedelta(hours=2)


class RollbackStatus(models.TextChoices):
    IN_PROGRESS = "in_progress", "in progress"
    ACTIVE = "active", "active (traffic on the legacy namespace)"
    UNDONE = "undone", "undone (traffic back on the primary)"
    FAILED = "failed"


class RollbackEvent(models.Model):
    """One rollback of a namespace to its legacy namespace, with the timing of every step (the RTO)."""

    namespace = models.CharField(max_length=200, db_index=True, help_text="The primary namespace rolled back.")
    target_namespace = models.CharField(max_length=200, help_text="The legacy namespace that serves its traffic.")
    source_dim = models.PositiveIntegerField(null=True, blank=True)
    target_dim = models.PositiveIntegerField(null=True, blank=True)
    reason = models.TextField()
    trigger = models.CharField(max_length=100, blank=True, help_text="The rollback trigger that started it, if any.")
    initiated_by = models.CharField(max_length=200, blank=True)
    status = models.CharField(
        max_length=20, choices=RollbackStatus.choices, default=RollbackStatus.IN_PROGRESS, db_index=True
    )
    kubectl = models.BooleanField(default=False, help_text="The Kubernetes deployments were scaled too.")
    started_at = models.DateTimeField(db_index=True)
    switched_at = models.DateTimeField(null=True, blank=True, help_text="Traffic moved to the legacy namespace.")
    completed_at = models.DateTimeField(null=True, blank=True)
    rto_seconds = models.FloatField(null=True, blank=True, help_text="Start until every server serves the legacy.")
    duration_seconds = models.FloatField(null=True, blank=True, help_text="Start until every step was done.")
    steps = models.JSONField(default=list, blank=True, help_text="[{name, started_at, seconds, ok, detail}]")
    ingestion_paused = models.BooleanField(
        default=False, help_text="This rollback paused the primary's ingestion (and its undo resumes it)."
    )
    undone_at = models.DateTimeField(null=True, blank=True)
    undone_by = models.CharField(max_length=200, blank=True)
    undo_reason = models.TextField(blank=True)
    restore_seconds = models.FloatField(null=True, blank=True, help_text="Undo start until the primary serves.")
    undo_steps = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.namespace} → {self.target_namespace} ({self.status})"


class NamespaceRoute(models.Model):
    """Requests for `source` are served by `target` while this row exists (an active rollback).

    One route per source; a route never chains (the rollback service refuses a target that is itself routed).
    """

    source = models.OneToOneField(Namespace, on_delete=models.CASCADE, related_name="route")
    target = models.ForeignKey(Namespace, on_delete=models.PROTECT, related_name="routed_from")
    event = models.ForeignKey(RollbackEvent, on_delete=models.PROTECT, related_name="routes")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.source.name} → {self.target.name}"

    def clean(self) -> None:
        if self.source_id == self.target_id:
            raise ValidationError({"target": "a namespace cannot be routed to itself"})


class ServingControl(models.Model):
    """A single row: serving processes drop their cached providers when `generation` moves."""

    generation = models.PositiveIntegerField(default=0)
    reason = models.CharField(max_length=500, blank=True)
    changed_by = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"serving generation {self.generation}"


class DrillVerdict(models.TextChoices):
    PASSED = "passed"
    OVER_TARGET = "over_target", "over target (within the maximum)"
    FAILED = "failed"
    ABORTED = "aborted"


class RollbackDrill(models.Model):
    """A rollback rehearsed end to end on a running system, with its measured RTO against the targets."""

    environment = models.CharField(max_length=50, db_index=True)
    namespace = models.CharField(max_length=200)
    target_namespace = models.CharField(max_length=200)
    base_url = models.CharField(max_length=500, blank=True, help_text="The service the drill probed.")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    rto_seconds = models.FloatField(null=True, blank=True, help_text="Start until the first request served by legacy.")
    full_seconds = models.FloatField(null=True, blank=True, help_text="Start until the rollback was complete.")
    restore_seconds = models.FloatField(null=True, blank=True, help_text="Undo start until the primary served again.")
    target_canary_seconds = models.PositiveIntegerField(default=300)
    target_full_seconds = models.PositiveIntegerField(default=900)
    max_seconds = models.PositiveIntegerField(default=1200)
    probes_sent = models.PositiveIntegerField(default=0)
    probes_failed = models.PositiveIntegerField(default=0)
    passed = models.BooleanField(default=False)
    verdict = models.CharField(max_length=20, choices=DrillVerdict.choices, default=DrillVerdict.FAILED)
    steps = models.JSONField(default=list, blank=True)
    rollback_event = models.ForeignKey(
        RollbackEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="drills"
    )
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"drill #{self.pk} {self.environment} {self.started_at:%Y-%m-%d %H:%M} {self.verdict}"


class Severity(models.TextChoices):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"


class IncidentStatus(models.TextChoices):
    OPEN = "open"
    MITIGATED = "mitigated", "mitigated (rolled back)"
    RESOLVED = "resolved"


class Incident(models.Model):
    """An operational incident; its body starts from docs/templates/rollback_incident_template.md."""

    title = models.CharField(max_length=300)
    trigger = models.CharField(max_length=100, help_text="The rollback trigger (or 'manual').")
    severity = models.CharField(max_length=20, choices=Severity.choices, default=Severity.CRITICAL)
    namespace = models.CharField(max_length=200, db_index=True)
    status = models.CharField(max_length=20, choices=IncidentStatus.choices, default=IncidentStatus.OPEN)
    opened_at = models.DateTimeField(db_index=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    rollback_event = models.OneToOneField(
        RollbackEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="incident"
    )
    review_due_at = models.DateTimeField(
        null=True, blank=True, help_text="Post-incident review: two hours after the rollback completed."
    )
    measurements = models.JSONField(default=dict, blank=True, help_text="What the trigger saw (value, threshold).")
    body = models.TextField(help_text="Markdown, from the incident template.")

    class Meta:
        ordering = ["-opened_at", "-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"

    def clean(self) -> None:
        if self.resolved_at and self.opened_at and self.resolved_at < self.opened_at:
            raise ValidationError({"resolved_at": "must not be before opened_at"})
        if self.status == IncidentStatus.RESOLVED and not self.resolved_at:
            raise ValidationError({"resolved_at": "a resolved incident needs its resolution time"})


class MigrationStep(models.TextChoices):
    SHADOW = "shadow", "shadow (the target mirrors every write)"
    BACKFILL = "backfill", "backfill (stored documents re-embedded into the target)"
    GATE = "gate", "gate (retrieval quality measured against the source)"
    CUTOVER = "cutover", "cutover (the alias names the target)"
    WINDOW = "window", "rollback window (the source is the target's standby)"
    RETIRE = "retire", "retire (the source's index dropped)"


MIGRATION_STEPS = list(MigrationStep.values)  # the order they run in


class MigrationState(models.TextChoices):
    RUNNING = "running"
    PAUSED = "paused"
    WAITING = "waiting", "waiting (for an operator or the end of the window)"
    REFUSED = "refused", "refused by the gate"
    ABORTED = "aborted"
    FAILED = "failed", "failed (can be continued)"
    DONE = "done"


FINISHED_MIGRATION_STATES = (MigrationState.ABORTED, MigrationState.DONE)


def _default_margin() -> float:
    from django.conf import settings

    return float(settings.MEDKG_MIGRATION_GATE_MARGIN)


def _default_window_seconds() -> int:
    from django.conf import settings

    return int(settings.MEDKG_MIGRATION_WINDOW_SECONDS)


class NamespaceMigration(models.Model):
    """Re-embedding `source`'s documents into `target` and moving `alias` to it (operations.lifecycle).

    `step` is the step to run next (or running); each step is idempotent, so a crash anywhere is continued by
    running the migration again. Live state: its links (NamespaceStandby) and the alias are what serve.
    """

    source = models.ForeignKey(Namespace, on_delete=models.PROTECT, related_name="migrations_from")
    target = models.ForeignKey(Namespace, on_delete=models.PROTECT, related_name="migrations_to")
    alias = models.CharField(max_length=200, help_text="The alias that names the source now and the target after.")
    step = models.CharField(max_length=20, choices=MigrationStep.choices, default=MigrationStep.SHADOW)
    state = models.CharField(
        max_length=20, choices=MigrationState.choices, default=MigrationState.RUNNING, db_index=True
    )
    steps = models.JSONField(
        default=dict, blank=True, help_text="{step: {started_at, finished_at, seconds, ok, detail}}"
    )
    progress = models.JSONField(default=dict, blank=True, help_text="Backfill: {tenant: {total, copied, cursor}}")
    gate = models.JSONField(
        default=dict,
        blank=True,
        help_text="{dataset, source, target, drops, margin, overlap_at_10, passed, reason}",
    )
    links = models.JSONField(
        default=list, blank=True, help_text="[[primary, standby, purpose]] standby links this migration attached"
    )
    dataset = models.CharField(max_length=500, blank=True, help_text="The BEIR dataset of the gate.")
    margin = models.FloatField(
        default=_default_margin, help_text="Largest relative drop of nDCG@10 and Recall@10 the gate accepts."
    )
    window_seconds = models.PositiveIntegerField(default=_default_window_seconds)
    window_ends_at = models.DateTimeField(null=True, blank=True)
    purge_on_retire = models.BooleanField(default=False, help_text="Retire deletes the source's rows too.")
    created_by = models.CharField(max_length=200, blank=True)
    reason = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["source"],
                condition=~models.Q(state__in=["aborted", "done"]),
                name="one_unfinished_migration_per_source",
            ),
            models.CheckConstraint(condition=~models.Q(source=models.F("target")), name="migration_not_to_itself"),
        ]

    def __str__(self) -> str:
        return f"migration #{self.pk} {self.source.name} → {self.target.name} ({self.step}, {self.state})"

    def clean(self) -> None:
        if self.source_id and self.source_id == self.target_id:
            raise ValidationError({"target": "a namespace cannot be migrated to itself"})

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_MIGRATION_STATES

    def backfill_totals(self) -> tuple[int, int]:
        """(copied, total) over every tenant."""
        entries = self.progress.values()
        return sum(entry.get("copied", 0) for entry in entries), sum(entry.get("total", 0) for entry in entries)
