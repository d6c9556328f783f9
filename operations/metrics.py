"""Operations metrics: health, namespace readiness, retrieval quality, rollbacks, migrations, and GPU gauges.

Health, readiness, recall and rollback gauges are refreshed by GET /health (probed every few seconds by
Kubernetes and Compose), so a scrape never waits on the database or a backend. GPU gauges are read from
NVML (or torch) at scrape time and exist only where a GPU does. A migration's backfill progress is read from the
database at scrape time, so the web and worker processes report the same figures.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from operations.environment import gpu_devices_now

HEALTH_UP = Gauge("embedding_health_up", "1 when GET /health answers 200 (the default namespace can serve), else 0.")
NAMESPACE_READY = Gauge(
    "embedding_namespace_ready",
    "1 when the namespace's provider can serve (for a GPU namespace: its GPU backend answers), else 0.",
    ["namespace", "provider", "requires_gpu"],
)
RECALL_AT_10 = Gauge(
    "embedding_retrieval_recall_at_10",
    "Recall@10 of the latest evaluation run (run=latest) and of the run before it (run=baseline).",
    ["namespace", "dataset", "run"],
)
ROLLBACK_ACTIVE = Gauge(
    "embedding_rollback_active",
    "1 while the namespace's traffic is served by its legacy namespace (target).",
    ["namespace", "target"],
)

MIGRATION_STEPS = Counter(
    "embedding_migration_steps_total",
    "Steps of re-embedding migrations, by step (shadow, backfill, gate, cutover, window, retire) and outcome "
    "(done, refused, failed, paused, aborted).",
    ["step", "outcome"],
)


class MigrationBackfillCollector(Collector):
    """embedding_migration_backfill_documents{source, target, state}: total, copied and indexed documents of every
    unfinished migration's backfill."""

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # no query at registration time

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db import DatabaseError

        from operations.lifecycle import migration_backfill_figures

        family = GaugeMetricFamily(
            "embedding_migration_backfill_documents",
            "A migration's backfill: documents to copy (total), copied into the target, and indexed there.",
            labels=["source", "target", "state"],
        )
        try:
            for migration, figures in migration_backfill_figures():
                for state in ("total", "copied", "indexed"):
                    family.add_metric([migration.source.name, migration.target.name, state], figures[state])
        except (DatabaseError, RuntimeError):  # no database (or none allowed): the family is exported empty
            pass
        yield family


class GpuCollector(Collector):
    """Per-GPU utilisation and memory, only where a GPU exists (nothing at all is exported otherwise)."""

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # registering must not probe the GPU (that would import torch in every manage.py command)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        devices = gpu_devices_now()
        if not devices:
            return
        labels = ["gpu", "name"]
        utilization = GaugeMetricFamily(
            "embedding_gpu_utilization_ratio", "GPU busy time over the last sample period (0..1).", labels=labels
        )
        used = GaugeMetricFamily("embedding_gpu_memory_used_bytes", "GPU memory in use.", labels=labels)
        total = GaugeMetricFamily("embedding_gpu_memory_total_bytes", "GPU memory in total.", labels=labels)
        for device in devices:
            values = [str(device["index"]), device["name"]]
            if device["utilization_ratio"] is not None:
                utilization.add_metric(values, device["utilization_ratio"])
            if device["memory_used_bytes"] is not None:
                used.add_metric(values, device["memory_used_bytes"])
            if device["memory_total_bytes"] is not None:
                total.add_metric(values, device["memory_total_bytes"])
        yield from (family for family in (utilization, used, total) if family.samples)


_collectors: list[Collector] = []


def register_collectors() -> None:
    """Once per process (AppConfig.ready): the GPU gauges and the migrations' backfill progress."""
    if not _collectors:
        _collectors.extend([GpuCollector(), MigrationBackfillCollector()])
        for collector in _collectors:
            REGISTRY.register(collector)
