"""The official `openai` client against POST /v1/embeddings on a live server: what an OpenAI user gets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import openai
import pytest
from openai import OpenAI

from namespaces.models import Namespace, NamespaceKind
from tests.conftest import DEFAULT_NAMESPACE

pytestmark = pytest.mark.slow

TEXTS = ["aspirin inhibits platelet aggregation", "metformin lowers hepatic glucose production", "β-blockers"]
# Over MiniLM's budget of 256 tokens: refused unless truncation is asked for.
LONG_TEXT = " ".join(["myocardial infarction with ST elevation"] * 80)


@pytest.fixture
def server_url(live_server: Any, transactional_db: None, synced: dict[str, Namespace]) -> str:
    return f"{live_server.url}/v1"


@pytest.fixture
def exchanges() -> list[dict[str, Any]]:
    """What went over the wire: each request's JSON body and the raw response JSON."""
    return []


@pytest.fixture
def client_for(server_url: str, exchanges: list[dict[str, Any]]) -> Iterator[Callable[[str], OpenAI]]:
    """An OpenAI client with the given token, recording raw bodies, with no retries (errors surface at once)."""
    http_clients: list[Any] = []

    def record_response(response: Any) -> None:
        response.read()
        exchanges.append({"request": json.loads(response.request.content), "response": response.json()})

    def make(token: str) -> OpenAI:
        http_client = openai.DefaultHttpxClient(event_hooks={"response": [record_response]})
        http_clients.append(http_client)
        return OpenAI(base_url=server_url, api_key=token, max_retries=0, http_client=http_client)

    yield make
    for http_client in http_clients:
        http_client.close()


@pytest.fixture
def client(client_for: Callable[[str], OpenAI], token_a_write: str) -> OpenAI:
    return client_for(token_a_write)


def test_a_single_string_gives_one_reference_vector(client: OpenAI, assert_reference_vectors: Any) -> None:
    result = client.embeddings.create(model=DEFAULT_NAMESPACE, input=TEXTS[0])

    assert result.model == DEFAULT_NAMESPACE
    assert [item.index for item in result.data] == [0]
    assert len(result.data[0].embedding) == 384
    assert_reference_vectors([result.data[0].embedding], TEXTS[:1])
    assert result.usage.prompt_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens


def test_a_list_gives_vectors_in_input_order(client: OpenAI, assert_reference_vectors: Any) -> None:
    result = client.embeddings.create(model=DEFAULT_NAMESPACE, input=TEXTS)

    assert [item.index for item in result.data] == [0, 1, 2]
    assert_reference_vectors([item.embedding for item in result.data], TEXTS)
    single = client.embeddings.create(model=DEFAULT_NAMESPACE, input=TEXTS[0])
    assert result.usage.prompt_tokens > single.usage.prompt_tokens > 0


def test_the_default_encoding_is_base64_and_the_client_decodes_it(
    client: OpenAI, exchanges: list[dict[str, Any]], assert_reference_vectors: Any
) -> None:
    result = client.embeddings.create(model=DEFAULT_NAMESPACE, input=TEXTS[:2])

    (exchange,) = exchanges
    assert exchange["request"]["encoding_format"] == "base64"
    raw = [item["embedding"] for item in exchange["response"]["data"]]
    assert all(isinstance(encoded, str) for encoded in raw)
    assert len(raw[0]) == 2048  # 384 little-endian float32, base64: 1536 bytes
    assert_reference_vectors([item.embedding for item in result.data], TEXTS[:2])


def test_explicit_float_encoding_sends_json_numbers(
    client: OpenAI, exchanges: list[dict[str, Any]], assert_reference_vectors: Any
) -> None:
    result = client.embeddings.create(model=DEFAULT_NAMESPACE, input=TEXTS, encoding_format="float")

    (exchange,) = exchanges
    assert exchange["request"]["encoding_format"] == "float"
    raw = exchange["response"]["data"][0]["embedding"]
    assert isinstance(raw, list) and len(raw) == 384 and all(isinstance(value, float) for value in raw)
    assert_reference_vectors([item.embedding for item in result.data], TEXTS)
    assert abs(float(np.linalg.norm(result.data[0].embedding)) - 1.0) < 1e-3


def test_the_dimensions_parameter_is_checked(client: OpenAI) -> None:
    assert len(client.embeddings.create(model=DEFAULT_NAMESPACE, input="x", dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model=DEFAULT_NAMESPACE, input="x", dimensions=256)
    assert raised.value.code == "invalid_request"


def test_vllm_truncate_prompt_tokens_is_understood(client: OpenAI, assert_reference_vectors: Any) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.embeddings.create(model=DEFAULT_NAMESPACE, input=LONG_TEXT)
    assert raised.value.code == "token_budget_exceeded"

    result = client.embeddings.create(
        model=DEFAULT_NAMESPACE, input=LONG_TEXT, extra_body={"truncate_prompt_tokens": 256}
    )

    assert_reference_vectors([result.data[0].embedding], [LONG_TEXT])  # the model itself stops at 256 tokens
    assert result.usage.prompt_tokens == 256


def test_another_tenants_namespace_is_not_found(
    client_for: Callable[[str], OpenAI], restricted_namespace: Namespace, outsider: dict[str, Any]
) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client_for(outsider["token"]).embeddings.create(model=restricted_namespace.name, input="aspirin")

    assert raised.value.status_code == 404
    assert raised.value.code == "namespace_not_found"


def test_an_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="sparse.splade.auto.v1", input="aspirin")

    assert raised.value.code == "namespace_not_found"


def test_a_sparse_namespace_is_refused_as_the_wrong_kind(client: OpenAI) -> None:
    Namespace.objects.create(
        name="sparse.splade.auto.v1",
        kind=NamespaceKind.SPARSE,
        provider="splade",
        model_id="naver/splade-v3",
        dim=None,
        max_tokens=512,
        allowed_scopes=["embed:read", "embed:write"],
        allow_all_tenants=True,
    )

    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.embeddings.create(model="sparse.splade.auto.v1", input="aspirin")

    assert raised.value.code == "unsupported_namespace_kind"


@pytest.mark.parametrize("token", ["not-a-token", "eyJhbGciOiJIUzI1NiJ9.eyJ0ZW5hbnRfaWQiOiJ4In0.c2lnbmF0dXJl"])
def test_a_bad_token_is_an_authentication_error(client_for: Callable[[str], OpenAI], token: str) -> None:
    with pytest.raises(openai.AuthenticationError) as raised:
        client_for(token).embeddings.create(model=DEFAULT_NAMESPACE, input="aspirin")

    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_token"
