"""Embedding: budget checks, the provider call, and the invariants on what comes back."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from core.errors import (
    BackendError,
    BackendUnavailable,
    DimensionMismatch,
    InvalidRequest,
    MedkgError,
    NamespaceDisabled,
    TokenBudgetExceeded,
    TokenizerUnavailable,
    UnsupportedNamespaceKind,
)
from embeddings import metrics
from embeddings.providers.base import TermWeights, Tokenized
from embeddings.providers.registry import embedding_provider_for, sparse_provider_for
from embeddings.tokenization import local_tokenize, token_counts
from namespaces.models import Namespace, NamespaceKind

logger = logging.getLogger("medkg.embeddings")


@dataclass(frozen=True)
class EmbeddingBatch:
    namespace: Namespace
    vectors: np.ndarray  # (n, dim) float32
    token_counts: list[int]  # tokens embedded per text (after truncation)
    truncated: list[int]  # indices of texts cut to the budget
    normalized: bool  # unit vectors: asked for, or the model always normalises

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


NEAR_BUDGET = 0.9  # a text at 90 % of the budget gets a warning from /validate


@dataclass(frozen=True)
class TokenCheck:
    text_index: int
    token_count: int
    exceeds_budget: bool
    budget: int

    @property
    def warning(self) -> str | None:
        """What a client should know before embedding this text: over the budget, or close to it."""
        if self.exceeds_budget:
            return (
                f"{self.token_count} tokens exceed the budget of {self.budget} by {self.token_count - self.budget}; "
                "embedding refuses it unless options.truncate is set."
            )
        if self.token_count >= NEAR_BUDGET * self.budget:
            return f"{self.token_count} tokens are within 10% of the budget of {self.budget}."
        return None


def namespace_check_usable(*, namespace: Namespace, kinds: Sequence[str] = (NamespaceKind.SINGLE_VECTOR,)) -> None:
    if not namespace.enabled:
        raise NamespaceDisabled(f"Namespace {namespace.name} is disabled.", details={"namespace": namespace.name})
    if namespace.kind not in kinds:
        raise UnsupportedNamespaceKind(
            f"Namespace {namespace.name} is {namespace.kind}; this endpoint serves {' and '.join(kinds)} namespaces.",
            details={"namespace": namespace.name, "kind": namespace.kind, "supported": list(kinds)},
        )


INDEXED_KINDS = (NamespaceKind.SINGLE_VECTOR, NamespaceKind.SPARSE)  # kinds with a store behind them


InputType = Literal["document", "query"]
INPUT_TYPES: tuple[InputType, ...] = ("document", "query")


def texts_prompted(*, namespace: Namespace, texts: Sequence[str], input_type: InputType) -> list[str]:
    """The texts as the model sees them: each after the namespace's query or document prompt (if any)."""
    prompt = namespace.prompt_for(input_type)
    return [prompt + text for text in texts] if prompt else list(texts)


def texts_check_budget(
    *, namespace: Namespace, texts: Sequence[str], input_type: InputType = "document", exact: bool = True
) -> list[TokenCheck]:
    """Token count of each text, its prompt included, against the namespace's budget. Raises TokenizerUnavailable.

    Not `exact`: a count over the budget may be a lower bound (enough where over-budget texts are truncated).
    """
    prompted = texts_prompted(namespace=namespace, texts=texts, input_type=input_type)
    return _token_checks(namespace, prompted, exact=exact)


def _token_checks(
    namespace: Namespace, texts: Sequence[str], *, exact: bool = True, backend: bool = True
) -> list[TokenCheck]:
    budget = namespace.max_tokens
    try:
        counts = token_counts(
            tokenizer=namespace.tokenizer or namespace.model_path, texts=texts, at_most=None if exact else budget
        )
    except TokenizerUnavailable:
        if not backend:
            raise
        counts = [len(tokenized.ids) for tokenized in _backend_tokenize(namespace, texts)]
    return [TokenCheck(i, count, count > budget, budget) for i, count in enumerate(counts)]


def _backend_tokenize(namespace: Namespace, texts: Sequence[str]) -> list[Tokenized]:
    """The serving backend's own tokenization (vLLM's /tokenize), where no local tokenizer loads: the counts are
    the model's, whatever tokenizer files the image lacks."""
    provider = embedding_provider_for(namespace) if namespace.kind == NamespaceKind.SINGLE_VECTOR else None
    if provider is None or not provider.tokenizes:
        raise TokenizerUnavailable(
            f"Namespace {namespace.name} has no local tokenizer and its backend serves none.",
            details={"namespace": namespace.name},
        )
    try:
        return provider.tokenize(texts)
    except MedkgError as error:
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code=error.code).inc()
        raise


def texts_tokenize(
    *, namespace: Namespace, texts: Sequence[str], input_type: InputType = "document"
) -> list[Tokenized]:
    """Each text (after its prompt) as the namespace's model tokenizes it: the local tokenizer, else the backend's."""
    prompted = texts_prompted(namespace=namespace, texts=texts, input_type=input_type)
    try:
        return local_tokenize(tokenizer=namespace.tokenizer or namespace.model_path, texts=prompted)
    except TokenizerUnavailable:
        return _backend_tokenize(namespace, prompted)


def texts_token_counts(*, namespace: Namespace, texts: Sequence[str], input_type: InputType = "document") -> list[int]:
    """Tokens per text that embedding `texts` processes and charges, counted as embeddings_compute counts them,
    without embedding (ingestion charges them when it accepts, search its query)."""
    if not texts:
        return []  # the tokenizer fails on an empty batch
    try:
        checks: list[TokenCheck] | None = texts_check_budget(
            namespace=namespace, texts=texts, input_type=input_type, exact=False
        )
    except (TokenizerUnavailable, BackendUnavailable, BackendError):
        checks = None  # nothing to count with now: the work is not refused for it (charged 0)
    return _charged_counts(namespace, checks, len(texts))


def _charged_counts(namespace: Namespace, checks: list[TokenCheck] | None, size: int) -> list[int]:
    """Per text: its tokens cut to the budget (what is embedded); 0 without a local tokenizer."""
    return [min(check.token_count, namespace.max_tokens) for check in checks] if checks else [0] * size


def namespace_check_dimensions(*, namespace: Namespace, dimensions: int | None) -> None:
    """Refuse (400) a `dimensions` that is neither the namespace's dimension nor one of its Matryoshka sizes."""
    if dimensions is None or dimensions in namespace.allowed_dimensions:
        return
    allowed = namespace.allowed_dimensions
    raise InvalidRequest(
        f"Namespace {namespace.name} produces {namespace.dim} dimensions"
        + (f" and answers with {', '.join(map(str, allowed))}" if len(allowed) > 1 else "")
        + f", not {dimensions}.",
        details={"dimensions": namespace.dim, "allowed_dimensions": allowed},
    )


def vectors_shortened(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka: the first `dimensions` values of each vector, renormalized to unit length (float32)."""
    prefix = vectors[:, :dimensions].astype(np.float64)
    norms = np.linalg.norm(prefix, axis=1, keepdims=True)
    return (prefix / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def batch_shortened(batch: EmbeddingBatch, dimensions: int | None) -> EmbeddingBatch:
    """The batch with its vectors cut to `dimensions` (unit vectors); unchanged for None or the full size."""
    if dimensions is None or dimensions == batch.vectors.shape[1]:
        return batch
    return replace(batch, vectors=vectors_shortened(batch.vectors, dimensions), normalized=True)


def embeddings_compute(
    *,
    namespace: Namespace,
    texts: Sequence[str],
    normalize: bool | None = None,
    truncate: bool = False,
    input_type: InputType = "document",
    dimensions: int | None = None,
) -> EmbeddingBatch:
    """Embed `texts` in `namespace`. Over-budget texts are refused (422) unless `truncate`.

    Each text is embedded after the namespace's prompt for `input_type` (counted in the budget). `dimensions`,
    one of the namespace's allowed sizes (400 otherwise), cuts the vectors to their renormalized prefix.
    """
    namespace_check_usable(namespace=namespace)
    namespace_check_dimensions(namespace=namespace, dimensions=dimensions)
    texts = texts_prompted(namespace=namespace, texts=texts, input_type=input_type)
    checks, over = _budget_checked(namespace, texts, truncate)
    provider = embedding_provider_for(namespace)
    normalize = namespace.normalize if normalize is None else normalize
    started = time.perf_counter()
    try:
        vectors = provider.embed(texts, normalize=normalize, truncate=truncate)
    except MedkgError as error:
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code=error.code).inc()
        raise
    metrics.PROVIDER_LATENCY.labels(namespace=namespace.name, provider=namespace.provider).observe(
        time.perf_counter() - started
    )
    _check_vectors(namespace, vectors, len(texts))
    counts = _charged_counts(namespace, checks, len(texts))
    metrics.EMBEDDINGS_PRODUCED.labels(namespace=namespace.name).inc(len(texts))
    metrics.TOKENS_PROCESSED.labels(namespace=namespace.name).inc(sum(counts))
    batch = EmbeddingBatch(
        namespace=namespace,
        vectors=vectors,
        token_counts=counts,
        truncated=over,
        normalized=normalize or provider.always_normalizes(),
    )
    return batch_shortened(batch, dimensions)


def _budget_checked(
    namespace: Namespace, texts: Sequence[str], truncate: bool
) -> tuple[list[TokenCheck] | None, list[int]]:
    """Token checks (None without a local tokenizer) and the over-budget indices; refuses them unless `truncate`."""
    try:
        # Truncated texts need only "over the budget?", not their whole count (the refusal names the counts).
        # A truncating remote backend cuts to the budget itself: no round trip to its tokenizer first.
        checks: list[TokenCheck] | None = _token_checks(namespace, texts, exact=not truncate, backend=not truncate)
    except TokenizerUnavailable:
        checks = None  # remote providers and Lucene's analyzer without a local tokenizer enforce the budget themselves
    over = [check.text_index for check in checks or [] if check.exceeds_budget]
    if over:
        action = "truncated" if truncate else "refused"
        metrics.TOKEN_BUDGET_EXCEEDED.labels(namespace=namespace.name, action=action).inc(len(over))
        if not truncate:
            raise TokenBudgetExceeded(
                f"{len(over)} text(s) exceed the budget of {namespace.max_tokens} tokens; "
                "shorten them or set options.truncate.",
                details={
                    "max_tokens": namespace.max_tokens,
                    "indices": over,
                    "token_counts": [checks[i].token_count for i in over] if checks else [],
                },
            )
    return checks, over


@dataclass(frozen=True)
class SparseBatch:
    namespace: Namespace
    terms: list[TermWeights]  # per text: term -> weight > 0
    token_counts: list[int]
    truncated: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)


def sparse_compute(*, namespace: Namespace, texts: Sequence[str], query: bool, truncate: bool = False) -> SparseBatch:
    """Term weights of `texts` in a sparse namespace (query or document side). Over-budget texts as for dense."""
    namespace_check_usable(namespace=namespace, kinds=(NamespaceKind.SPARSE,))
    checks, over = _budget_checked(namespace, texts, truncate)
    provider = sparse_provider_for(namespace)
    started = time.perf_counter()
    try:
        terms = provider.encode(texts, query=query)
    except MedkgError as error:
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code=error.code).inc()
        raise
    metrics.PROVIDER_LATENCY.labels(namespace=namespace.name, provider=namespace.provider).observe(
        time.perf_counter() - started
    )
    if len(terms) != len(texts):
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code="backend_error").inc()
        raise BackendError(f"Provider returned {len(terms)} term vectors for {len(texts)} texts.")
    counts = _charged_counts(namespace, checks, len(texts))
    metrics.EMBEDDINGS_PRODUCED.labels(namespace=namespace.name).inc(len(texts))
    metrics.TOKENS_PROCESSED.labels(namespace=namespace.name).inc(sum(counts))
    return SparseBatch(namespace=namespace, terms=terms, token_counts=counts, truncated=over)


def _check_vectors(namespace: Namespace, vectors: np.ndarray, expected: int) -> None:
    """Never return (or later store) a vector that does not belong to the namespace's space."""
    if vectors.ndim != 2 or vectors.shape[0] != expected:
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code="backend_error").inc()
        raise BackendError(f"Provider returned {vectors.shape} for {expected} texts.")
    if namespace.dim is not None and vectors.shape[1] != namespace.dim:
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code="dimension_mismatch").inc()
        raise DimensionMismatch(
            f"Provider returned dimension {vectors.shape[1]} for namespace {namespace.name} "
            f"(dimension {namespace.dim}).",
            details={"expected": namespace.dim, "received": int(vectors.shape[1])},
        )
    if not np.all(np.isfinite(vectors)):
        metrics.PROVIDER_ERRORS.labels(namespace=namespace.name, code="backend_error").inc()
        raise BackendError(f"Provider returned non-finite values for namespace {namespace.name}.")
