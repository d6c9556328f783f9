"""Operators' admin: what is indexed, ingestion jobs and the pause switch, retrieval evaluations (evidence)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from embeddings.models import Document, EvaluationRun, IngestionJob, IngestionSwitch


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the services only: visible to staff, never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Document)
class DocumentAdmin(ReadOnlyAdmin):
    list_display = ["external_id", "namespace", "tenant", "version", "indexed_version", "deleted_at", "updated_at"]
    list_filter = ["namespace", "tenant"]
    search_fields = ["external_id", "text_hash"]
    exclude = ["vector"]
    list_select_related = ["namespace", "tenant"]


@admin.register(IngestionJob)
class IngestionJobAdmin(ReadOnlyAdmin):
    list_display = ["id", "namespace", "tenant", "kind", "status", "processed", "total", "attempts", "created_at"]
    list_filter = ["status", "kind", "namespace", "tenant"]
    search_fields = ["id", "error"]
    list_select_related = ["namespace", "tenant"]
    date_hierarchy = "created_at"


@admin.register(IngestionSwitch)
class IngestionSwitchAdmin(admin.ModelAdmin):
    list_display = ["__str__", "paused", "reason", "changed_by", "updated_at"]


@admin.register(EvaluationRun)
class EvaluationRunAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "namespace", "dataset", "model_version", "ndcg_at_10", "recall_at_10", "queries"]
    list_filter = ["namespace", "dataset"]
    date_hierarchy = "created_at"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
