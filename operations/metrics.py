"""Operations metrics: health, namespace readiness, retrieval quality, rollbacks, and GPU gauges.

Health, readiness, recall and rollback gauges are refreshed by GET /health (probed every few seconds by
Kubernetes and Compose), so a scrape never waits on the database or a backend. GPU gauges are read from
NVML (or torch) at scrape time and exist only where a GPU does.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Gauge
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


_gpu_collector: GpuCollector | None = None


def register_gpu_collector() -> None:
    """Once per process (AppConfig.ready)."""
    global _gpu_collector
    if _gpu_collector is None:
        _gpu_collector = GpuCollector()
        REGISTRY.register(_gpu_collector)
