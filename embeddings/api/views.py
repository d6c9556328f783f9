"""Embedding endpoints: parse, check access, call the service, shape the answer."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings.api.serializers import (
    EmbedInputSerializer,
    EmbedOutputSerializer,
    OpenAIEmbeddingsInputSerializer,
    OpenAIEmbeddingsOutputSerializer,
)
from embeddings.failover import embeddings_compute_failover
from embeddings.metrics import request_observed
from embeddings.services import EmbeddingBatch, SparseBatch, sparse_compute
from medkg.api.access import namespace_granted
from medkg.api.exceptions import error_body
from medkg.api.permissions import check_claimed_tenant, principal_of
from medkg.api.schema import ErrorSerializer
from medkg.errors import InvalidRequest
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


class EmbedView(APIView):
    required_scope = "embed:write"

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
        with request_observed(namespace=namespace.name, endpoint="embed"):
            if namespace.kind == NamespaceKind.SPARSE:
                sparse = sparse_compute(
                    namespace=namespace,
                    texts=data["texts"],
                    query=options.get("input_type") == "query",
                    truncate=options.get("truncate", False),
                )
                return _served(request, sparse, _sparse_response(sparse))
            batch = embeddings_compute_failover(
                namespace=namespace,
                texts=data["texts"],
                normalize=options.get("normalize"),
                truncate=options.get("truncate", False),
            )
        return _served(request, batch, _embed_response(batch))


def _served(request: Request, batch: EmbeddingBatch | SparseBatch, body: dict[str, object]) -> Response:
    """The answer, named by the namespace that computed it, with the tokens charged to the tenant's quota."""
    quota_charge_tokens(tenant=principal_of(request).tenant, tokens=batch.total_tokens)
    return Response(body, headers={SERVED_BY_HEADER: batch.namespace.name})


def _response(
    batch: EmbeddingBatch | SparseBatch, key: str, values: Sequence[object], dim: int | None, normalized: bool
) -> dict[str, object]:
    truncated = set(batch.truncated)
    return {
        "namespace": batch.namespace.name,
        "model": batch.namespace.model_id,
        "model_version": batch.namespace.model_version,
        "kind": batch.namespace.kind,
        "dim": dim,
        "normalized": normalized,
        "embeddings": [
            {"text_index": i, key: value, "token_count": count, "truncated": i in truncated}
            for i, (value, count) in enumerate(zip(values, batch.token_counts, strict=True))
        ],
        "usage": {"prompt_tokens": batch.total_tokens, "total_tokens": batch.total_tokens},
    }


def _sparse_response(batch: SparseBatch) -> dict[str, object]:
    return _response(batch, "terms", batch.terms, batch.namespace.dim, normalized=False)


def _embed_response(batch: EmbeddingBatch) -> dict[str, object]:
    return _response(batch, "vector", list(batch.vectors), int(batch.vectors.shape[1]), batch.normalized)


class OpenAIEmbeddingsView(APIView):
    """OpenAI-compatible: `model` is a namespace name, the tenant comes from the bearer token."""

    required_scope = "embed:write"

    @extend_schema(
        request=OpenAIEmbeddingsInputSerializer,
        responses={200: OpenAIEmbeddingsOutputSerializer, 503: PROVIDER_UNAVAILABLE},
        parameters=[SERVED_BY],
        operation_id="openai_embeddings",
    )
    def post(self, request: Request) -> Response:
        payload = OpenAIEmbeddingsInputSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        namespace = namespace_granted(request, name=data["model"], scope=self.required_scope)
        if "dimensions" in data and data["dimensions"] != namespace.dim:
            raise InvalidRequest(
                f"Namespace {namespace.name} produces {namespace.dim} dimensions, not {data['dimensions']}.",
                details={"dimensions": namespace.dim},
            )
        with request_observed(namespace=namespace.name, endpoint="openai_embeddings"):
            truncate = data["truncate"] or data.get("truncate_prompt_tokens", 0) >= 1
            batch = embeddings_compute_failover(namespace=namespace, texts=data["input"], truncate=truncate)
        as_base64 = data["encoding_format"] == "base64"
        return _served(
            request,
            batch,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": _encode(vector, as_base64)}
                    for i, vector in enumerate(batch.vectors)
                ],
                "model": batch.namespace.name,
                "usage": {"prompt_tokens": batch.total_tokens, "total_tokens": batch.total_tokens},
            },
        )


def _encode(vector: np.ndarray, as_base64: bool) -> object:
    if as_base64:
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector
