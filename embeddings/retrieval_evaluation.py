"""Retrieval evaluation on a BEIR-format dataset through the real ingestion and search paths.

The corpus goes into a throwaway tenant with the same services the API uses, the queries go through
`documents_search`, and the result is stored as an `EvaluationRun`: the baseline of the Recall@10 rollback trigger.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction

from core.errors import BackendError, InvalidRequest
from core.logging import log_event
from embeddings.fusion import RRF_K, FusionMethod
from embeddings.ingestion import IncomingDocument, documents_accept, ingestion_is_paused
from embeddings.models import Document, EvaluationRun, IngestionJob, JobStatus
from embeddings.selectors import HybridPart, documents_search, hybrid_search
from embeddings.services import INDEXED_KINDS, namespace_check_usable
from embeddings.stores.registry import index_for
from namespaces.models import Namespace, Tenant

logger = logging.getLogger("medkg.embeddings.retrieval_evaluation")

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class BeirDataset:
    name: str
    path: Path
    corpus: list[IncomingDocument]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]  # query id -> {document id: relevance}


def beir_load(path: Path) -> BeirDataset:
    """corpus.jsonl, queries.jsonl and qrels/test.tsv; only queries with judgements are kept (as BEIR does)."""
    path = Path(path)
    try:
        corpus = [
            IncomingDocument(id=str(row["_id"]), text=f"{row.get('title', '')} {row['text']}".strip(), metadata={})
            for row in _jsonl(path / "corpus.jsonl")
        ]
        qrels: dict[str, dict[str, int]] = {}
        with open(path / "qrels" / "test.tsv", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
        queries = {str(row["_id"]): row["text"] for row in _jsonl(path / "queries.jsonl") if str(row["_id"]) in qrels}
    except (OSError, KeyError, ValueError) as error:
        raise InvalidRequest(
            f"{path} is not a BEIR dataset (corpus.jsonl, queries.jsonl, qrels/test.tsv): {error}"
        ) from error
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise InvalidRequest(f"{len(missing)} judged queries are missing from queries.jsonl, e.g. {missing[:3]}")
    return BeirDataset(name=path.name, path=path, corpus=corpus, queries=queries, qrels=qrels)


def _jsonl(path: Path) -> Iterator[dict[str, str]]:
    with open(path) as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def ndcg_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    gains = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(sorted(relevant.values(), reverse=True)[:k]))
    return gains / ideal if ideal else 0.0


def recall_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int) -> float:
    judged = {doc for doc, grade in relevant.items() if grade > 0}
    return len(judged & set(ranked[:k])) / len(judged) if judged else 0.0


def retrieval_metrics(runs: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean over the judged queries (a query with nothing retrieved counts as 0)."""
    count = len(qrels)
    return {
        "ndcg_at_10": sum(ndcg_at_k(runs.get(q, []), rel, 10) for q, rel in qrels.items()) / count,
        "recall_at_10": sum(recall_at_k(runs.get(q, []), rel, 10) for q, rel in qrels.items()) / count,
        "recall_at_100": sum(recall_at_k(runs.get(q, []), rel, 100) for q, rel in qrels.items()) / count,
    }


@dataclass(frozen=True)
class FusionSpec:
    """Which evaluated namespaces to fuse, with their weights, and how."""

    method: FusionMethod
    weights: dict[str, float]  # namespace name -> weight; only these namespaces are fused
    rrf_k: int = RRF_K

    def describe(self) -> str:
        parts = ", ".join(f"{name}:{weight:g}" for name, weight in self.weights.items())
        return f"rrf(k={self.rrf_k}; {parts})" if self.method == "rrf" else f"minmax({parts})"


@dataclass(frozen=True)
class EvaluationReport:
    runs: list[EvaluationRun]  # one per namespace, each alone
    fused: EvaluationRun | None  # the fusion's run, when one was asked for


def retrieval_evaluate(
    *,
    namespaces: Sequence[Namespace],
    dataset_path: Path,
    fusion: FusionSpec | None = None,
    progress: Progress | None = None,
    keep_tenant: bool = False,
    poll_seconds: float = 0.5,
) -> EvaluationReport:
    """Ingest the corpus into a throwaway tenant in every namespace, run the judged queries, store and return the runs.

    Each namespace is measured alone; with `fusion`, the same per-namespace rankings are also fused (hybrid search)
    and measured, so a hybrid figure and its parts come from one ingestion.
    """
    dataset = beir_load(dataset_path)
    names = [namespace.name for namespace in namespaces]
    if not namespaces or len(set(names)) != len(names):
        raise InvalidRequest("Name each namespace to evaluate once.")
    if fusion is not None and (len(fusion.weights) < 2 or not set(fusion.weights) <= set(names)):
        raise InvalidRequest(f"A fusion needs two or more of the evaluated namespaces {names}.")
    for namespace in namespaces:
        namespace_check_usable(namespace=namespace, kinds=INDEXED_KINDS)
        if ingestion_is_paused(namespace=namespace):
            raise InvalidRequest(f"Ingestion is paused for {namespace.name}; resume it to evaluate.")
    started = time.perf_counter()
    tenant = Tenant.objects.create(slug=f"eval-{secrets.token_hex(4)}", name=f"evaluation on {dataset.name}")
    try:
        for namespace in namespaces:
            if not namespace.allow_all_tenants:
                namespace.allowed_tenants.add(tenant)
        _ingest(namespaces, tenant, dataset, progress, poll_seconds)
        ingested = time.perf_counter() - started
        runs: dict[str, dict[str, list[str]]] = {name: {} for name in names}
        fused_runs: dict[str, list[str]] = {}
        search_seconds = dict.fromkeys(names, 0.0)
        by_name = {namespace.name: namespace for namespace in namespaces}
        fused_names = set(fusion.weights) if fusion is not None else set()
        parts = [
            HybridPart(namespace=by_name[name], weight=weight)
            for name, weight in (fusion.weights if fusion else {}).items()
        ]
        for done, (query_id, text) in enumerate(dataset.queries.items(), start=1):
            if fusion is not None:  # the API's hybrid search: each part's own list (depth 100), then the fusion
                clock = time.perf_counter()
                page = hybrid_search(
                    tenant=tenant, query=text, parts=parts, method=fusion.method, k=100, depth=100, rrf_k=fusion.rrf_k
                )
                share = (time.perf_counter() - clock) / len(parts)
                fused_runs[query_id] = [hit.id for hit in page.hits]
                for name, hits in page.rankings.items():
                    search_seconds[name] += share
                    runs[name][query_id] = [hit.id for hit in hits]
            for namespace in namespaces:
                if namespace.name in fused_names:
                    continue
                clock = time.perf_counter()
                hits = documents_search(namespace=namespace, tenant=tenant, query=text, k=100)
                search_seconds[namespace.name] += time.perf_counter() - clock
                runs[namespace.name][query_id] = [hit.id for hit in hits]
            if progress:
                progress("search", done, len(dataset.queries))
        common = {
            "dataset": dataset.name,
            "dataset_path": str(dataset.path),
            "queries": len(dataset.queries),
            "documents": len(dataset.corpus),
        }
        report_runs = [
            EvaluationRun.objects.create(
                namespace=namespace,
                model_version=namespace.model_version,
                metrics=_rounded(retrieval_metrics(runs[namespace.name], dataset.qrels)),
                duration_seconds=round(ingested + search_seconds[namespace.name], 3),
                **common,
            )
            for namespace in namespaces
        ]
        fused_run = None
        if fusion is not None:
            first = next(namespace for namespace in namespaces if namespace.name in fusion.weights)
            fused_run = EvaluationRun.objects.create(
                namespace=first,
                spec=fusion.describe(),
                model_version=" + ".join(n.model_version for n in namespaces if n.name in fusion.weights),
                metrics=_rounded(retrieval_metrics(fused_runs, dataset.qrels)),
                duration_seconds=round(time.perf_counter() - started, 3),
                **common,
            )
    finally:
        if not keep_tenant:
            _discard_tenant(namespaces, tenant)
    for run in [*report_runs, *([fused_run] if fused_run else [])]:
        log_event(
            logger,
            "retrieval_evaluated",
            namespace=run.namespace.name,
            spec=run.spec,
            dataset=run.dataset,
            **run.metrics,
        )
    return EvaluationReport(runs=report_runs, fused=fused_run)


def _rounded(metrics: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 6) for name, value in metrics.items()}


def _ingest(
    namespaces: Sequence[Namespace],
    tenant: Tenant,
    dataset: BeirDataset,
    progress: Progress | None,
    poll_seconds: float,
) -> None:
    step = settings.MEDKG_MAX_DOCUMENTS_PER_REQUEST  # the same request size the API accepts
    jobs = []
    for namespace in namespaces:
        for start in range(0, len(dataset.corpus), step):
            with transaction.atomic():  # each chunk is dispatched on commit, as for an API request
                jobs.append(
                    documents_accept(namespace=namespace, tenant=tenant, documents=dataset.corpus[start : start + step])
                )
    total = len(dataset.corpus) * len(namespaces)
    while True:
        states = list(
            IngestionJob.objects.filter(pk__in=[job.pk for job in jobs]).values("status", "processed", "error")
        )
        failed = [state["error"] for state in states if state["status"] == JobStatus.FAILED]
        if failed:
            raise BackendError(f"Ingestion failed during the evaluation: {failed[0]}")
        if progress:
            progress("ingest", sum(state["processed"] for state in states), total)
        if all(state["status"] == JobStatus.SUCCEEDED for state in states):
            return
        time.sleep(poll_seconds)


def _discard_tenant(namespaces: Sequence[Namespace], tenant: Tenant) -> None:
    for namespace in namespaces:
        index_for(namespace).drop(tenant=tenant.slug)
    Document.objects.filter(tenant=tenant).delete()
    IngestionJob.objects.filter(tenant=tenant).delete()
    tenant.delete()
