"""Embedding metrics. Labels: namespace (a bounded, operator-defined set), endpoint, outcome."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from core.errors import MedkgError

REQUESTS = Counter(
    "embedding_requests_total",
    "Embedding API requests by namespace, endpoint and outcome (ok or the error code).",
    ["namespace", "endpoint", "outcome"],
)
REQUEST_LATENCY = Histogram(
    "embedding_request_duration_seconds",
    "Embedding API request latency after authentication, by namespace and endpoint.",
    ["namespace", "endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROVIDER_LATENCY = Histogram(
    "embedding_provider_duration_seconds",
    "Time spent in the provider's embed call, by namespace and provider.",
    ["namespace", "provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EMBEDDINGS_PRODUCED = Counter(
    "embedding_vectors_produced_total", "Embedding vectors returned to clients, by namespace.", ["namespace"]
)
TOKENS_PROCESSED = Counter("embedding_tokens_processed_total", "Tokens embedded, by namespace.", ["namespace"])
TOKEN_BUDGET_EXCEEDED = Counter(
    "embedding_token_budget_exceeded_total",
    "Texts over their namespace's token budget (refused or truncated), by namespace and action.",
    ["namespace", "action"],
)
PROVIDER_ERRORS = Counter(
    "embedding_provider_errors_total", "Provider failures by namespace and error code.", ["namespace", "code"]
)


@dataclass
class Observation:
    outcome: str = "ok"


@contextmanager
def request_observed(*, namespace: str, endpoint: str) -> Iterator[Observation]:
    """Count the request and time it; the outcome is the error code when one escapes."""
    observation = Observation()
    started = time.perf_counter()
    try:
        yield observation
    except MedkgError as error:
        observation.outcome = error.code
        raise
    except Exception:
        observation.outcome = "internal_error"
        raise
    finally:
        REQUEST_LATENCY.labels(namespace=namespace, endpoint=endpoint).observe(time.perf_counter() - started)
        REQUESTS.labels(namespace=namespace, endpoint=endpoint, outcome=observation.outcome).inc()


# --- vector stores and ingestion ---
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.08, 0.1, 0.2, 0.5, 1, 2.5)
VECTOR_STORE_UPSERTED = Counter(
    "embedding_vector_store_upserted",  # exported with _total: the runbook's embedding.vector_store.upserted
    "Vectors written to a vector store, by namespace and store.",
    ["namespace", "store"],
)
VECTOR_STORE_DELETED = Counter(
    "embedding_vector_store_deleted",
    "Vectors removed from a vector store, by namespace and store.",
    ["namespace", "store"],
)
VECTOR_STORE_SEARCH_LATENCY = Histogram(
    "embedding_vector_store_search_duration_seconds",
    "Vector-store search latency (the store call only, no embedding), by namespace and store.",
    ["namespace", "store"],
    buckets=STORE_BUCKETS,
)
SEARCH_REQUEST_LATENCY = Histogram(
    "embedding_search_duration_seconds",
    "Search latency including the query embedding and the database lookups, by namespace and store.",
    ["namespace", "store"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
INGESTION_DOCUMENTS = Counter(
    "embedding_ingestion_documents_total",
    "Documents handled by ingestion jobs, by namespace and outcome (indexed, unchanged, deleted, failed).",
    ["namespace", "outcome"],
)
INGESTION_JOBS = Counter(
    "embedding_ingestion_jobs_total",
    "Ingestion jobs finished, by namespace, kind and status.",
    ["namespace", "kind", "status"],
)


# --- segmented embedded stores (FAISS, impact): merges and the write stalls that bound unmerged segments ---
INDEX_MERGES = Counter(
    "embedding_index_merges_total", "Segment merges committed, by namespace and store.", ["namespace", "store"]
)
INDEX_MERGE_SECONDS = Histogram(
    "embedding_index_merge_seconds",
    "Duration of one segment merge (build outside the write lock + commit), by namespace and store.",
    ["namespace", "store"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1200),
)
INDEX_WRITE_STALLS = Counter(
    "embedding_index_write_stalls_total",
    "Writes that merged before returning because merges fell behind (too many unmerged segments).",
    ["namespace", "store"],
)


STANDBY_DOCUMENTS = Counter(
    "embedding_standby_documents_total",
    "Documents written to a namespace as a standby mirror or a migration backfill (re-embedded from the stored "
    "text), by namespace written, purpose (standby, backfill) and operation (indexed, deleted).",
    ["namespace", "purpose", "operation"],
)


class StoreStateCollector:
    """Gauges read at scrape time from the database, so every process (web, worker) reports the same numbers."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db import DatabaseError
        from django.db.models import Count, F, Q

        from embeddings.models import Document

        queue = GaugeMetricFamily(
            "embedding_ingestion_queue_depth",
            "Documents accepted but not yet indexed (or not yet removed), by namespace.",
            labels=["namespace"],
        )
        vectors = GaugeMetricFamily(
            "embedding_vector_store_vectors",
            "Live vectors indexed, by namespace and store.",
            labels=["namespace", "store"],
        )
        lag = GaugeMetricFamily(
            "embedding_standby_lag_documents",
            "Documents a standby has accepted from its primary but not indexed yet, by primary and standby.",
            labels=["primary", "standby"],
        )
        try:
            waiting: dict[str, int] = {}
            rows = Document.objects.values("namespace__name", "namespace__parameters", "namespace__kind").annotate(
                waiting=Count("pk", filter=~Q(indexed_version=F("version")) | Q(deleted_at__isnull=False)),
                indexed=Count("pk", filter=Q(indexed_version=F("version"), deleted_at__isnull=True)),
            )
            for row in rows:
                default = (
                    settings.MEDKG_SPARSE_STORE if row["namespace__kind"] == "sparse" else settings.MEDKG_VECTOR_STORE
                )
                store = (row["namespace__parameters"] or {}).get("store") or default
                queue.add_metric([row["namespace__name"]], row["waiting"])
                waiting[row["namespace__name"]] = row["waiting"]
                vectors.add_metric([row["namespace__name"], store], row["indexed"])
            from namespaces.models import NamespaceStandby

            for primary, standby in NamespaceStandby.objects.values_list("primary__name", "standby__name"):
                lag.add_metric([primary, standby], waiting.get(standby, 0))
        except (DatabaseError, RuntimeError):  # no database (or none allowed): export the families empty
            pass
        yield queue
        yield vectors
        yield lag

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # no scrape at registration time


# --- dynamic batching (label: the model's short name, one per loaded model) ---
BATCH_SIZE = Histogram(
    "embedding_batch_texts",
    "Texts per batched forward pass of an in-process model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_REQUESTS = Histogram(
    "embedding_batch_requests",
    "Requests merged into one forward pass of an in-process model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_FAILURES = Counter(
    "embedding_batch_failures_total", "Batched forward passes that failed (each fails only its requests).", ["model"]
)
BATCH_DEADLINE_MISSED = Counter(
    "embedding_batch_deadline_missed_total",
    "Requests that waited for a forward pass until their deadline (answered 503).",
    ["model"],
)

MODEL_PASS_SECONDS = Histogram(
    "embedding_model_pass_seconds",
    "Duration of one scheduled forward pass of an in-process model (bounded by MEDKG_SCHEDULER_MAX_PASS_TOKENS).",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
SCHEDULER_QUEUED_TEXTS = Gauge(
    "embedding_scheduler_queued_texts",
    "Texts waiting for a pass of an in-process model, by work class (interactive, bulk).",
    ["model", "work_class"],
)
SCHEDULER_TOKENS = Counter(
    "embedding_scheduler_tokens_total",
    "Estimated tokens served by an in-process model's passes, by work class (no tenant label: tenant ids stay off "
    "/metrics).",
    ["model", "work_class"],
)


# --- automatic failover ---
FAILOVER = Counter(
    "embedding_failover_total",
    "Requests of a namespace whose provider was unavailable, by outcome: served (by the fallback), "
    "refused (no usable fallback: other dimension, missing) or fallback_failed.",
    ["namespace", "outcome"],
)
CIRCUIT_STATE = Gauge(
    "embedding_circuit_state",
    "Circuit breaker of a namespace's provider: 0 closed, 1 open, 2 half-open.",
    ["namespace"],
)
CIRCUIT_TRANSITIONS = Counter(
    "embedding_circuit_transitions_total",
    "Circuit breaker state changes, by namespace and new state.",
    ["namespace", "state"],
)
