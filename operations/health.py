"""Service health: the database, each enabled namespace's provider, the GPU, and active rollbacks.

Healthy (200) when the database answers and the default namespace's provider can serve;
other providers are reported but do not make the service unhealthy. A namespace that requires a GPU
and cannot reach one says `"code": "gpu_unavailable"`, the answer its embedding requests get.
Each report also refreshes the operations gauges (operations.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection

from core.errors import GpuUnavailable, MedkgError
from embeddings.models import EvaluationRun
from embeddings.providers.registry import provider_for
from namespaces.models import Namespace
from operations import metrics
from operations.environment import verify_environment
from operations.serving import serving_state


@dataclass
class HealthReport:
    healthy: bool
    database: dict[str, Any]
    default_namespace: str
    providers: list[dict[str, Any]] = field(default_factory=list)
    gpu: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "healthy" if self.healthy else "unhealthy",
            "database": self.database,
            "default_namespace": self.default_namespace,
            "providers": self.providers,
            "gpu": self.gpu,
        }


def _database_status() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as error:
        return {"ready": False, "detail": f"{type(error).__name__}: {error}"[:300]}
    return {"ready": True, "detail": connection.vendor}


def _unready_code(namespace: Namespace) -> str:
    return GpuUnavailable.code if namespace.requires_gpu else "backend_unavailable"


def _namespace_status(namespace: Namespace, routes: dict[int, Namespace]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "namespace": namespace.name,
        "provider": namespace.provider,
        "requires_gpu": namespace.requires_gpu,
    }
    if namespace.pk in routes:
        entry["served_by"] = routes[namespace.pk].name  # rolled back: its requests are answered by this namespace
    try:
        readiness = provider_for(namespace).readiness()
    except MedkgError as error:
        return {**entry, "ready": False, "code": error.code, "detail": error.message}
    if not readiness.ready:
        return {**entry, "ready": False, "code": _unready_code(namespace), "detail": readiness.detail}
    return {**entry, "ready": True, "detail": readiness.detail}


def _gpu_status() -> dict[str, Any]:
    report = verify_environment(fresh=False)
    return {
        "available": report["available"],
        "devices": len(report["devices"]),
        "driver": report["driver"],
        "cuda": report["cuda"],
        "reason": report["reason"],
    }


def _refresh_gauges(healthy: bool, namespaces: list[Namespace], providers: list[dict[str, Any]]) -> None:
    metrics.HEALTH_UP.set(1 if healthy else 0)
    by_name = {namespace.name: namespace for namespace in namespaces}
    metrics.NAMESPACE_READY.clear()
    metrics.ROLLBACK_ACTIVE.clear()
    for entry in providers:
        namespace = by_name.get(entry["namespace"])
        if namespace is None:
            continue
        labels = {"namespace": namespace.name, "provider": namespace.provider}
        metrics.NAMESPACE_READY.labels(**labels, requires_gpu=str(namespace.requires_gpu).lower()).set(
            1 if entry["ready"] else 0
        )
        if "served_by" in entry:
            metrics.ROLLBACK_ACTIVE.labels(namespace=namespace.name, target=entry["served_by"]).set(1)
    _refresh_recall_gauges()


def _refresh_recall_gauges() -> None:
    """Latest and previous Recall@10 per namespace and dataset (the rollback trigger's two inputs)."""
    seen: dict[tuple[str, str], int] = {}
    metrics.RECALL_AT_10.clear()
    for run in EvaluationRun.objects.filter(spec="").select_related("namespace").order_by("-created_at", "-id")[:500]:
        key = (run.namespace.name, run.dataset)
        position = seen.get(key, 0)
        recall = run.recall_at_10
        if position >= 2 or recall is None:
            continue
        seen[key] = position + 1
        run_label = "latest" if position == 0 else "baseline"
        metrics.RECALL_AT_10.labels(namespace=key[0], dataset=key[1], run=run_label).set(float(recall))


def health_report() -> HealthReport:
    database = _database_status()
    default_name = settings.MEDKG_DEFAULT_NAMESPACE
    gpu = _gpu_status()
    if not database["ready"]:
        metrics.HEALTH_UP.set(0)
        return HealthReport(False, database, default_name, gpu=gpu)
    namespaces = list(Namespace.objects.filter(enabled=True))
    routes = serving_state().routes
    providers = [_namespace_status(namespace, routes) for namespace in namespaces]
    default = next((entry for entry in providers if entry["namespace"] == default_name), None)
    if default is None:
        providers.append({"namespace": default_name, "ready": False, "detail": "not configured or disabled"})
    healthy = default is not None and bool(default["ready"])
    _refresh_gauges(healthy, namespaces, providers)
    return HealthReport(healthy, database, default_name, providers, gpu)
