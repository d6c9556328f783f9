"""Query and document prompts: what the model receives on search, ingestion, /v1/embed and /v1/embeddings.

The provider's embed is wrapped (it still runs the real MiniLM model) only to record the texts it is given:
the prompt is invisible in the answer, and the model's input is the behaviour under test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from embeddings.providers.sentence_transformers import SentenceTransformersProvider
from namespaces.models import Namespace
from tests.conftest import DEFAULT_NAMESPACE, assert_error

QUERY_PROMPT = "Instruct: Given a biomedical question, retrieve relevant passages that answer it\nQuery: "
DOCUMENT_PROMPT = "passage: "
DOCS = [
    {"id": "aspirin", "text": "Aspirin irreversibly inhibits platelet cyclooxygenase."},
    {"id": "insulin", "text": "Insulin lowers blood glucose in type 1 diabetes."},
]
QUERY = "which drug lowers blood sugar?"


@pytest.fixture(autouse=True)
def _inline_ingestion(settings: Any) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"  # the job runs when the request's transaction commits


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the in-process provider embeds, in order; the real model still computes the vectors."""
    texts: list[str] = []
    original = SentenceTransformersProvider.embed

    def recording(self: SentenceTransformersProvider, batch: Any, **options: Any) -> np.ndarray:
        texts.extend(batch)
        return original(self, batch, **options)

    monkeypatch.setattr(SentenceTransformersProvider, "embed", recording)
    return texts


@pytest.fixture
def prompted(synced: dict[str, Namespace]) -> Namespace:
    """The default namespace with a query prompt only, as Qwen3-Embedding's is configured."""
    namespace = synced[DEFAULT_NAMESPACE]
    namespace.query_prompt = QUERY_PROMPT
    namespace.save()
    return namespace


@pytest.fixture
def ingest(api: Any, django_capture_on_commit_callbacks: Any, token_a_write: str) -> Callable[[], None]:
    def post() -> None:
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post(
                f"/v1/namespaces/{DEFAULT_NAMESPACE}/documents",
                {"tenant_id": "tenant-a", "documents": DOCS},
                token=token_a_write,
            )
        assert response.status_code == 202, response.content[:500]

    return post


def test_the_query_prompt_reaches_the_model_on_search_and_not_on_ingestion(
    api: Any, prompted: Namespace, ingest: Callable[[], None], token_a_write: str, seen: list[str]
) -> None:
    ingest()
    assert sorted(seen) == sorted(doc["text"] for doc in DOCS)  # documents as they are
    seen.clear()

    response = api.post(
        f"/v1/namespaces/{DEFAULT_NAMESPACE}/search",
        {"tenant_id": "tenant-a", "query": QUERY, "k": 2},
        token=token_a_write,
    )
    assert response.status_code == 200, response.content[:500]
    assert seen == [QUERY_PROMPT + QUERY]
    assert response.json()["hits"][0]["id"] == "insulin"
    seen.clear()

    hybrid = api.post(
        "/v1/search",
        {"tenant_id": "tenant-a", "query": QUERY, "k": 2, "namespaces": [{"namespace": DEFAULT_NAMESPACE}]},
        token=token_a_write,
    )
    assert hybrid.status_code == 200, hybrid.content[:500]
    assert seen == [QUERY_PROMPT + QUERY]


def test_the_document_prompt_reaches_the_model_on_ingestion_and_not_on_search(
    api: Any, prompted: Namespace, ingest: Callable[[], None], token_a_write: str, seen: list[str]
) -> None:
    prompted.query_prompt, prompted.document_prompt = "", DOCUMENT_PROMPT
    prompted.save()

    ingest()
    assert sorted(seen) == sorted(DOCUMENT_PROMPT + doc["text"] for doc in DOCS)
    seen.clear()
    api.post(
        f"/v1/namespaces/{DEFAULT_NAMESPACE}/search", {"tenant_id": "tenant-a", "query": QUERY}, token=token_a_write
    )
    assert seen == [QUERY]


def test_embed_input_type_picks_the_prompt(api: Any, prompted: Namespace, token_a_write: str, seen: list[str]) -> None:
    def embed(**options: Any) -> Any:
        body = {"namespace": DEFAULT_NAMESPACE, "texts": ["aspirin"], **({"options": options} if options else {})}
        response = api.post("/v1/embed", body, token=token_a_write)
        assert response.status_code == 200, response.content[:500]
        return response.json()

    document = embed()
    query = embed(input_type="query")
    assert seen == ["aspirin", QUERY_PROMPT + "aspirin"]
    # the prompt's tokens are embedded, so they are counted
    assert query["embeddings"][0]["token_count"] > document["embeddings"][0]["token_count"] + 10
    assert query["usage"]["total_tokens"] == query["embeddings"][0]["token_count"]
    assert query["embeddings"][0]["vector"] != document["embeddings"][0]["vector"]


def test_openai_input_type_extension(api: Any, prompted: Namespace, token_a_write: str, seen: list[str]) -> None:
    for extra in ({}, {"input_type": "document"}, {"input_type": "query"}):
        response = api.post(
            "/v1/embeddings", {"model": DEFAULT_NAMESPACE, "input": "aspirin", **extra}, token=token_a_write
        )
        assert response.status_code == 200, response.content[:500]
    assert seen == ["aspirin", "aspirin", QUERY_PROMPT + "aspirin"]
    bogus = api.post(
        "/v1/embeddings", {"model": DEFAULT_NAMESPACE, "input": "aspirin", "input_type": "passage"}, token=token_a_write
    )
    assert_error(bogus, 400, "invalid_request")


def test_validate_counts_the_prompt(api: Any, prompted: Namespace, token_a_read: str) -> None:
    def counted(**extra: Any) -> int:
        response = api.post(
            f"/v1/namespaces/{DEFAULT_NAMESPACE}/validate", {"texts": ["aspirin"], **extra}, token=token_a_read
        )
        assert response.status_code == 200, response.content[:500]
        return int(response.json()["results"][0]["token_count"])

    assert counted(input_type="query") > counted() + 10
    assert counted() == counted(input_type="document")


def test_the_budget_counts_the_prompt(api: Any, prompted: Namespace, token_a_write: str) -> None:
    """A text that fits alone is refused as a query once the prompt takes part of the budget."""
    text = " ".join(["blood"] * 240)  # under the 256-token budget alone, over it after the prompt
    for input_type, status in (("document", 200), ("query", 422)):
        response = api.post(
            "/v1/embed",
            {"namespace": DEFAULT_NAMESPACE, "texts": [text], "options": {"input_type": input_type}},
            token=token_a_write,
        )
        assert response.status_code == status, response.content[:500]
