"""The model scheduler: cross-request batching of an in-process model, fair between tenants and classes of work.

Every request for a model is queued by its work class (interactive before bulk: core/work.py marks each request)
and its tenant. One worker thread per model forms passes of bounded size, at most `max_batch_size` texts and
`max_pass_tokens` estimated tokens (half that while several tenants or classes wait), so no request holds the
model longer than one bounded pass: a large request is cut into several passes that interleave with everyone
else's work. Within a class, tenants share passes by
deficit round-robin on tokens (each turn adds `quantum x the tenant's weight` to its deficit): a tenant's share
depends on its weight, not on how much it sends, and a tenant alone gets every pass. When both classes wait,
bulk keeps `bulk_share` of each pass so that ingestion progresses under interactive load; what one class leaves
unused, the other takes.

The provider tokenizes each pass once and runs it as passes sorted by token count
(embeddings/providers/sorted_encode.py). A request waits in the queue at most until its deadline (once its first
pass started it is served to the end); a failed pass fails only the requests in it. The wait for more requests
(`max_wait_time_ms`) is only paid when the previous pass held several requests: a lone client is never delayed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from django.conf import settings

from core.errors import BackendError, BackendUnavailable, MedkgError
from core.logging import log_event
from core.work import WorkClass, current_work
from embeddings import metrics

logger = logging.getLogger("medkg.embeddings")

EncodeFunction = Callable[[list[str]], np.ndarray]
WeightFunction = Callable[[str], float]

# Characters per token of the estimate that sizes passes: MiniLM's WordPiece on SciFact abstracts gives 3.9 at
# the 10th percentile and 4.5 at the median; 4 errs towards smaller passes. 2: the special tokens of a sequence.
CHARACTERS_PER_TOKEN = 4
SPECIAL_TOKENS = 2
_CLASS_ORDER = (WorkClass.INTERACTIVE, WorkClass.BULK)


@dataclass(frozen=True)
class BatchingLimits:
    max_batch_size: int  # texts in one pass
    max_wait_time_ms: float
    max_pass_tokens: int = 1024  # estimated tokens in one pass (a single text longer than that runs alone)
    max_text_tokens: int = 512  # what one text can cost: the model truncates there
    bulk_share: float = 0.25  # of each pass kept for bulk work while interactive work also waits


def estimated_tokens(text: str, cap: int) -> int:
    """What `text` costs in a pass, estimated without the tokenizer (which is not safe to share between threads)."""
    return min(cap, math.ceil(len(text) / CHARACTERS_PER_TOKEN) + SPECIAL_TOKENS)


@dataclass(eq=False)
class _Request:
    texts: list[str]
    costs: list[int]
    tenant: str
    work_class: WorkClass
    weight: float
    deadline: float  # time.monotonic()
    future: Future[np.ndarray] = field(default_factory=Future)
    taken: int = 0  # texts handed to passes
    served: int = 0  # texts whose vectors came back
    vectors: np.ndarray | None = None


@dataclass
class _Slice:
    request: _Request
    start: int
    end: int


@dataclass
class _Pass:
    slices: list[_Slice] = field(default_factory=list)
    texts: int = 0
    tokens: int = 0


@lru_cache(maxsize=1)
def default_limits() -> BatchingLimits:
    """config/embedding/vllm.yaml's batching section plus the scheduler's settings: the same knobs in process."""
    from namespaces.config import load_vllm_config

    batching = load_vllm_config(settings.MEDKG_CONFIG_DIR / "embedding" / "vllm.yaml").batching
    return BatchingLimits(
        max_batch_size=batching.max_batch_size,
        max_wait_time_ms=batching.max_wait_time_ms,
        max_pass_tokens=settings.MEDKG_SCHEDULER_MAX_PASS_TOKENS,
        bulk_share=settings.MEDKG_SCHEDULER_BULK_SHARE,
    )


def tenant_weight(slug: str) -> float:
    """The tenant's scheduling weight (admin), 1 for unattributed work and unknown tenants."""
    if not slug:
        return 1.0
    from namespaces.selectors import tenant_scheduling_weight

    return tenant_scheduling_weight(slug)


class DynamicBatcher:
    """Serves concurrent `submit` calls in fair, bounded passes of `encode` (which must be thread-safe on its own)."""

    def __init__(
        self,
        *,
        name: str,
        encode: EncodeFunction,
        limits: BatchingLimits,
        weight_of: WeightFunction = tenant_weight,
        workers: int = 1,
    ) -> None:
        self.name = name
        self.limits = limits
        self._encode = encode
        self._weight_of = weight_of
        # class -> tenant -> its requests in arrival order; a tenant's position is its place in the rotation.
        self._queues: dict[WorkClass, OrderedDict[str, deque[_Request]]] = {cls: OrderedDict() for cls in _CLASS_ORDER}
        self._deficit: dict[tuple[WorkClass, str], float] = {}
        self._turn: dict[WorkClass, str | None] = dict.fromkeys(_CLASS_ORDER)
        self._queued = dict.fromkeys(_CLASS_ORDER, 0)  # texts not yet handed to a pass
        self._ready = threading.Condition()
        self._last_requests = 1
        # One worker: an in-process model runs one pass at a time. Several: a remote backend (vLLM) batches the
        # passes in flight itself; the workers bound how many, and each pass is formed as fairly as a lone one.
        self._workers = [
            threading.Thread(target=self._run, name=f"batcher-{name}-{index}", daemon=True)
            for index in range(max(1, workers))
        ]
        for worker in self._workers:
            worker.start()

    @property
    def quantum(self) -> int:
        """Tokens a tenant of weight 1 may take per turn: a quarter pass, so four tenants share each pass."""
        return max(1, self.limits.max_pass_tokens // 4)

    def submit(self, texts: Sequence[str], *, timeout: float) -> np.ndarray:
        """Vectors of `texts`; BackendUnavailable when no pass took them within `timeout` s."""
        work = current_work()
        cap = min(self.limits.max_text_tokens, self.limits.max_pass_tokens)
        request = _Request(
            texts=list(texts),
            costs=[estimated_tokens(text, cap) for text in texts],
            tenant=work.tenant,
            work_class=work.work_class,
            weight=max(self._weight_of(work.tenant), 1e-3),
            deadline=time.monotonic() + timeout,
        )
        if not request.texts:
            return np.zeros((0, 0), dtype=np.float32)
        with self._ready:
            self._queues[request.work_class].setdefault(request.tenant, deque()).append(request)
            self._queued[request.work_class] += len(request.texts)
            self._gauge()
            self._ready.notify()
        try:
            return request.future.result(timeout=timeout)
        except FutureTimeout as error:
            if not request.future.cancel():  # its first pass has started: it is served to the end
                return request.future.result()
            metrics.BATCH_DEADLINE_MISSED.labels(model=self.name).inc()
            raise BackendUnavailable(
                f"The embedding request waited {timeout:g} s for the model without being served.",
                details={"deadline_seconds": timeout},
            ) from error

    # --- worker --------------------------------------------------------------------------
    def _take(self) -> _Pass:
        """The next pass, after the bounded wait for more requests when the last pass was shared."""
        with self._ready:
            while not any(self._queued.values()):
                self._ready.wait()
            wait_until = time.monotonic() + self.limits.max_wait_time_ms / 1000 if self._last_requests > 1 else 0.0
            while sum(self._queued.values()) < self.limits.max_batch_size and time.monotonic() < wait_until:
                self._ready.wait(timeout=max(0.0, wait_until - time.monotonic()))
            formed = _Pass()
            full = self.limits.max_pass_tokens
            if sum(len(tenants) for tenants in self._queues.values()) > 1:
                # Several waiting: half passes, so that a newcomer's wait (the pass in flight) plus its own pass
                # stay within one maximal pass. A tenant alone gets whole ones.
                full = max(1, full // 2)
            order = [(WorkClass.INTERACTIVE, full), (WorkClass.BULK, full)]
            if self._queued[WorkClass.INTERACTIVE] and self._queued[WorkClass.BULK]:
                # Both wait: interactive first up to its part, bulk its share, then either takes what is left.
                order.insert(0, (WorkClass.INTERACTIVE, round(full * (1 - self.limits.bulk_share))))
                order[1:] = [(WorkClass.BULK, full), (WorkClass.INTERACTIVE, full)]
            for work_class, token_limit in order:
                self._fill(formed, work_class, token_limit)
            self._gauge()
            return formed

    def _fill(self, formed: _Pass, work_class: WorkClass, token_limit: int) -> None:
        """Add `work_class`'s texts to the pass, tenant by tenant in deficit round-robin, up to `token_limit`."""
        queue = self._queues[work_class]
        while queue and formed.texts < self.limits.max_batch_size:
            tenant, requests = next(iter(queue.items()))
            key = (work_class, tenant)
            if self._turn[work_class] != tenant:  # a new turn: the tenant's quantum, by its weight
                self._turn[work_class] = tenant
                self._deficit[key] = self._deficit.get(key, 0.0) + self.quantum * requests[0].weight
            request = requests[0]
            if request.future.done():  # cancelled by its caller (deadline), or an earlier pass of it failed
                self._drop(work_class, tenant, requests, request)
                continue
            cost = request.costs[request.taken]
            if formed.texts and formed.tokens + cost > token_limit:
                return  # the pass is full; the tenant's turn goes on in the next one
            if cost > self._deficit[key] and formed.texts:
                self._turn[work_class] = None  # turn over: to the end of the rotation, keeping its deficit
                queue.move_to_end(tenant)
                continue
            if request.taken == 0 and not request.future.set_running_or_notify_cancel():
                self._drop(work_class, tenant, requests, request)  # cancelled just now
                continue
            self._deficit[key] -= cost
            formed.tokens += cost
            formed.texts += 1
            if formed.slices and formed.slices[-1].request is request:
                formed.slices[-1].end += 1
            else:
                formed.slices.append(_Slice(request, request.taken, request.taken + 1))
            request.taken += 1
            self._queued[work_class] -= 1
            if request.taken == len(request.texts):
                self._drop(work_class, tenant, requests, request, counted=True)

    def _drop(
        self, work_class: WorkClass, tenant: str, requests: deque[_Request], request: _Request, counted: bool = False
    ) -> None:
        """Take `request` off its tenant's queue; a tenant with nothing left leaves the rotation and its deficit."""
        requests.popleft()
        if not counted:
            self._queued[work_class] -= len(request.texts) - request.taken
        if not requests:
            del self._queues[work_class][tenant]
            self._deficit.pop((work_class, tenant), None)
            self._turn[work_class] = None

    def _gauge(self) -> None:
        for work_class, texts in self._queued.items():
            metrics.SCHEDULER_QUEUED_TEXTS.labels(model=self.name, work_class=work_class.value).set(texts)

    def _run(self) -> None:
        while True:
            formed = self._take()
            if not formed.slices:
                continue
            self._last_requests = len({id(piece.request) for piece in formed.slices})
            self._serve(formed)

    def _serve(self, formed: _Pass) -> None:
        texts = [text for piece in formed.slices for text in piece.request.texts[piece.start : piece.end]]
        requests = list({id(piece.request): piece.request for piece in formed.slices}.values())
        metrics.BATCH_SIZE.labels(model=self.name).observe(len(texts))
        metrics.BATCH_REQUESTS.labels(model=self.name).observe(len(requests))
        started = time.perf_counter()
        try:
            vectors = self._encode(texts)
        except MedkgError as error:
            self._fail(requests, error)
            return
        except Exception as error:  # noqa: BLE001 - a failed pass must reach its callers, never kill the worker
            log_event(logger, "batch_failed", logging.ERROR, model=self.name, texts=len(texts), exc_info=True)
            self._fail(
                requests,
                BackendError(
                    f"The batched forward pass failed: {type(error).__name__}: {error}"[:500],
                    details={"batch_texts": len(texts), "batch_requests": len(requests)},
                ),
            )
            return
        finally:
            metrics.MODEL_PASS_SECONDS.labels(model=self.name).observe(time.perf_counter() - started)
        row = 0
        for piece in formed.slices:
            request, count = piece.request, piece.end - piece.start
            if request.vectors is None:
                request.vectors = np.empty((len(request.texts), vectors.shape[1]), dtype=vectors.dtype)
            request.vectors[piece.start : piece.end] = vectors[row : row + count]
            row += count
            request.served += count
            tokens = sum(request.costs[piece.start : piece.end])
            metrics.SCHEDULER_TOKENS.labels(model=self.name, work_class=request.work_class.value).inc(tokens)
            if request.served == len(request.texts) and not request.future.done():
                request.future.set_result(request.vectors)

    def _fail(self, requests: list[_Request], error: MedkgError) -> None:
        metrics.BATCH_FAILURES.labels(model=self.name).inc()
        for request in requests:
            if not request.future.done():
                request.future.set_exception(error)


_batchers: dict[tuple[object, ...], DynamicBatcher] = {}
_batchers_lock = threading.Lock()


def batcher_for(
    key: tuple[object, ...], *, name: str, encode: EncodeFunction, limits: BatchingLimits, workers: int = 1
) -> DynamicBatcher:
    """One batcher (and its worker threads) per process and key: the model and the encode options."""
    with _batchers_lock:
        batcher = _batchers.get(key)
        if batcher is None:
            batcher = _batchers[key] = DynamicBatcher(name=name, encode=encode, limits=limits, workers=workers)
        return batcher


def batching_enabled() -> bool:
    return bool(settings.MEDKG_DYNAMIC_BATCHING)
