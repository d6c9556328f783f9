"""Service health: the database and each enabled namespace's provider.

Healthy (200) when the database answers and the default namespace's provider can serve;
other providers are reported but do not make the service unhealthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection

from embeddings.providers.registry import provider_for
from medkg.errors import MedkgError
from namespaces.models import Namespace


@dataclass
class HealthReport:
    healthy: bool
    database: dict[str, Any]
    default_namespace: str
    providers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "healthy" if self.healthy else "unhealthy",
            "database": self.database,
            "default_namespace": self.default_namespace,
            "providers": self.providers,
        }


def _database_status() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        return {"ready": False, "detail": f"{type(error).__name__}: {error}"[:300]}
    return {"ready": True, "detail": connection.vendor}


def _namespace_status(namespace: Namespace) -> dict[str, Any]:
    entry = {"namespace": namespace.name, "provider": namespace.provider, "requires_gpu": namespace.requires_gpu}
    try:
        readiness = provider_for(namespace).readiness()
    except MedkgError as error:
        return {**entry, "ready": False, "detail": error.message}
    return {**entry, "ready": readiness.ready, "detail": readiness.detail}


def health_report() -> HealthReport:
    database = _database_status()
    default_name = settings.MEDKG_DEFAULT_NAMESPACE
    if not database["ready"]:
        return HealthReport(False, database, default_name)
    providers = [_namespace_status(namespace) for namespace in Namespace.objects.filter(enabled=True)]
    default = next((entry for entry in providers if entry["namespace"] == default_name), None)
    if default is None:
        providers.append({"namespace": default_name, "ready": False, "detail": "not configured or disabled"})
    healthy = default is not None and bool(default["ready"])
    return HealthReport(healthy, database, default_name, providers)
