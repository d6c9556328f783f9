"""Evaluate the rollback triggers: from Prometheus (PROMETHEUS_URL) or from the running app's own /metrics.

Prometheus evaluates each trigger's generated PromQL. Without it, the app's /metrics is scraped twice,
`interval` seconds apart (GET /health before each scrape refreshes the readiness gauges), and the same
quantities are computed from the two scrapes the way PromQL's rate() and histogram_quantile() would.
Recall@10 comes from the EvaluationRun records (the gauge's own source) in both cases.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.errors import MedkgError
from embeddings.models import EvaluationRun
from operations.errors import MetricsUnavailable
from operations.kubectl import RollbackKubectl
from operations.models import NamespaceRoute
from operations.services import incident_attach_rollback, incident_open, rollback_start
from operations.triggers import RollbackPair, RollbackTriggers, Selector, Trigger

Sample = tuple[str, dict[str, str], float]


@dataclass(frozen=True)
class TriggerResult:
    trigger: str
    namespace: str
    value: float | None
    threshold: float
    comparison: str
    fired: bool
    severity: str
    source: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        value = None if self.value is None or math.isnan(self.value) else self.value
        return {
            "trigger": self.trigger,
            "namespace": self.namespace,
            "value": value if value is None or math.isfinite(value) else str(value),
            "threshold": self.threshold,
            "comparison": self.comparison,
            "fired": self.fired,
            "severity": self.severity,
            "source": self.source,
            "detail": self.detail,
        }


class TriggerSource(Protocol):
    name: str

    def values(self, trigger: Trigger, window: str) -> dict[str, float]:
        """The trigger's value per namespace."""


# --- Prometheus -----------------------------------------------------------------------------


class PrometheusSource:
    name = "prometheus"

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.client = httpx.Client(timeout=timeout)

    def values(self, trigger: Trigger, window: str) -> dict[str, float]:
        query = trigger.value_promql(window)
        try:
            response = self.client.get(f"{self.url}/api/v1/query", params={"query": query})
            body = response.json()
        except (httpx.HTTPError, ValueError) as error:
            raise MetricsUnavailable(f"Prometheus at {self.url} cannot be queried: {error}") from error
        if response.status_code != 200 or body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus refused {query!r}: {body.get('error', response.status_code)}")
        return {
            str(item["metric"].get("namespace", "")): float(item["value"][1])
            for item in body["data"]["result"]
            if body["data"]["resultType"] == "vector"
        }


# --- the app's own /metrics -----------------------------------------------------------------


def parse_samples(text: str) -> list[Sample]:
    return [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def _increase(before: float | None, after: float) -> float:
    """rate()'s view of a counter: a drop means the process restarted and counted from zero."""
    if before is None or after < before:
        return after
    return after - before


def _increases(first: list[Sample], second: list[Sample], name: str, selector: Selector) -> dict[tuple, float]:
    """Counter increase per label set (the label set as sorted items) for samples named `name`."""
    before = {tuple(sorted(labels.items())): value for sample_name, labels, value in first if sample_name == name}
    return {
        key: _increase(before.get(key), value)
        for sample_name, labels, value in second
        if sample_name == name and selector.matches(labels)
        for key in [tuple(sorted(labels.items()))]
    }


def _sum_by_namespace(increases: dict[tuple, float]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for key, value in increases.items():
        totals[dict(key).get("namespace", "")] += value
    return dict(totals)


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float:
    """Prometheus's histogram_quantile over cumulative bucket counts {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf:
        return math.nan
    total = buckets[math.inf]
    if total <= 0:
        return math.nan
    rank = quantile * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return previous_bound  # the highest finite upper bound, as Prometheus answers
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return previous_bound


def local_values(trigger: Trigger, first: list[Sample], second: list[Sample]) -> dict[str, float]:
    """The trigger's value per namespace from two scrapes of the app (ratio, latency, availability)."""
    if trigger.kind == "ratio":
        assert trigger.numerator is not None
        assert trigger.denominator is not None
        numerator = _sum_by_namespace(_increases(first, second, trigger.numerator.metric, trigger.numerator))
        denominator = _sum_by_namespace(_increases(first, second, trigger.denominator.metric, trigger.denominator))
        # PromQL's `/` matches series: a namespace needs both sides, as in Prometheus.
        return {
            namespace: _divide(numerator[namespace], total)
            for namespace, total in denominator.items()
            if namespace in numerator
        }
    if trigger.kind == "latency_quantile":
        assert trigger.quantile is not None
        per_namespace: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for key, value in _increases(first, second, f"{trigger.metric}_bucket", trigger.selector).items():
            labels = dict(key)
            per_namespace[labels.get("namespace", "")][float(labels["le"])] += value
        return {namespace: histogram_quantile(trigger.quantile, dict(b)) for namespace, b in per_namespace.items()}
    if trigger.kind == "availability":
        series: dict[tuple, list[float]] = defaultdict(list)
        for scrape in (first, second):
            for name, labels, value in scrape:
                if name == trigger.metric and trigger.selector.matches(labels):
                    series[tuple(sorted(labels.items()))].append(value)
        availability: dict[str, float] = {}
        for key, values in series.items():
            namespace = dict(key).get("namespace", "")
            average = sum(values) / len(values)
            availability[namespace] = min(availability.get(namespace, average), average)
        return availability
    raise ValueError(f"{trigger.kind} is not computed from the app's metrics")


def _divide(numerator: float, denominator: float) -> float:
    if denominator == 0:
        return math.nan if numerator == 0 else math.inf
    return numerator / denominator


class AppMetricsSource:
    name = "app_metrics"

    def __init__(self, base_url: str, *, interval: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.interval = interval
        self.client = httpx.Client(timeout=10.0)
        self.sleep = sleep
        self._scrapes: tuple[list[Sample], list[Sample]] | None = None

    def scrape(self) -> list[Sample]:
        try:
            self.client.get(f"{self.base_url}/health")  # refreshes the readiness gauges; 503 is an answer too
            response = self.client.get(f"{self.base_url}/metrics")
        except httpx.HTTPError as error:
            raise MetricsUnavailable(f"{self.base_url} cannot be reached: {type(error).__name__}: {error}") from error
        if response.status_code != 200:
            raise MetricsUnavailable(f"{self.base_url}/metrics answered {response.status_code}")
        return parse_samples(response.text)

    def scrapes(self) -> tuple[list[Sample], list[Sample]]:
        if self._scrapes is None:
            first = self.scrape()
            self.sleep(self.interval)
            self._scrapes = (first, self.scrape())
        return self._scrapes

    def values(self, trigger: Trigger, window: str) -> dict[str, float]:
        return local_values(trigger, *self.scrapes())


# --- Recall@10 from the evaluation records --------------------------------------------------


def recall_drops() -> dict[str, float]:
    """Relative Recall@10 drop of the latest run below the run before it, per namespace (worst dataset)."""
    runs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for run in EvaluationRun.objects.filter(spec="").select_related("namespace").order_by("-created_at", "-id")[:500]:
        recall = run.recall_at_10
        key = (run.namespace.name, run.dataset)
        if recall is not None and len(runs[key]) < 2:
            runs[key].append(float(recall))
    drops: dict[str, float] = {}
    for (namespace, _), (latest, *rest) in runs.items():
        if rest and rest[0] > 0:
            drops[namespace] = max(drops.get(namespace, -math.inf), (rest[0] - latest) / rest[0])
    return drops


# --- evaluation -----------------------------------------------------------------------------


def _result(trigger: Trigger, source: str, namespace: str, value: float | None, detail: str = "") -> TriggerResult:
    return TriggerResult(
        trigger=trigger.name,
        namespace=namespace,
        value=value,
        threshold=trigger.threshold,
        comparison=trigger.comparison,
        fired=value is not None and trigger.fires(value),
        severity=trigger.severity,
        source=source,
        detail=detail,
    )


def triggers_evaluate(*, config: RollbackTriggers, source: TriggerSource) -> list[TriggerResult]:
    results: list[TriggerResult] = []
    for trigger in config.triggers:
        if trigger.kind == "recall_drop":
            values, source_name = recall_drops(), "evaluation_runs"
        else:
            values, source_name = source.values(trigger, config.window), source.name
        if not values:
            results.append(_result(trigger, source_name, "", None, "no data"))
        results.extend(_result(trigger, source_name, namespace, value) for namespace, value in sorted(values.items()))
    return results


@dataclass
class TriggerAction:
    namespace: str
    triggers: list[str]
    incident_id: int | None = None
    rollback_event_id: int | None = None
    error: str = ""


_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def triggers_act(
    *,
    results: list[TriggerResult],
    config: RollbackTriggers,
    initiated_by: str,
    kubectl_for: Callable[[RollbackPair], RollbackKubectl | None],
    echo: Callable[[str], None],
    service_url: str | None = None,
) -> list[TriggerAction]:
    """For each namespace with a fired trigger and a configured legacy: open an incident, roll back."""
    fired: dict[str, list[TriggerResult]] = defaultdict(list)
    for result in results:
        if result.fired and result.namespace:
            fired[result.namespace].append(result)
    actions: list[TriggerAction] = []
    for namespace, hits in sorted(fired.items()):
        hits.sort(key=lambda hit: _SEVERITY_ORDER[hit.severity])
        action = TriggerAction(namespace=namespace, triggers=[hit.trigger for hit in hits])
        actions.append(action)
        pair = config.rollback_for(namespace)
        if pair is None:
            action.error = "no rollback configured for this namespace"
            echo(f"{namespace}: {', '.join(action.triggers)} fired; {action.error}")
            continue
        if NamespaceRoute.objects.filter(source__name=namespace).exists():
            action.error = "already rolled back"
            echo(f"{namespace}: {', '.join(action.triggers)} fired; {action.error}")
            continue
        first = hits[0]
        incident = incident_open(
            trigger=first.trigger,
            severity=first.severity,
            namespace=namespace,
            title=f"{namespace}: rollback trigger {first.trigger} fired",
            measurements={hit.trigger: _measurement(hit) for hit in hits},
        )
        action.incident_id = incident.pk
        echo(f"incident #{incident.pk} opened for {namespace} ({', '.join(action.triggers)})")
        try:
            event = rollback_start(
                namespace=namespace,
                target=pair.to,
                reason=f"rollback triggers fired: {', '.join(action.triggers)} (incident #{incident.pk})",
                initiated_by=initiated_by,
                kubectl=kubectl_for(pair),
                trigger=first.trigger,
                service_url=service_url,
                echo=echo,
            )
        except MedkgError as error:
            action.error = error.message
            echo(f"rollback of {namespace} failed: {error.message}")
            continue
        assert event is not None
        incident_attach_rollback(incident=incident, event=event)
        action.rollback_event_id = event.pk
    return actions


def _measurement(result: TriggerResult) -> str:
    value = "no data" if result.value is None else f"{result.value:.4g}"
    return f"{value} {result.comparison} {result.threshold:g}"
