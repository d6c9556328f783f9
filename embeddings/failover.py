"""Automatic failover: while a namespace's provider is unavailable, its `fallback` namespace answers.

Per request and per process, unlike the operator's rollback (operations/): a circuit breaker per namespace
counts consecutive BackendUnavailable failures (vLLM down, GPU lost). A failed request is answered by the
fallback at once; after MEDKG_BREAKER_FAILURE_THRESHOLD failures the breaker opens and requests go straight
to the fallback. After MEDKG_BREAKER_RESET_SECONDS one request probes the primary (half-open): success closes
the breaker, failure opens it again. Only a fallback of the same kind and dimension is used: otherwise the
answer is the primary's 503 naming the fallback, never a silently different vector space.

Only the embedding endpoints fail over: documents and search stay with their namespace's own index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings

from core.errors import BackendUnavailable, MedkgError
from core.logging import log_event
from embeddings import metrics
from embeddings.services import (
    EmbeddingBatch,
    InputType,
    batch_shortened,
    embeddings_compute,
    namespace_check_dimensions,
)
from namespaces.models import Namespace

logger = logging.getLogger("medkg.embeddings")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_STATE_VALUES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


@dataclass
class CircuitBreaker:
    namespace: str
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False  # half-open: one request is trying the primary
    last_error: BackendUnavailable | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def allow_primary(self) -> bool:
        """Whether this request may try the primary (in half-open state: whether it is the probe)."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and time.monotonic() - self.opened_at >= settings.MEDKG_BREAKER_RESET_SECONDS:
                self._move(HALF_OPEN)
            if self.state == HALF_OPEN and not self.probing:
                self.probing = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self.failures = 0
            self.probing = False
            if self.state != CLOSED:
                self._move(CLOSED)

    def record_failure(self, error: BackendUnavailable) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = error
            self.probing = False
            if self.state == HALF_OPEN or self.failures >= settings.MEDKG_BREAKER_FAILURE_THRESHOLD:
                self.opened_at = time.monotonic()
                if self.state != OPEN:
                    self._move(OPEN)

    def release_probe(self) -> None:
        """The probe ended without telling whether the provider is up (e.g. the request was invalid)."""
        with self._lock:
            self.probing = False

    def _move(self, state: str) -> None:
        log_event(logger, "circuit_breaker_state", namespace=self.namespace, previous=self.state, state=state)
        self.state = state
        metrics.CIRCUIT_STATE.labels(namespace=self.namespace).set(_STATE_VALUES[state])
        metrics.CIRCUIT_TRANSITIONS.labels(namespace=self.namespace, state=state).inc()


_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(namespace: str) -> CircuitBreaker:
    with _breakers_lock:
        breaker = _breakers.get(namespace)
        if breaker is None:
            breaker = _breakers[namespace] = CircuitBreaker(namespace)
        return breaker


def breakers_reset() -> None:
    """Forget every breaker (tests)."""
    with _breakers_lock:
        _breakers.clear()


@dataclass(frozen=True)
class _Request:
    texts: Sequence[str]
    normalize: bool | None
    truncate: bool
    input_type: InputType
    dimensions: int | None


def embeddings_compute_failover(
    *,
    namespace: Namespace,
    texts: Sequence[str],
    normalize: bool | None = None,
    truncate: bool = False,
    input_type: InputType = "document",
    dimensions: int | None = None,
) -> EmbeddingBatch:
    """embeddings_compute on `namespace`, or on its fallback while its provider is unavailable.

    The batch's namespace is the one that served: the response names it (X-Medkg-Served-By). `dimensions` is
    checked against the requested namespace's sizes; a fallback (same dimension) embeds with its own prompts.
    """
    namespace_check_dimensions(namespace=namespace, dimensions=dimensions)
    request = _Request(texts, normalize, truncate, input_type, dimensions)
    if not namespace.fallback:
        return _compute(namespace, request)
    breaker = breaker_for(namespace.name)
    if not breaker.allow_primary():
        fallback = _fallback_of(namespace)
        if _usable(namespace, fallback):
            assert fallback is not None
            return _fallback_compute(namespace, fallback, request)
        # Without a usable fallback the primary's own answer is all there is: keep asking it.
    try:
        batch = _compute(namespace, request)
    except BackendUnavailable as error:
        breaker.record_failure(error)
        fallback = _fallback_of(namespace)
        if not _usable(namespace, fallback):
            metrics.FAILOVER.labels(namespace=namespace.name, outcome="refused").inc()
            raise _fallback_refusal(namespace, fallback, error) from error
        assert fallback is not None
        return _fallback_compute(namespace, fallback, request)
    except BaseException:
        breaker.release_probe()
        raise
    breaker.record_success()
    return batch


def _compute(namespace: Namespace, request: _Request) -> EmbeddingBatch:
    """The full vectors in `namespace`, cut to the requested size (allowed by the requested namespace)."""
    batch = embeddings_compute(
        namespace=namespace,
        texts=request.texts,
        normalize=request.normalize,
        truncate=request.truncate,
        input_type=request.input_type,
    )
    return batch_shortened(batch, request.dimensions)


def _fallback_of(namespace: Namespace) -> Namespace | None:
    return Namespace.objects.filter(name=namespace.fallback, enabled=True).first()


def _usable(namespace: Namespace, fallback: Namespace | None) -> bool:
    """Only a namespace of the same vector space shape may answer for another."""
    return fallback is not None and fallback.kind == namespace.kind and fallback.dim == namespace.dim


def _fallback_refusal(namespace: Namespace, fallback: Namespace | None, error: BackendUnavailable) -> MedkgError:
    reason = (
        "is missing or disabled"
        if fallback is None
        else f"has dimension {fallback.dim}, not {namespace.dim}: it cannot answer for it"
    )
    return type(error)(
        f"{error.message} Its fallback {namespace.fallback} {reason}.",
        details={**error.details, "fallback": namespace.fallback, "fallback_dim": fallback.dim if fallback else None},
    )


def _fallback_compute(namespace: Namespace, fallback: Namespace, request: _Request) -> EmbeddingBatch:
    try:
        batch = _compute(fallback, request)
    except BackendUnavailable:
        metrics.FAILOVER.labels(namespace=namespace.name, outcome="fallback_failed").inc()
        raise
    metrics.FAILOVER.labels(namespace=namespace.name, outcome="served").inc()
    return batch
