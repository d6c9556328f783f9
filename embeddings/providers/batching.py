"""Cross-request dynamic batching for in-process models.

Concurrent requests for the same model are queued; one worker thread per model takes what is queued
(up to `max_batch_size` texts), encodes it as one batch and hands each request its own rows. The provider
tokenizes the whole batch in one call of its fast tokenizer and runs it as passes sorted by token count
(embeddings/providers/sorted_encode.py), so a merged batch pads less than separate requests would. A request waits
in the queue at most until its deadline; a failed batch fails only the requests in it.

The wait for more requests (`max_wait_time_ms`) is only paid when the previous pass held several requests:
a lone client is never delayed, while under load the queue fills during the pass anyway.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from django.conf import settings

from core.errors import BackendError, BackendUnavailable, MedkgError
from core.logging import log_event
from embeddings import metrics

logger = logging.getLogger("medkg.embeddings")

EncodeFunction = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class BatchingLimits:
    max_batch_size: int  # texts merged into one batch (a larger single request runs alone)
    max_wait_time_ms: float


@dataclass
class _Pending:
    texts: list[str]
    deadline: float  # time.monotonic()
    future: Future[np.ndarray] = field(default_factory=Future)


@lru_cache(maxsize=1)
def default_limits() -> BatchingLimits:
    """config/embedding/vllm.yaml's batching section: the same knobs for the in-process model."""
    from namespaces.config import load_vllm_config

    batching = load_vllm_config(settings.MEDKG_CONFIG_DIR / "embedding" / "vllm.yaml").batching
    return BatchingLimits(max_batch_size=batching.max_batch_size, max_wait_time_ms=batching.max_wait_time_ms)


class DynamicBatcher:
    """Merges concurrent `submit` calls into passes of `encode` (which must be thread-safe on its own)."""

    def __init__(self, *, name: str, encode: EncodeFunction, limits: BatchingLimits) -> None:
        self.name = name
        self.limits = limits
        self._encode = encode
        self._queue: deque[_Pending] = deque()
        self._ready = threading.Condition()
        self._last_requests = 1
        self._worker = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._worker.start()

    def submit(self, texts: Sequence[str], *, timeout: float) -> np.ndarray:
        """Vectors of `texts` from a shared pass; BackendUnavailable when no pass took them within `timeout` s."""
        pending = _Pending(texts=list(texts), deadline=time.monotonic() + timeout)
        with self._ready:
            self._queue.append(pending)
            self._ready.notify()
        try:
            return pending.future.result(timeout=timeout)
        except FutureTimeout as error:
            if not pending.future.cancel():  # its pass has started: the rows come with it
                return pending.future.result()
            metrics.BATCH_DEADLINE_MISSED.labels(model=self.name).inc()
            raise BackendUnavailable(
                f"The embedding request waited {timeout:g} s for the model without being served.",
                details={"deadline_seconds": timeout},
            ) from error

    # --- worker --------------------------------------------------------------------------
    def _take(self) -> list[_Pending]:
        """The next batch: what is queued, up to max_batch_size texts, after the bounded wait for more."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            first_arrival = time.monotonic()
            wait_until = first_arrival + self.limits.max_wait_time_ms / 1000 if self._last_requests > 1 else 0.0
            while self._queued_texts() < self.limits.max_batch_size and time.monotonic() < wait_until:
                self._ready.wait(timeout=max(0.0, wait_until - time.monotonic()))
            batch: list[_Pending] = []
            texts = 0
            while self._queue:
                pending = self._queue[0]
                if batch and texts + len(pending.texts) > self.limits.max_batch_size:
                    break
                self._queue.popleft()
                if not pending.future.set_running_or_notify_cancel():
                    continue  # its caller gave up (deadline)
                batch.append(pending)
                texts += len(pending.texts)
            return batch

    def _queued_texts(self) -> int:
        return sum(len(pending.texts) for pending in self._queue)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                continue
            self._last_requests = len(batch)
            self._serve(batch)

    def _serve(self, batch: list[_Pending]) -> None:
        texts = [text for pending in batch for text in pending.texts]
        metrics.BATCH_SIZE.labels(model=self.name).observe(len(texts))
        metrics.BATCH_REQUESTS.labels(model=self.name).observe(len(batch))
        try:
            vectors = self._encode(texts)
        except MedkgError as error:
            self._fail(batch, error)
            return
        except Exception as error:  # noqa: BLE001 - a failed pass must reach its callers, never kill the worker
            log_event(logger, "batch_failed", logging.ERROR, model=self.name, texts=len(texts), exc_info=True)
            self._fail(
                batch,
                BackendError(
                    f"The batched forward pass failed: {type(error).__name__}: {error}"[:500],
                    details={"batch_texts": len(texts), "batch_requests": len(batch)},
                ),
            )
            return
        start = 0
        for pending in batch:
            end = start + len(pending.texts)
            pending.future.set_result(vectors[start:end])
            start = end

    def _fail(self, batch: list[_Pending], error: MedkgError) -> None:
        metrics.BATCH_FAILURES.labels(model=self.name).inc()
        for pending in batch:
            pending.future.set_exception(error)


_batchers: dict[tuple[object, ...], DynamicBatcher] = {}
_batchers_lock = threading.Lock()


def batcher_for(
    key: tuple[object, ...], *, name: str, encode: EncodeFunction, limits: BatchingLimits
) -> DynamicBatcher:
    """One batcher (and worker thread) per process and key: the model and the encode options."""
    with _batchers_lock:
        batcher = _batchers.get(key)
        if batcher is None:
            batcher = _batchers[key] = DynamicBatcher(name=name, encode=encode, limits=limits)
        return batcher


def batching_enabled() -> bool:
    return bool(settings.MEDKG_DYNAMIC_BATCHING)
