"""Operators' admin: tenants and namespaces are managed here; audit events are evidence, read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count
from django.http import HttpRequest, HttpResponse

from core.admin import EvidenceAdmin
from namespaces.models import AccessAuditEvent, Namespace, Tenant, UnauthenticatedRefusalWindow


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = [
        "slug",
        "name",
        "is_active",
        "quota_requests_per_second",
        "quota_tokens_per_minute",
        "max_documents",
        "max_stored_bytes",
        "stored",
        "scheduling_weight",
        "created_at",
    ]
    list_filter = ["is_active"]
    list_select_related = ["usage"]
    search_fields = ["slug", "name"]
    readonly_fields = ["stored"]

    @admin.display(description="stored now")
    def stored(self, tenant: Tenant) -> str:
        usage = getattr(tenant, "usage", None)  # no row until the tenant first stores a document
        if usage is None:
            return "0 documents, 0 bytes"
        return f"{usage.documents} documents, {usage.stored_bytes} bytes"


@admin.register(Namespace)
class NamespaceAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "provider", "dim", "fallback", "requires_gpu", "enabled", "allow_all_tenants"]
    list_filter = ["kind", "provider", "enabled", "requires_gpu", "allow_all_tenants"]
    search_fields = ["name", "model_id"]
    filter_horizontal = ["allowed_tenants"]
    readonly_fields = ["source_file", "created_at", "updated_at"]


@admin.register(AccessAuditEvent)
class AccessAuditEventAdmin(EvidenceAdmin):
    list_display = [
        "occurred_at",
        "reason",
        "token_tenant",
        "claimed_tenant",
        "namespace",
        "endpoint",
        "status_code",
        "client_address",
        "request_id",
    ]
    list_filter = ["reason", "endpoint", "status_code", "occurred_at", "token_tenant", "namespace"]
    search_fields = ["token_tenant", "claimed_tenant", "namespace", "request_id", "client_address"]
    date_hierarchy = "occurred_at"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The list, plus the refusals per tenant of what the filters selected (the cross-tenant review)."""
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            per_tenant = context["cl"].queryset.order_by().values("token_tenant").annotate(refusals=Count("id"))
            context["counts_per_tenant"] = sorted(per_tenant, key=lambda row: (-row["refusals"], row["token_tenant"]))
        return response


@admin.register(UnauthenticatedRefusalWindow)
class UnauthenticatedRefusalWindowAdmin(EvidenceAdmin):
    list_display = ["window_start", "client_address", "reason", "count", "throttled", "first_endpoint", "last_seen_at"]
    list_filter = ["reason", "window_start"]
    search_fields = ["client_address", "first_request_id"]
    date_hierarchy = "window_start"
