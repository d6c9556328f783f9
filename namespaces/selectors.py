"""Reads and access checks for tenants and namespaces.

The request path reads the caller's tenant and the namespace it asks for on every request. Each serving
process keeps the rows it read for at most MEDKG_ACCESS_CACHE_TTL seconds (like the rollback routes,
operations/serving.py), so most requests cost no query. A change saved through the ORM in this process
(the admin, sync_namespaces, create_tenant) empties the cache at once through model signals; any other
change (another process, a bulk `update()`, SQL) reaches every process within the TTL. 0 turns it off.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.signals import m2m_changed, post_delete, post_save

from medkg.errors import AccessRefused
from namespaces.models import Namespace, Tenant

_CACHE_MAX_ENTRIES = 4096  # per kind: a flood of distinct names must not grow memory without bound


@dataclass(frozen=True)
class _CachedNamespace:
    loaded_at: float
    namespace: Namespace
    granted_tenant_ids: frozenset[int]  # meaningful when not allow_all_tenants


_tenants: dict[str, tuple[float, Tenant]] = {}
_namespaces: dict[str, _CachedNamespace] = {}
_generation = 0  # bumped by every invalidation: a load that raced with one is not stored
_cache_lock = threading.Lock()


def access_cache_ttl() -> float:
    return float(settings.MEDKG_ACCESS_CACHE_TTL)


def access_cache_clear() -> None:
    """Forget every cached tenant and namespace."""
    global _generation
    with _cache_lock:
        _generation += 1
        _tenants.clear()
        _namespaces.clear()


def _model_changed(**_: Any) -> None:
    # Again when the change commits: a request that read the old row between the save and the commit
    # must not keep it for a whole TTL.
    access_cache_clear()
    transaction.on_commit(access_cache_clear)


def _store(cache: dict[str, Any], key: str, value: Any, generation: int) -> None:
    with _cache_lock:
        if generation != _generation:
            return  # invalidated while we read the database: what we read may be the old row
        if len(cache) >= _CACHE_MAX_ENTRIES:
            cache.clear()
        cache[key] = value


def tenant_get_active(*, slug: str) -> Tenant | None:
    ttl = access_cache_ttl()
    now = time.monotonic()
    cached = _tenants.get(slug)
    if cached is not None and now - cached[0] < ttl:
        return cached[1]
    generation = _generation
    tenant = Tenant.objects.filter(slug=slug, is_active=True).first()
    # Unknown and inactive tenants are not cached: a deactivation is never undone by a stale entry, and
    # garbage slugs cannot fill the cache.
    if tenant is not None and ttl > 0:
        _store(_tenants, slug, (now, tenant), generation)
    return tenant


def namespace_list_for_tenant(*, tenant: Tenant) -> QuerySet[Namespace]:
    """Namespaces granted to the tenant: open to all tenants, or naming it."""
    granted = Q(allow_all_tenants=True) | Q(
        pk__in=Namespace.allowed_tenants.through.objects.filter(tenant=tenant).values("namespace")
    )
    return Namespace.objects.filter(granted).prefetch_related("allowed_tenants").order_by("name")


def _namespace_cached(name: str) -> _CachedNamespace | None:
    ttl = access_cache_ttl()
    now = time.monotonic()
    cached = _namespaces.get(name)
    if cached is not None and now - cached.loaded_at < ttl:
        return cached
    generation = _generation
    namespace = Namespace.objects.filter(name=name).first()
    if namespace is None:
        return None
    granted = (
        frozenset()
        if namespace.allow_all_tenants
        else frozenset(namespace.allowed_tenants.values_list("pk", flat=True))
    )
    entry = _CachedNamespace(loaded_at=now, namespace=namespace, granted_tenant_ids=granted)
    if ttl > 0:
        _store(_namespaces, name, entry, generation)
    return entry


def namespace_get_for_tenant(*, name: str, tenant: Tenant, scope: str) -> Namespace:
    """The namespace if the tenant may use it with `scope`; otherwise AccessRefused.

    Unknown and not-granted raise the same client answer (404) with different audit reasons.
    """
    # PostgreSQL text cannot hold NUL, so no namespace name has one: do not send it to the database.
    entry = _namespace_cached(name) if "\x00" not in name else None
    if entry is None:
        raise AccessRefused("namespace_unknown", namespace=name)
    namespace = entry.namespace
    if not namespace.allow_all_tenants and tenant.pk not in entry.granted_tenant_ids:
        raise AccessRefused("namespace_not_granted", namespace=name)
    if scope not in namespace.allowed_scopes:
        raise AccessRefused("insufficient_scope", namespace=name, detail=f"namespace does not allow {scope}")
    return namespace


# Any change saved through the ORM in this process empties the cache at once (dispatch_uid: connected once).
for _model in (Tenant, Namespace):
    post_save.connect(_model_changed, sender=_model, dispatch_uid=f"access_cache_save_{_model.__name__}")
    post_delete.connect(_model_changed, sender=_model, dispatch_uid=f"access_cache_delete_{_model.__name__}")
m2m_changed.connect(
    _model_changed, sender=Namespace.allowed_tenants.through, dispatch_uid="access_cache_namespace_tenants"
)
