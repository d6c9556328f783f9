"""Reads and access checks for tenants and namespaces.

The request path reads the caller's tenant and the namespace it asks for on every request. Each serving
process keeps the rows it read for at most MEDKG_ACCESS_CACHE_TTL seconds (like the rollback routes,
operations/serving.py), so most requests cost no query. A change saved through the ORM in this process
(the admin, sync_namespaces, create_tenant) empties the cache at once through model signals; any other
change (another process, a bulk `update()`, SQL) reaches every process within the TTL. 0 turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet

from core.cache import TTLCache
from core.errors import AccessRefused
from namespaces.models import NAMESPACE_NAME_PATTERN, Namespace, NamespaceAlias, NamespaceStandby, Tenant

_CACHE_MAX_ENTRIES = 4096  # per kind: a flood of distinct names must not grow memory without bound


@dataclass(frozen=True)
class _CachedNamespace:
    namespace: Namespace
    granted_tenant_ids: frozenset[int]  # meaningful when not allow_all_tenants


def access_cache_ttl() -> float:
    return float(settings.MEDKG_ACCESS_CACHE_TTL)


_tenants: TTLCache[str, Tenant] = TTLCache(access_cache_ttl, max_entries=_CACHE_MAX_ENTRIES)
_namespaces: TTLCache[str, _CachedNamespace] = TTLCache(access_cache_ttl, max_entries=_CACHE_MAX_ENTRIES)


def alias_cache_ttl() -> float:
    """Aliases follow the serving state's TTL: a flip reaches every serving process as a rollback route does."""
    return float(settings.MEDKG_SERVING_STATE_TTL)


_aliases: TTLCache[str, str] = TTLCache(alias_cache_ttl, max_entries=_CACHE_MAX_ENTRIES)
_standbys: TTLCache[int, tuple[Namespace, ...]] = TTLCache(access_cache_ttl, max_entries=_CACHE_MAX_ENTRIES)


def access_cache_clear() -> None:
    """Forget every cached tenant and namespace."""
    _tenants.clear()
    _namespaces.clear()
    _aliases.clear()
    _standbys.clear()


def access_cache_model_changed(**_: Any) -> None:
    """Signal receiver (NamespacesConfig.ready) for a saved or deleted Tenant or Namespace, or a changed grant."""
    # Again when the change commits: a request that read the old row between the save and the commit
    # must not keep it for a whole TTL.
    access_cache_clear()
    transaction.on_commit(access_cache_clear)


def tenant_get_active(*, slug: str) -> Tenant | None:
    # Unknown and inactive tenants are not cached (load returns None): a deactivation is never undone by a stale
    # entry, and garbage slugs cannot fill the cache.
    return _tenants.get(slug, lambda _: Tenant.objects.filter(slug=slug, is_active=True).first())


def namespace_list_for_tenant(*, tenant: Tenant) -> QuerySet[Namespace]:
    """Namespaces granted to the tenant: open to all tenants, or naming it."""
    granted = Q(allow_all_tenants=True) | Q(
        pk__in=Namespace.allowed_tenants.through.objects.filter(tenant=tenant).values("namespace")
    )
    return Namespace.objects.filter(granted).prefetch_related("allowed_tenants", "aliases").order_by("name")


def _namespace_load(name: str) -> _CachedNamespace | None:
    namespace = Namespace.objects.filter(name=name).first()
    if namespace is None:
        return None
    granted = (
        frozenset()
        if namespace.allow_all_tenants
        else frozenset(namespace.allowed_tenants.values_list("pk", flat=True))
    )
    return _CachedNamespace(namespace=namespace, granted_tenant_ids=granted)


def alias_resolve(name: str) -> str:
    """The concrete namespace name behind `name`: itself when it is a namespace name (or unknown), else its alias's."""
    if NAMESPACE_NAME_PATTERN.match(name) or "\x00" in name:
        return name
    target = _aliases.get(
        name, lambda _: NamespaceAlias.objects.filter(name=name).values_list("namespace__name", flat=True).first()
    )
    return target or name


def namespace_standbys(namespace: Namespace) -> tuple[Namespace, ...]:
    """The namespaces that mirror every write accepted for `namespace` (its rollback target, the next version)."""
    found = _standbys.get(
        namespace.pk,
        lambda _: tuple(
            link.standby for link in NamespaceStandby.objects.filter(primary=namespace).select_related("standby")
        ),
    )
    return found or ()


def namespace_get_for_tenant(*, name: str, tenant: Tenant, scope: str) -> Namespace:
    """The namespace if the tenant may use it with `scope`; otherwise AccessRefused. `name` may be an alias: the
    concrete namespace it resolves to is returned, and the grant and scope are checked on it.

    Unknown and not-granted raise the same client answer (404) with different audit reasons.
    """
    concrete = alias_resolve(name)
    # PostgreSQL text cannot hold NUL, so no namespace name has one: do not send it to the database.
    entry = _namespaces.get(concrete, lambda _: _namespace_load(concrete)) if "\x00" not in concrete else None
    if entry is None:
        raise AccessRefused("namespace_unknown", namespace=name)
    namespace = entry.namespace
    if not namespace.allow_all_tenants and tenant.pk not in entry.granted_tenant_ids:
        raise AccessRefused("namespace_not_granted", namespace=name)
    if scope not in namespace.allowed_scopes:
        raise AccessRefused("insufficient_scope", namespace=name, detail=f"namespace does not allow {scope}")
    return namespace


def tenant_scheduling_weight(slug: str) -> float:
    """The tenant's share of a model when tenants compete (admin: scheduling weight); 1 when unknown."""
    tenant = tenant_get_active(slug=slug)
    return float(tenant.scheduling_weight) if tenant is not None else 1.0
