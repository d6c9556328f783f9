"""Operators' admin: tenants and namespaces are managed here; audit events are evidence, read-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count
from django.http import HttpRequest, HttpResponse

from core.admin import EvidenceAdmin
from namespaces.models import (
    AccessAuditEvent,
    AliasFlip,
    Namespace,
    NamespaceAlias,
    NamespaceStandby,
    Tenant,
    UnauthenticatedRefusalWindow,
)
from namespaces.services import alias_flip


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


class NamespaceAliasForm(forms.ModelForm):
    reason = forms.CharField(max_length=500, required=False, help_text="Recorded with the flip (why it moved).")

    class Meta:
        model = NamespaceAlias
        fields = ["name", "namespace", "description", "reason"]


class AliasFlipInline(admin.TabularInline):
    model = AliasFlip
    extra = 0
    can_delete = False
    fields = ["flipped_at", "from_namespace", "to_namespace", "changed_by", "reason"]
    readonly_fields = ("flipped_at", "from_namespace", "to_namespace", "changed_by", "reason")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(NamespaceAlias)
class NamespaceAliasAdmin(admin.ModelAdmin):
    """A change of target here is an audited flip (namespaces.services.alias_flip), as from namespace_migrate."""

    form = NamespaceAliasForm
    list_display = ["name", "namespace", "changed_by", "updated_at"]
    search_fields = ["name", "namespace__name"]
    inlines = [AliasFlipInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return ["name", "changed_by", "updated_at"] if obj is not None else ["changed_by", "updated_at"]

    def save_model(self, request: HttpRequest, obj: NamespaceAlias, form: Any, change: bool) -> None:
        target, reason = form.cleaned_data["namespace"], form.cleaned_data.get("reason", "")
        flipped = not change or "namespace" in form.changed_data
        if flipped:
            flip = alias_flip(alias=obj.name, to=target, changed_by=f"admin:{request.user}", reason=reason)
            obj.pk = flip.alias_id
        NamespaceAlias.objects.filter(pk=obj.pk).update(description=obj.description)
        obj.refresh_from_db()


@admin.register(AliasFlip)
class AliasFlipAdmin(EvidenceAdmin):
    list_display = ["flipped_at", "alias", "from_namespace", "to_namespace", "changed_by", "reason"]
    list_filter = ["alias", "flipped_at"]
    search_fields = ["alias__name", "from_namespace", "to_namespace", "changed_by"]
    date_hierarchy = "flipped_at"


@admin.register(NamespaceStandby)
class NamespaceStandbyAdmin(admin.ModelAdmin):
    """Every document accepted for the primary is also ingested into the standby from here on (not before:
    `namespace_migrate` backfills what is stored)."""

    list_display = ["primary", "standby", "purpose", "created_by", "created_at"]
    list_filter = ["purpose"]
    readonly_fields = ["created_by", "created_at"]

    def save_model(self, request: HttpRequest, obj: NamespaceStandby, form: Any, change: bool) -> None:
        obj.created_by = obj.created_by or f"admin:{request.user}"
        super().save_model(request, obj, form, change)
