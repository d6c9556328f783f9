"""POST /v1/rerank: a reranker namespace's relevance of each document to a query, best first.

The body is the shape Cohere, Jina, TEI and vLLM rerank clients send (query, documents, top_n, return_documents),
with medkg's namespace in place of their model (or named `model`, as they send it) and the caller's tenant checked
like every endpoint's.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import PayloadTooLarge
from embeddings.metrics import request_observed
from embeddings.reranking import Reranking, documents_rerank
from medkg.api.access import namespace_granted
from medkg.api.fields import (
    NoUnknownFieldsSerializer,
    StrictBooleanField,
    StrictCharField,
    UsageSerializer,
    optional_count_field,
    reject_nul,
)
from medkg.api.permissions import payload_of, principal_of
from namespaces.quotas import quota_charge_tokens


def _text_field(**kwargs: Any) -> StrictCharField:
    return StrictCharField(allow_blank=False, trim_whitespace=False, max_length=settings.MEDKG_MAX_TEXT_CHARS, **kwargs)


class RerankDocumentsField(serializers.ListField):
    def __init__(self, **kwargs: Any) -> None:
        # min_length/max_length only for the schema: emptiness (400) and the count (413) are checked first.
        super().__init__(
            child=_text_field(),
            allow_empty=False,
            min_length=1,
            max_length=settings.MEDKG_MAX_RERANK_DOCUMENTS,
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> list[str]:
        limit = settings.MEDKG_MAX_RERANK_DOCUMENTS
        if isinstance(data, list) and len(data) > limit:
            raise PayloadTooLarge(
                f"{len(data)} documents to rerank in one request; the limit is {limit}.", details={"limit": limit}
            )
        documents: list[str] = super().to_internal_value(data)
        reject_nul(documents, "documents")
        return documents


class RerankInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(required=False, max_length=200, help_text="Must equal the token's tenant when given.")
    namespace = StrictCharField(
        required=False, max_length=200, help_text="A reranker namespace, e.g. reranker.minilm-ce.auto.v1."
    )
    model = StrictCharField(
        required=False, max_length=200, help_text="Cohere's name for `namespace`: send one of the two (or both equal)."
    )
    query = _text_field()
    documents = RerankDocumentsField(help_text="The texts to score against the query, each as one string.")
    top_n = optional_count_field(
        limit=settings.MEDKG_MAX_RERANK_DOCUMENTS,
        help_text="How many of the best documents to return (all when omitted; more than sent returns all).",
    )
    return_documents = StrictBooleanField(
        default=False, help_text="Include each result's text (`document.text`), as Cohere's and Jina's APIs do."
    )

    def validate_query(self, value: str) -> str:
        reject_nul(value, "query")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        names = {attrs[key] for key in ("namespace", "model") if key in attrs}
        if len(names) != 1:
            problem = "This field is required." if not names else "namespace and model name different namespaces."
            raise serializers.ValidationError({"namespace": [problem]})
        attrs["namespace"] = names.pop()
        return attrs


class RerankDocumentOutputSerializer(serializers.Serializer):
    text = serializers.CharField()


class RerankResultOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the document in the request's documents.")
    relevance_score = serializers.FloatField(help_text="The model's score of the pair: higher is more relevant.")
    document = RerankDocumentOutputSerializer(required=False, help_text="Only with return_documents.")


class RerankOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    results = RerankResultOutputSerializer(many=True, help_text="Best first; ties keep the documents' order.")
    usage = UsageSerializer(help_text="Tokens of every (query, document) pair, each cut to the budget.")


def _rerank_body(reranking: Reranking, documents: list[str], return_documents: bool) -> dict[str, Any]:
    """What RerankOutputSerializer renders; a result without `document` omits the key (a non-required field)."""
    results: list[dict[str, Any]] = [
        {"index": result.index, "relevance_score": result.relevance_score} for result in reranking.results
    ]
    if return_documents:
        results = [{**result, "document": {"text": documents[result["index"]]}} for result in results]
    namespace = reranking.namespace
    tokens = reranking.token_count
    return {
        "namespace": namespace.name,
        "model": namespace.model_id,
        "model_version": namespace.model_version,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class RerankView(APIView):
    required_scope = "embed:read"
    quota_operation = "rerank"

    @extend_schema(request=RerankInputSerializer, responses={200: RerankOutputSerializer}, operation_id="rerank")
    def post(self, request: Request) -> Response:
        data = payload_of(request, RerankInputSerializer)
        granted = namespace_granted(request, name=data["namespace"], scope=self.required_scope)
        with request_observed(namespace=granted.name, endpoint="rerank"):
            reranking = documents_rerank(
                namespace=granted, query=data["query"], documents=data["documents"], top_n=data.get("top_n")
            )
        quota_charge_tokens(tenant=principal_of(request).tenant, tokens=reranking.token_count)
        body = _rerank_body(reranking, data["documents"], data["return_documents"])
        return Response(RerankOutputSerializer(body).data)
