"""POST /v1/embed (native) and POST /v1/embeddings (OpenAI-compatible): vectors or term weights of texts."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import InvalidRequest, UnsupportedInput
from embeddings.encoding import ENCODING_FORMATS, vectors_encoded
from embeddings.failover import embeddings_compute_failover
from embeddings.metrics import request_observed
from embeddings.services import INPUT_TYPES, EmbeddingBatch, SparseBatch, sparse_compute
from medkg.api.access import namespace_granted
from medkg.api.exceptions import error_body
from medkg.api.fields import (
    EncodedVectorField,
    NoUnknownFieldsSerializer,
    StrictBooleanField,
    StrictCharField,
    TextsField,
    UsageSerializer,
    check_text_count,
)
from medkg.api.permissions import check_claimed_tenant, principal_of
from medkg.api.schema import ErrorSerializer
from namespaces.models import NamespaceKind
from namespaces.quotas import quota_charge_tokens

SERVED_BY_HEADER = "X-Medkg-Served-By"

# --- OpenAPI: what automatic failover (embeddings/failover.py) shows a client of the embedding endpoints ---
SERVED_BY = OpenApiParameter(
    SERVED_BY_HEADER,
    type=str,
    location=OpenApiParameter.HEADER,
    response=[200],
    required=True,
    description=(
        "The namespace whose model computed the answer: the requested one, or its fallback while the "
        "requested namespace's provider is unavailable (automatic failover)."
    ),
)
PROVIDER_UNAVAILABLE = OpenApiResponse(
    response=ErrorSerializer,
    description=(
        "backend_unavailable, gpu_unavailable or tokenizer_unavailable: the namespace's provider cannot serve now, "
        "and no fallback answered for it. When the namespace names a fallback that cannot stand in (missing, "
        "disabled, another kind or dimension: failover refused), details.fallback names it and details.fallback_dim "
        "gives its dimension (null when missing)."
    ),
    examples=[
        OpenApiExample(
            "failover_refused",
            value=error_body(
                "gpu_unavailable",
                "Embedding backend unreachable: http://vllm-qwen3:8000/v1/embeddings (ConnectError). Its fallback "
                "single_vector.minilm.384.v1 has dimension 384, not 4096: it cannot answer for it.",
                {
                    "backend": "http://vllm-qwen3:8000/v1/embeddings",
                    "fallback": "single_vector.minilm.384.v1",
                    "fallback_dim": 384,
                },
            ),
        )
    ],
)


# --- shared by both endpoints: what a dense answer may look like ---

ENCODING_HELP = (
    "How each vector is written (dense namespaces). float: a list of numbers. base64: base64 of the "
    "little-endian float32 values. int8: round(clip(x, -1, 1) * 127), integers in -127..127. uint8: "
    "round((clip(x, -1, 1) + 1) * 127.5), integers in 0..255. binary: the sign bits (x > 0 is 1) packed 8 per "
    "byte, most significant bit first (numpy.packbits), the last byte zero-padded: ceil(dim / 8) integers in "
    "0..255. Rounding is half to even. Quantization applies after `dimensions` and normalization."
)
DIMENSIONS_HELP = (
    "Dense namespaces: the size of the returned vectors, the namespace's dimension or one of its "
    "`matryoshka_dims` (GET /v1/namespaces): the first N values of the full vector, renormalized to unit length. "
    "Any other size is a 400 naming the allowed ones."
)
INPUT_TYPE_HELP = (
    "query or document (default). Dense namespaces: the namespace's query_prompt or document_prompt is "
    "prepended to each text (and counted in its tokens). Sparse namespaces: which side's expansion limits "
    "apply (documents keep more terms)."
)


def encoding_format_field(**kwargs: Any) -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=list(ENCODING_FORMATS), default="float", help_text=ENCODING_HELP, **kwargs)


def input_type_field(**kwargs: Any) -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=list(INPUT_TYPES), default="document", help_text=INPUT_TYPE_HELP, **kwargs)


# --- /v1/embed ---


class EmbedOptionsSerializer(NoUnknownFieldsSerializer):
    normalize = StrictBooleanField(required=False, allow_null=True, default=None)
    truncate = StrictBooleanField(required=False, default=False)
    input_type = input_type_field(required=False)
    dimensions = serializers.IntegerField(required=False, min_value=1, help_text=DIMENSIONS_HELP)
    encoding_format = encoding_format_field(required=False)


class EmbedInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(required=False, max_length=200, help_text="Must equal the token's tenant when given.")
    namespace = StrictCharField(max_length=200)
    texts = TextsField()
    options = EmbedOptionsSerializer(required=False)


class EmbeddingOutputSerializer(serializers.Serializer):
    text_index = serializers.IntegerField()
    vector = EncodedVectorField(required=False, help_text="Dense namespaces, written as options.encoding_format.")
    terms = serializers.DictField(
        child=serializers.FloatField(), required=False, help_text="Sparse namespaces: term -> weight > 0."
    )
    token_count = serializers.IntegerField()
    truncated = serializers.BooleanField()


class EmbedOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    kind = serializers.ChoiceField(choices=["single_vector", "sparse"])
    dim = serializers.IntegerField(
        allow_null=True,
        help_text="Size of the returned vectors (options.dimensions when given); vocabulary size for sparse "
        "namespaces, null for auto.",
    )
    normalized = serializers.BooleanField()
    encoding_format = serializers.ChoiceField(choices=list(ENCODING_FORMATS), help_text="float for sparse namespaces.")
    embeddings = EmbeddingOutputSerializer(many=True)
    usage = UsageSerializer()


def _usage(batch: EmbeddingBatch | SparseBatch) -> dict[str, int]:
    return {"prompt_tokens": batch.total_tokens, "total_tokens": batch.total_tokens}


def _embed_body(batch: EmbeddingBatch | SparseBatch, encoding_format: str) -> dict[str, Any]:
    """What EmbedOutputSerializer renders: per text, its vector (dense) or its term weights (sparse)."""
    values: list[Any]
    if isinstance(batch, SparseBatch):
        key, values, dim, normalized = "terms", list(batch.terms), batch.namespace.dim, False
    else:
        dim, normalized = int(batch.vectors.shape[1]), batch.normalized
        key, values = "vector", vectors_encoded(batch.vectors, encoding_format)  # type: ignore[arg-type]
    truncated = set(batch.truncated)
    return {
        "namespace": batch.namespace.name,
        "model": batch.namespace.model_id,
        "model_version": batch.namespace.model_version,
        "kind": batch.namespace.kind,
        "dim": dim,
        "normalized": normalized,
        "encoding_format": encoding_format,
        "embeddings": [
            {"text_index": i, key: value, "token_count": count, "truncated": i in truncated}
            for i, (value, count) in enumerate(zip(values, batch.token_counts, strict=True))
        ],
        "usage": _usage(batch),
    }


def _served(request: Request, batch: EmbeddingBatch | SparseBatch, body: dict[str, Any]) -> Response:
    """The answer, named by the namespace that computed it, with the tokens charged to the tenant's quota."""
    quota_charge_tokens(tenant=principal_of(request).tenant, tokens=batch.total_tokens)
    return Response(body, headers={SERVED_BY_HEADER: batch.namespace.name})


class EmbedView(APIView):
    required_scope = "embed:write"
    quota_operation = "embed"

    @extend_schema(
        request=EmbedInputSerializer,
        responses={200: EmbedOutputSerializer, 503: PROVIDER_UNAVAILABLE},
        parameters=[SERVED_BY],
        operation_id="embed",
    )
    def post(self, request: Request) -> Response:
        check_claimed_tenant(request)
        payload = EmbedInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        namespace = namespace_granted(request, name=data["namespace"], scope=self.required_scope)
        options = data.get("options") or {}
        encoding_format = options.get("encoding_format", "float")
        batch: EmbeddingBatch | SparseBatch
        with request_observed(namespace=namespace.name, endpoint="embed"):
            if namespace.kind == NamespaceKind.SPARSE:
                _check_sparse_options(namespace.name, options)
                batch = sparse_compute(
                    namespace=namespace,
                    texts=data["texts"],
                    query=options.get("input_type") == "query",
                    truncate=options.get("truncate", False),
                )
            else:
                batch = embeddings_compute_failover(
                    namespace=namespace,
                    texts=data["texts"],
                    normalize=options.get("normalize"),
                    truncate=options.get("truncate", False),
                    input_type=options.get("input_type", "document"),
                    dimensions=options.get("dimensions"),
                )
        return _served(request, batch, EmbedOutputSerializer(_embed_body(batch, encoding_format)).data)


def _check_sparse_options(namespace: str, options: dict[str, Any]) -> None:
    """Term weights have no size to cut nor floats to quantize: refuse the dense-only options (400)."""
    asked = [name for name in ("dimensions", "encoding_format") if options.get(name) not in (None, "float")]
    if asked:
        raise InvalidRequest(
            f"Namespace {namespace} is sparse: options {', '.join(asked)} apply to dense namespaces only.",
            details={"options": asked},
        )


# --- /v1/embeddings (OpenAI) ---


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        ]
    }
)
class OpenAIInputField(serializers.JSONField):
    """A string or a list of strings (validated by the serializer)."""


class OpenAIEmbeddingsInputSerializer(serializers.Serializer):
    """OpenAI's request shape. Unknown keys are ignored, as OpenAI clients send extras (user, ...)."""

    model = StrictCharField(max_length=200, help_text="A namespace name, e.g. single_vector.minilm.384.v1.")
    input = OpenAIInputField(help_text="A string or a list of strings.")
    encoding_format = encoding_format_field(required=False)
    dimensions = serializers.IntegerField(required=False, min_value=1, help_text=DIMENSIONS_HELP)
    input_type = input_type_field(required=False)
    user = StrictCharField(required=False, max_length=500)
    tenant_id = StrictCharField(
        required=False, max_length=200, help_text="medkg extension: must equal the token's tenant when given."
    )
    truncate = StrictBooleanField(required=False, default=False, help_text="medkg extension: cut to the budget.")
    truncate_prompt_tokens = serializers.IntegerField(
        required=False, help_text="vLLM's extension: any value >= 1 turns `truncate` on (cut to the budget)."
    )

    def validate_input(self, value: Any) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts:
            raise serializers.ValidationError("Must be a non-empty string or a non-empty list of strings.")
        if any(type(item) in (int, list) for item in texts):  # bool is not a token id
            raise UnsupportedInput("Token-id input is not supported; send text.", details={"field": "input"})
        check_text_count(len(texts))
        field = TextsField()
        return field.run_validation(texts)  # type: ignore[no-any-return]


class OpenAIEmbeddingItemSerializer(serializers.Serializer):
    object = serializers.CharField(default="embedding")
    index = serializers.IntegerField()
    embedding = EncodedVectorField(help_text="Written as the request's encoding_format.")


class OpenAIEmbeddingsOutputSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = OpenAIEmbeddingItemSerializer(many=True)  # type: ignore[assignment]  # OpenAI's field name
    model = serializers.CharField()
    usage = UsageSerializer()


class OpenAIEmbeddingsView(APIView):
    """OpenAI-compatible: `model` is a namespace name, the tenant comes from the bearer token."""

    required_scope = "embed:write"
    quota_operation = "embed"

    @extend_schema(
        request=OpenAIEmbeddingsInputSerializer,
        responses={200: OpenAIEmbeddingsOutputSerializer, 503: PROVIDER_UNAVAILABLE},
        parameters=[SERVED_BY],
        operation_id="openai_embeddings",
    )
    def post(self, request: Request) -> Response:
        check_claimed_tenant(request)  # a medkg extension field, checked like every other endpoint's
        payload = OpenAIEmbeddingsInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        namespace = namespace_granted(request, name=data["model"], scope=self.required_scope)
        with request_observed(namespace=namespace.name, endpoint="openai_embeddings"):
            truncate = data["truncate"] or data.get("truncate_prompt_tokens", 0) >= 1
            batch = embeddings_compute_failover(
                namespace=namespace,
                texts=data["input"],
                truncate=truncate,
                input_type=data["input_type"],
                dimensions=data.get("dimensions"),
            )
        encoded = vectors_encoded(batch.vectors, data["encoding_format"])
        body = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(encoded)],
            "model": batch.namespace.name,
            "usage": _usage(batch),
        }
        # to_representation, not .data: OpenAI's field named `data` hides the property from the type checker.
        return _served(request, batch, OpenAIEmbeddingsOutputSerializer().to_representation(body))
