"""Matryoshka `dimensions` and quantized `encoding_format` on /v1/embed and /v1/embeddings, on the real MiniLM model.

MiniLM was not trained for Matryoshka; the test namespace declares sizes only so that the cut-and-renormalize
arithmetic runs on real vectors (what Qwen3-Embedding's sizes get on vLLM).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from django.core.exceptions import ValidationError

from embeddings.encoding import vectors_quantized
from embeddings.services import vectors_shortened
from namespaces.models import Namespace
from tests.conftest import DEFAULT_NAMESPACE, assert_error

MATRYOSHKA_NAMESPACE = "single_vector.minilm-m.384.v1"
TEXTS = ["aspirin inhibits platelet aggregation", "insulin resistance in type 2 diabetes", "x"]
OPENAI = "/v1/embeddings"


@pytest.fixture
def matryoshka(synced: dict[str, Namespace]) -> Namespace:
    """A copy of the default namespace (same model) that declares the sizes 128 and 256."""
    namespace = synced[DEFAULT_NAMESPACE]
    namespace.pk = None
    namespace.name = MATRYOSHKA_NAMESPACE
    namespace.matryoshka_dims = [128, 256]
    namespace.source_file = ""
    namespace.full_clean()
    namespace.save()
    return namespace


def embed(api: Any, token: str, namespace: str, texts: list[str], **options: Any) -> Any:
    body: dict[str, Any] = {"namespace": namespace, "texts": texts}
    if options:
        body["options"] = options
    return api.post("/v1/embed", body, token=token)


def embed_vectors(api: Any, token: str, namespace: str, texts: list[str], **options: Any) -> list[Any]:
    response = embed(api, token, namespace, texts, **options)
    assert response.status_code == 200, response.content[:500]
    return [item["vector"] for item in response.json()["embeddings"]]


def openai_vectors(api: Any, token: str, model: str, texts: list[str], **extra: Any) -> list[Any]:
    response = api.post(OPENAI, {"model": model, "input": texts, **extra}, token=token)
    assert response.status_code == 200, response.content[:500]
    return [item["embedding"] for item in response.json()["data"]]


def renormalized_prefix(vectors: list[list[float]], size: int) -> np.ndarray:
    prefix = np.asarray(vectors, dtype=np.float64)[:, :size]
    return prefix / np.linalg.norm(prefix, axis=1, keepdims=True)


# --- Matryoshka dimensions ---


@pytest.mark.parametrize("size", [128, 256])
def test_embed_dimensions_are_the_renormalized_prefix_of_the_full_vector(
    api: Any, matryoshka: Namespace, token_a_write: str, size: int
) -> None:
    full = embed_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS)
    response = embed(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=size)

    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert (body["dim"], body["normalized"]) == (size, True)
    short = np.asarray([item["vector"] for item in body["embeddings"]], dtype=np.float64)
    assert short.shape == (len(TEXTS), size)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(short, renormalized_prefix(full, size), atol=1e-6)


def test_embed_dimensions_give_unit_vectors_even_without_normalization(
    api: Any, matryoshka: Namespace, token_a_write: str
) -> None:
    full = embed_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, normalize=False)
    short = embed_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, normalize=False, dimensions=128)
    np.testing.assert_allclose(np.asarray(short), renormalized_prefix(full, 128), atol=1e-6)


@pytest.mark.parametrize("size", [128, 256])
def test_openai_dimensions_are_the_renormalized_prefix_of_the_full_vector(
    api: Any, matryoshka: Namespace, token_a_write: str, size: int
) -> None:
    full = openai_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS)
    short = openai_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=size)
    assert np.asarray(short).shape == (len(TEXTS), size)
    np.testing.assert_allclose(np.asarray(short, dtype=np.float64), renormalized_prefix(full, size), atol=1e-6)


def test_the_full_dimension_is_always_allowed(api: Any, matryoshka: Namespace, token_a_write: str) -> None:
    full = openai_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS)
    same = openai_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=384)
    np.testing.assert_allclose(np.asarray(same), np.asarray(full), atol=1e-6)


@pytest.mark.parametrize("size", [64, 127, 129, 383, 385, 4096])
def test_other_sizes_are_a_400_naming_the_allowed_ones(
    api: Any, matryoshka: Namespace, token_a_write: str, size: int
) -> None:
    for response in (
        embed(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=size),
        api.post(OPENAI, {"model": MATRYOSHKA_NAMESPACE, "input": TEXTS, "dimensions": size}, token=token_a_write),
    ):
        body = assert_error(response, 400, "invalid_request")
        assert body["error"]["details"] == {"dimensions": 384, "allowed_dimensions": [128, 256, 384]}
        assert "128, 256, 384" in body["error"]["message"] and str(size) in body["error"]["message"]


def test_a_namespace_without_matryoshka_sizes_refuses_smaller_ones(
    api: Any, synced: dict[str, Namespace], token_a_write: str
) -> None:
    body = assert_error(embed(api, token_a_write, DEFAULT_NAMESPACE, TEXTS, dimensions=128), 400, "invalid_request")
    assert body["error"]["details"] == {"dimensions": 384, "allowed_dimensions": [384]}


def test_sparse_namespaces_refuse_dimensions_and_quantization(
    api: Any, synced: dict[str, Namespace], token_a_write: str
) -> None:
    for options in ({"dimensions": 8}, {"encoding_format": "int8"}):
        response = embed(api, token_a_write, "sparse.bm25.auto.v1", ["aspirin"], **options)
        body = assert_error(response, 400, "invalid_request")
        assert body["error"]["details"] == {"options": list(options)}


def test_the_namespace_list_shows_the_sizes(api: Any, matryoshka: Namespace, token_a_read: str) -> None:
    listed = {item["name"]: item for item in api.get("/v1/namespaces", token=token_a_read).json()["namespaces"]}
    assert listed[MATRYOSHKA_NAMESPACE]["matryoshka_dims"] == [128, 256]
    assert listed["single_vector.qwen3.4096.v1"]["matryoshka_dims"] == [32, 64, 128, 256, 512, 768, 1024, 2048]


@pytest.mark.parametrize(
    ("sizes", "reason"),
    [([384], "between 1 and 383"), ([0], "between 1 and 383"), ([8, 8], "unique"), (["8"], "integers"), (8, "list")],
)
def test_the_model_refuses_bad_sizes(synced: dict[str, Namespace], sizes: Any, reason: str) -> None:
    namespace = synced[DEFAULT_NAMESPACE]
    namespace.matryoshka_dims = sizes
    with pytest.raises(ValidationError) as raised:
        namespace.full_clean()
    assert reason in str(raised.value.message_dict["matryoshka_dims"])


def test_a_zero_prefix_stays_zero_instead_of_dividing_by_zero() -> None:
    vectors = np.array([[0.0, 0.0, 1.0], [3.0, 4.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(vectors_shortened(vectors, 2), [[0.0, 0.0], [0.6, 0.8]], atol=1e-7)


# --- encodings ---


def test_the_quantization_scaling_is_the_documented_one() -> None:
    vectors = np.array([[-2.0, -1.0, -0.5, -0.002, 0.0, 0.002, 0.5, 1.0, 3.0]], dtype=np.float32)
    assert vectors_quantized(vectors, "int8").tolist() == [[-127, -127, -64, 0, 0, 0, 64, 127, 127]]
    assert vectors_quantized(vectors, "uint8").tolist() == [[0, 0, 64, 127, 128, 128, 191, 255, 255]]
    # x > 0: 0 0 0 0 0 1 1 1 | 1 (padded with seven 0 bits)
    assert vectors_quantized(vectors, "binary").tolist() == [[0b00000111, 0b10000000]]
    assert vectors_quantized(vectors, "int8").dtype == np.int8 and vectors_quantized(vectors, "uint8").dtype == np.uint8


def expected_encodings(floats: list[list[float]]) -> dict[str, list[list[int]]]:
    # float32, as the server computes: the answer's floats are exact float32 values
    vectors = np.asarray(floats, dtype=np.float32)
    return {
        "int8": np.rint(np.clip(vectors, -1, 1) * np.float32(127)).astype(int).tolist(),
        "uint8": np.rint((np.clip(vectors, -1, 1) + np.float32(1)) * np.float32(127.5)).astype(int).tolist(),
        "binary": np.packbits(vectors > 0, axis=1).astype(int).tolist(),
    }


@pytest.mark.parametrize("encoding_format", ["int8", "uint8", "binary"])
def test_openai_quantized_encodings(
    api: Any, synced: dict[str, Namespace], token_a_write: str, encoding_format: str
) -> None:
    floats = openai_vectors(api, token_a_write, DEFAULT_NAMESPACE, TEXTS)
    encoded = openai_vectors(api, token_a_write, DEFAULT_NAMESPACE, TEXTS, encoding_format=encoding_format)

    assert all(isinstance(value, int) for vector in encoded for value in vector)
    assert encoded == expected_encodings(floats)[encoding_format]
    assert len(encoded[0]) == (384 // 8 if encoding_format == "binary" else 384)


@pytest.mark.parametrize("encoding_format", ["int8", "uint8", "binary"])
def test_embed_quantized_encodings_after_matryoshka(
    api: Any, matryoshka: Namespace, token_a_write: str, encoding_format: str
) -> None:
    floats = embed_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=256)
    response = embed(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=256, encoding_format=encoding_format)

    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert (body["dim"], body["encoding_format"]) == (256, encoding_format)
    encoded = [item["vector"] for item in body["embeddings"]]
    assert encoded == expected_encodings(floats)[encoding_format]
    assert len(encoded[0]) == (256 // 8 if encoding_format == "binary" else 256)


def test_binary_codes_rank_like_the_floats(api: Any, synced: dict[str, Namespace], token_a_write: str) -> None:
    """The sign bits keep the neighbourhood: Hamming distance orders the texts as cosine does here."""
    texts = ["aspirin inhibits platelets", "acetylsalicylic acid blocks platelet aggregation", "the Eiffel Tower"]
    codes = np.asarray(
        openai_vectors(api, token_a_write, DEFAULT_NAMESPACE, texts, encoding_format="binary"), dtype=np.uint8
    )
    hamming = [int(np.unpackbits(codes[0] ^ codes[i]).sum()) for i in (1, 2)]
    assert hamming[0] < hamming[1]


@pytest.mark.parametrize("endpoint", ["embed", "openai"])
def test_base64_is_little_endian_float32_of_the_float_answer(
    api: Any, matryoshka: Namespace, token_a_write: str, endpoint: str
) -> None:
    if endpoint == "embed":
        floats = embed_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=128)
        encoded = embed_vectors(
            api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=128, encoding_format="base64"
        )
    else:
        floats = openai_vectors(api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=128)
        encoded = openai_vectors(
            api, token_a_write, MATRYOSHKA_NAMESPACE, TEXTS, dimensions=128, encoding_format="base64"
        )
    decoded = np.asarray([np.frombuffer(base64.b64decode(value), dtype="<f4") for value in encoded])
    np.testing.assert_array_equal(decoded, np.asarray(floats, dtype=np.float32))


@pytest.mark.parametrize("encoding_format", ["int4", "ubinary", "INT8", "", None, 8])
def test_embed_bogus_encoding_format_is_a_400(
    api: Any, synced: dict[str, Namespace], token_a_write: str, encoding_format: Any
) -> None:
    response = embed(api, token_a_write, DEFAULT_NAMESPACE, TEXTS, encoding_format=encoding_format)
    assert_error(response, 400, "invalid_request")


@pytest.mark.django_db
def test_the_schema_states_the_formats_sizes_and_input_types(api: Any) -> None:
    components = api.get("/v1/schema?format=json").json()["components"]["schemas"]
    formats = ["float", "base64", "int8", "uint8", "binary"]
    for request, properties in (
        ("OpenAIEmbeddingsInputRequest", components["OpenAIEmbeddingsInputRequest"]["properties"]),
        ("EmbedOptionsRequest", components["EmbedOptionsRequest"]["properties"]),
    ):
        encoding = components[properties["encoding_format"]["allOf"][0]["$ref"].rsplit("/", 1)[1]]
        assert encoding["enum"] == formats, request
        assert "round(clip(x, -1, 1) * 127)" in properties["encoding_format"]["description"], request
        assert properties["dimensions"]["minimum"] == 1 and "matryoshka_dims" in properties["dimensions"]["description"]
        assert "input_type" in properties, request
    vector = components["EmbeddingOutput"]["properties"]["vector"]
    assert [choice.get("type") for choice in vector["anyOf"]] == ["array", "array", "string"]
