"""Reranking: a reranker namespace's cross-encoder scores (query, document) pairs and the documents are ordered."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import numpy as np

from core.errors import BackendError, MedkgError
from embeddings import metrics
from embeddings.providers.registry import rerank_provider_for
from embeddings.selectors import DocumentHit, HybridHit, documents_texts
from embeddings.services import namespace_check_usable, texts_token_counts
from namespaces.models import Namespace, NamespaceKind, Tenant

Hit = TypeVar("Hit", DocumentHit, HybridHit)


@dataclass(frozen=True)
class RankedDocument:
    index: int  # position in the request's documents
    relevance_score: float


@dataclass(frozen=True)
class Reranking:
    namespace: Namespace
    results: list[RankedDocument]  # best first, at most top_n
    token_count: int  # tokens the model read: each pair's, cut to the budget (0 without a local tokenizer)


def documents_rerank(
    *, namespace: Namespace, query: str, documents: Sequence[str], top_n: int | None = None
) -> Reranking:
    """The `top_n` documents (all when None) most relevant to `query`, best first; ties keep the input order.

    Every pair is scored (a cross-encoder has no index to narrow them) and cut to the namespace's max_tokens.
    """
    namespace_check_usable(namespace=namespace, kinds=(NamespaceKind.RERANKER,))
    provider = rerank_provider_for(namespace)
    started = time.perf_counter()
    try:
        scores = provider.score(query, documents)
    except MedkgError as error:
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code=error.code).inc()
        raise
    metrics.PROVIDER_LATENCY.labels(namespace=namespace.name, provider=namespace.provider).observe(
        time.perf_counter() - started
    )
    if scores.shape != (len(documents),) or not np.all(np.isfinite(scores)):
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code="backend_error").inc()
        raise BackendError(f"Provider returned scores of shape {scores.shape} for {len(documents)} documents.")
    order = sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))[:top_n]
    tokens = pairs_token_count(namespace=namespace, query=query, documents=documents)
    metrics.TOKENS_PROCESSED.labels(namespace=namespace.name).inc(tokens)
    return Reranking(
        namespace=namespace,
        results=[RankedDocument(index=i, relevance_score=float(scores[i])) for i in order],
        token_count=tokens,
    )


def pairs_token_count(*, namespace: Namespace, query: str, documents: Sequence[str]) -> int:
    """Tokens of every (query, document) pair, each cut to the budget: the model reads the query once per document,
    so that is what a tenant's quota is charged (0 without a local tokenizer, as for the other endpoints)."""
    query_tokens, *document_tokens = texts_token_counts(namespace=namespace, texts=[query, *documents])
    return sum(min(query_tokens + tokens, namespace.max_tokens) for tokens in document_tokens)


@dataclass(frozen=True)
class RerankedHits(Generic[Hit]):
    hits: list[Hit]  # best first by the reranker, each with its rerank_score
    token_count: int  # as Reranking.token_count: what the tenant's quota is charged


def hits_rerank(
    *,
    namespace: Namespace,
    tenant: Tenant,
    query: str,
    hits: Sequence[Hit],
    searched: Sequence[Namespace],
    top_n: int | None = None,
) -> RerankedHits[Hit]:
    """A search's candidates reordered by a reranker namespace, which reads each one's stored text (taken from the
    first of the `searched` namespaces that holds its id); a candidate deleted since the search is left out."""
    namespace_check_usable(namespace=namespace, kinds=(NamespaceKind.RERANKER,))  # even when nothing was found
    texts = documents_texts(tenant=tenant, namespaces=searched, ids=[hit.id for hit in hits])
    candidates = [hit for hit in hits if hit.id in texts]
    if not candidates:
        return RerankedHits(hits=[], token_count=0)
    reranking = documents_rerank(
        namespace=namespace, query=query, documents=[texts[hit.id] for hit in candidates], top_n=top_n
    )
    reranked = [replace(candidates[result.index], rerank_score=result.relevance_score) for result in reranking.results]
    return RerankedHits(hits=reranked, token_count=reranking.token_count)
