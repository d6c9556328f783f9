"""Reads and access checks for tenants and namespaces."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from medkg.errors import AccessRefused
from namespaces.models import Namespace, Tenant


def tenant_get_active(*, slug: str) -> Tenant | None:
    return Tenant.objects.filter(slug=slug, is_active=True).first()


def namespace_list_for_tenant(*, tenant: Tenant) -> QuerySet[Namespace]:
    """Namespaces granted to the tenant: open to all tenants, or naming it."""
    granted = Q(allow_all_tenants=True) | Q(
        pk__in=Namespace.allowed_tenants.through.objects.filter(tenant=tenant).values("namespace")
    )
    return Namespace.objects.filter(granted).prefetch_related("allowed_tenants").order_by("name")


def namespace_get_for_tenant(*, name: str, tenant: Tenant, scope: str) -> Namespace:
    """The namespace if the tenant may use it with `scope`; otherwise AccessRefused.

    Unknown and not-granted raise the same client answer (404) with different audit reasons.
    """
    # PostgreSQL text cannot hold NUL, so no namespace name has one: do not send it to the database.
    namespace = Namespace.objects.filter(name=name).first() if "\x00" not in name else None
    if namespace is None:
        raise AccessRefused("namespace_unknown", namespace=name)
    if not namespace.allow_all_tenants and not namespace.allowed_tenants.filter(pk=tenant.pk).exists():
        raise AccessRefused("namespace_not_granted", namespace=name)
    if scope not in namespace.allowed_scopes:
        raise AccessRefused("insufficient_scope", namespace=name, detail=f"namespace does not allow {scope}")
    return namespace
