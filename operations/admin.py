"""Operators' admin: rollback events, drills and active routes are evidence (read-only); incidents are worked on."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.http import HttpRequest
from django.utils.html import format_html

from core.admin import EvidenceAdmin
from operations.models import Incident, NamespaceRoute, RollbackDrill, RollbackEvent


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
