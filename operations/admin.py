"""Operators' admin: rollback events, drills and active routes are evidence (read-only); incidents are worked on;
migrations are watched (progress, ETA, gate figures) and paused, resumed or aborted through actions."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from core.admin import EvidenceAdmin
from core.errors import MedkgError
from operations.lifecycle import (
    GATE_METRICS,
    migration_abort,
    migration_eta_seconds,
    migration_pause,
    migration_resume,
    migration_run_in_background,
)
from operations.models import Incident, NamespaceMigration, NamespaceRoute, RollbackDrill, RollbackEvent


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _against(value: float | None, target: int) -> str:
    if value is None:
        return "—"
    colour = "#1a7f37" if value <= target else "#cf222e"
    return format_html('<span style="color:{}">{} / {} s</span>', colour, f"{value:.2f}", target)


@admin.register(RollbackEvent)
class RollbackEventAdmin(EvidenceAdmin):
    list_display = ["id", "started_at", "namespace", "target_namespace", "status", "trigger", "rto", "duration"]
    list_filter = ["status", "namespace", "trigger", "kubectl", "started_at"]
    search_fields = ["namespace", "target_namespace", "reason", "initiated_by"]
    date_hierarchy = "started_at"

    @admin.display(description="RTO", ordering="rto_seconds")
    def rto(self, event: RollbackEvent) -> str:
        return _seconds(event.rto_seconds)

    @admin.display(description="all steps", ordering="duration_seconds")
    def duration(self, event: RollbackEvent) -> str:
        return _seconds(event.duration_seconds)


@admin.register(RollbackDrill)
class RollbackDrillAdmin(EvidenceAdmin):
    list_display = ["id", "started_at", "environment", "namespace", "canary", "full", "restore", "probes", "verdict"]
    list_filter = ["environment", "verdict", "passed", "started_at"]
    date_hierarchy = "started_at"

    @admin.display(description="RTO (canary) / target")
    def canary(self, drill: RollbackDrill) -> str:
        return _against(drill.rto_seconds, drill.target_canary_seconds)

    @admin.display(description="full / target")
    def full(self, drill: RollbackDrill) -> str:
        return _against(drill.full_seconds, drill.target_full_seconds)

    @admin.display(description="restore")
    def restore(self, drill: RollbackDrill) -> str:
        return _seconds(drill.restore_seconds)

    @admin.display(description="probes (failed)")
    def probes(self, drill: RollbackDrill) -> str:
        return f"{drill.probes_sent} ({drill.probes_failed})"


@admin.register(NamespaceRoute)
class NamespaceRouteAdmin(EvidenceAdmin):
    """Active rollbacks. Changed only by `manage.py rollback_embeddings` (which checks and drains)."""

    list_display = ["source", "target", "event", "created_at"]


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    list_display = ["id", "opened_at", "title", "severity", "namespace", "status", "review_due_at", "resolved_at"]
    list_filter = ["status", "severity", "namespace", "trigger", "opened_at"]
    search_fields = ["title", "namespace", "trigger", "body"]
    date_hierarchy = "opened_at"
    formfield_overrides = {models.TextField: {"widget": forms.Textarea(attrs={"rows": 40, "cols": 120})}}
    # What the trigger and the rollback recorded is evidence; the write-up and the resolution are the operators'.
    readonly_fields = [
        "trigger",
        "namespace",
        "opened_at",
        "measurements",
        "rollback_event",
        "review_due_at",
    ]
    fields = [
        "title",
        "severity",
        "status",
        "resolved_at",
        *readonly_fields,
        "body",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # incidents are opened by evaluate_rollback_triggers --act

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _migration_action(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[NamespaceMigration], verb: str
) -> None:
    """Apply `verb` to each selected migration; a refusal is shown, the others still go on."""
    by = f"{request.user}@admin"
    for migration in queryset.select_related("source", "target"):
        try:
            if verb == "pause":
                migration_pause(migration=migration, changed_by=by)
            elif verb == "abort":
                migration_abort(migration=migration, changed_by=by)
            else:
                migration_run_in_background(migration=migration_resume(migration=migration, changed_by=by))
        except MedkgError as error:
            modeladmin.message_user(request, f"#{migration.pk}: {error.message}", messages.ERROR)
        else:
            modeladmin.message_user(request, f"#{migration.pk}: {verb} done")


@admin.register(NamespaceMigration)
class NamespaceMigrationAdmin(EvidenceAdmin):
    """Migrations are started by `manage.py namespace_migrate`; here they are watched, paused, resumed, aborted."""

    list_display = ["id", "source", "target", "alias", "step", "state", "progress_percent", "eta", "created_at"]
    list_filter = ["state", "step"]
    search_fields = ["alias", "source__name", "target__name"]
    actions = ["pause", "resume", "abort"]
    readonly_fields = [
        "source",
        "target",
        "alias",
        "step",
        "state",
        "error",
        "tenant_progress",
        "gate_figures",
        "steps",
        "links",
        "dataset",
        "margin",
        "window_seconds",
        "window_ends_at",
        "purge_on_retire",
        "created_by",
        "reason",
        "created_at",
        "finished_at",
    ]
    fields = [*readonly_fields]

    @admin.display(description="backfill")
    def progress_percent(self, migration: NamespaceMigration) -> str:
        copied, total = migration.backfill_totals()
        return f"{100 * copied / total:.0f} % ({copied}/{total})" if total else "—"

    @admin.display(description="ETA")
    def eta(self, migration: NamespaceMigration) -> str:
        seconds = migration_eta_seconds(migration)
        return "—" if seconds is None else f"{seconds:.0f} s"

    @admin.display(description="per tenant (copied / total, indexed)")
    def tenant_progress(self, migration: NamespaceMigration) -> str:
        rows = sorted(migration.progress.items())
        return (
            format_html_join(
                "",
                "<div>{}: {} / {}, {} indexed</div>",
                ((s, e.get("copied"), e.get("total"), e.get("indexed")) for s, e in rows),
            )
            or "—"
        )

    @admin.display(description="gate")
    def gate_figures(self, migration: NamespaceMigration) -> str:
        gate = migration.gate
        if not gate:
            return "—"
        figures = format_html_join(
            "",
            "<div>{}: {} → {} ({} % drop)</div>",
            (
                (label, gate["source"][name], gate["target"][name], f"{gate['drops'][name] * 100:.1f}")
                for name, label in GATE_METRICS.items()
            ),
        )
        verdict = "passed" if gate["passed"] else "refused"
        queries = gate.get("overlap_queries") or {}
        return format_html(
            "{}<div>overlap@10 {} ({} sampled, {} dataset queries); margin {} %; {}: {}</div>",
            figures,
            gate.get("overlap_at_10"),
            queries.get("sampled", 0),
            queries.get("dataset", 0),
            f"{gate['margin'] * 100:g}",
            verdict,
            gate["reason"],
        )

    @admin.action(description="Pause the selected migrations")
    def pause(self, request: HttpRequest, queryset: QuerySet[NamespaceMigration]) -> None:
        _migration_action(self, request, queryset, "pause")

    @admin.action(description="Resume the selected migrations (in the background)")
    def resume(self, request: HttpRequest, queryset: QuerySet[NamespaceMigration]) -> None:
        _migration_action(self, request, queryset, "resume")

    @admin.action(description="Abort the selected migrations (the source serves as before)")
    def abort(self, request: HttpRequest, queryset: QuerySet[NamespaceMigration]) -> None:
        _migration_action(self, request, queryset, "abort")
