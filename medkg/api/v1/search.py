"""POST /v1/namespaces/{ns}/search (one namespace) and POST /v1/search (several, fused): the caller's tenant only.

Either may end with a rerank stage: a reranker namespace (granted as for /v1/rerank) reorders the best candidates.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings.metrics import request_observed
from embeddings.query_samples import query_sample_maybe
from embeddings.reranking import Hit, hits_rerank
from embeddings.selectors import HybridPart, documents_search, hybrid_search
from embeddings.services import texts_token_counts
from medkg.api.access import namespace_granted
from medkg.api.fields import (
    NoUnknownFieldsSerializer,
    StrictCharField,
    StrictIntegerField,
    optional_count_field,
    reject_nul,
)
from medkg.api.permissions import payload_of, principal_of
from namespaces.models import Namespace, Tenant
from namespaces.quotas import quota_charge_tokens

METADATA_SCALARS = (str, int, float, bool)


@extend_schema_field(
    {
        "oneOf": [
            {"type": ["string", "number", "boolean"]},
            {"type": "array", "items": {"type": ["string", "number", "boolean"]}, "minItems": 1, "maxItems": 100},
        ]
    }
)
class FilterValueField(serializers.Field):
    def to_internal_value(self, data: Any) -> Any:
        values = data if isinstance(data, list) else [data]
        if not values or len(values) > 100 or not all(isinstance(value, METADATA_SCALARS) for value in values):
            raise serializers.ValidationError("A filter value is a string, number, boolean or a list of up to 100.")
        reject_nul(values, "filters")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class RerankStageSerializer(NoUnknownFieldsSerializer):
    namespace = StrictCharField(max_length=200, help_text="A reranker namespace, granted as for /v1/rerank.")
    top_n = optional_count_field(
        limit=settings.MEDKG_MAX_SEARCH_K,
        help_text="How many hits to return after reranking (the search's k when omitted).",
    )
    depth = optional_count_field(
        limit=settings.MEDKG_MAX_RERANK_DOCUMENTS,
        help_text="Candidates retrieved and reranked: at least (offset +) top_n; max(top_n, 50) when omitted.",
    )


class SearchInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(max_length=200, help_text="Must equal the token's tenant.")
    query = StrictCharField(allow_blank=False, trim_whitespace=False, max_length=settings.MEDKG_MAX_TEXT_CHARS)
    k = StrictIntegerField(min_value=1, max_value=settings.MEDKG_MAX_SEARCH_K, default=10)
    filters = serializers.DictField(child=FilterValueField(), required=False, default=dict)
    rerank = RerankStageSerializer(
        required=False, help_text="Reorder the best `depth` candidates with a reranker namespace; return `top_n`."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        stage = attrs.get("rerank")
        if stage is None:
            return attrs
        top_n = stage.setdefault("top_n", attrs["k"])
        depth = stage.setdefault("depth", min(max(top_n, 50), settings.MEDKG_MAX_RERANK_DOCUMENTS))
        offset = attrs.get("offset", 0)  # hybrid search pages through the reranked candidates
        if depth < offset + top_n:
            needed = "offset + top_n" if "offset" in attrs else "top_n"
            raise serializers.ValidationError({"rerank": {"depth": [f"depth {depth} is less than {needed}."]}})
        return attrs

    def validate_query(self, value: str) -> str:
        reject_nul(value, "query")
        return value

    def validate_filters(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > 20:
            raise serializers.ValidationError("At most 20 filter keys.")
        for key in value:
            if not key or "__" in key or len(key) > 64 or "\x00" in key:
                raise serializers.ValidationError(f"{key[:64]!r} is not a metadata key (1-64 characters, no '__').")
        return value


def _charge_query(tenant: Tenant, query: str, namespaces: list[Namespace]) -> None:
    """Charge the tenant's token quota for the query, embedded once per namespace searched (as /v1/embed counts)."""
    tokens = sum(
        sum(texts_token_counts(namespace=namespace, texts=[query], input_type="query")) for namespace in namespaces
    )
    quota_charge_tokens(tenant=tenant, tokens=tokens)


def _reranker_granted(request: Request, data: dict[str, Any]) -> Namespace | None:
    stage = data.get("rerank")
    return None if stage is None else namespace_granted(request, name=stage["namespace"], scope="embed:read")


def _reranked(
    request: Request, reranker: Namespace, query: str, hits: list[Hit], searched: list[Namespace]
) -> list[Hit]:
    """Every candidate reordered by the reranker, best first; its tokens are charged as /v1/rerank charges them."""
    tenant = principal_of(request).tenant
    with request_observed(namespace=reranker.name, endpoint="search_rerank"):
        reranked = hits_rerank(namespace=reranker, tenant=tenant, query=query, hits=hits, searched=searched)
    quota_charge_tokens(tenant=tenant, tokens=reranked.token_count)
    return reranked.hits


class SearchHitOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    score = serializers.FloatField()
    metadata = serializers.DictField()
    rerank_score = serializers.FloatField(required=False, help_text="The reranker's score (only with rerank).")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        body: dict[str, Any] = super().to_representation(instance)
        if body.get("rerank_score") is None:
            body.pop("rerank_score", None)
        return body


RERANKER_HELP = "The reranker namespace that ordered the hits (only with rerank)."


class SearchOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    reranker = serializers.CharField(required=False, help_text=RERANKER_HELP)
    hits = SearchHitOutputSerializer(many=True)


class SearchView(APIView):
    required_scope = "embed:read"
    quota_operation = "search"

    @extend_schema(request=SearchInputSerializer, responses={200: SearchOutputSerializer}, operation_id="search")
    def post(self, request: Request, namespace: str) -> Response:
        data = payload_of(request, SearchInputSerializer)
        granted = namespace_granted(request, name=namespace, scope=self.required_scope)
        reranker = _reranker_granted(request, data)
        with request_observed(namespace=granted.name, endpoint="search"):
            hits = documents_search(
                namespace=granted,
                tenant=principal_of(request).tenant,
                query=data["query"],
                k=data["rerank"]["depth"] if reranker else data["k"],
                filters=data["filters"],
            )
        _charge_query(principal_of(request).tenant, data["query"], [granted])
        query_sample_maybe(namespaces=[granted], tenant=principal_of(request).tenant, query=data["query"])
        body = {"namespace": granted.name, "model": granted.model_id, "model_version": granted.model_version}
        if reranker:
            hits = _reranked(request, reranker, data["query"], hits, [granted])[: data["rerank"]["top_n"]]
            body["reranker"] = reranker.name
        return Response(SearchOutputSerializer({**body, "hits": hits}).data)


# --- hybrid ---


class HybridNamespaceSerializer(NoUnknownFieldsSerializer):
    namespace = StrictCharField(max_length=200)
    weight = serializers.FloatField(min_value=0.0, max_value=100.0, default=1.0)


class HybridNamespacesField(serializers.ListField):
    child = HybridNamespaceSerializer()

    def to_internal_value(self, data: Any) -> list[Any]:
        if not isinstance(data, list) or not 1 <= len(data) <= 5:
            raise serializers.ValidationError("A list of 1 to 5 {namespace, weight} objects.")
        parts = super().to_internal_value(data)
        names = [part["namespace"] for part in parts]
        if len(set(names)) != len(names):
            raise serializers.ValidationError("Each namespace may appear once.")
        return parts  # type: ignore[no-any-return]


class HybridSearchInputSerializer(SearchInputSerializer):
    namespaces = HybridNamespacesField(help_text="The namespaces to fuse, each with a weight (default 1).")
    fusion = serializers.ChoiceField(choices=["rrf", "minmax"], default="rrf")
    rrf_k = StrictIntegerField(min_value=1, max_value=1000, default=60, help_text="RRF's k (60 in the paper).")
    offset = StrictIntegerField(min_value=0, max_value=settings.MEDKG_MAX_SEARCH_K, default=0)
    depth = StrictIntegerField(
        min_value=1,
        max_value=settings.MEDKG_MAX_SEARCH_K,
        default=100,
        help_text="Candidates taken from each namespace before fusion (at least offset + k).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["offset"] + attrs["k"] > settings.MEDKG_MAX_SEARCH_K:
            raise serializers.ValidationError({"offset": f"offset + k may not exceed {settings.MEDKG_MAX_SEARCH_K}."})
        return super().validate(attrs)


class HybridSourceSerializer(serializers.Serializer):
    rank = serializers.IntegerField()
    score = serializers.FloatField()


class HybridHitOutputSerializer(SearchHitOutputSerializer):
    sources = serializers.DictField(child=HybridSourceSerializer(), help_text="namespace -> its own rank and score")


class HybridPartOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField(source="namespace.name")
    weight = serializers.FloatField()
    model = serializers.CharField(source="namespace.model_id")
    model_version = serializers.CharField(source="namespace.model_version")


class HybridSearchOutputSerializer(serializers.Serializer):
    fusion = serializers.CharField()
    namespaces = HybridPartOutputSerializer(many=True)
    offset = serializers.IntegerField()
    k = serializers.IntegerField()
    next_offset = serializers.IntegerField(allow_null=True)
    reranker = serializers.CharField(required=False, help_text=RERANKER_HELP)
    hits = HybridHitOutputSerializer(many=True)


class HybridSearchView(APIView):
    """Search several namespaces of the caller's tenant at once and fuse the rankings (RRF or min-max)."""

    required_scope = "embed:read"
    quota_operation = "search"

    @extend_schema(
        request=HybridSearchInputSerializer, responses={200: HybridSearchOutputSerializer}, operation_id="hybrid_search"
    )
    def post(self, request: Request) -> Response:
        data = payload_of(request, HybridSearchInputSerializer)
        parts: list[HybridPart] = []
        for item in data["namespaces"]:
            granted = namespace_granted(request, name=item["namespace"], scope=self.required_scope)
            if all(part.namespace.pk != granted.pk for part in parts):  # two names routed to one namespace
                parts.append(HybridPart(namespace=granted, weight=item["weight"]))
        reranker = _reranker_granted(request, data)
        stage = data.get("rerank")
        searched = [part.namespace for part in parts]
        with request_observed(namespace="hybrid", endpoint="hybrid_search"):
            page = hybrid_search(
                tenant=principal_of(request).tenant,
                query=data["query"],
                parts=parts,
                method=data["fusion"],
                k=stage["depth"] if stage else data["k"],
                offset=0 if stage else data["offset"],  # a reranked page is a page of the reranker's order
                depth=max(data["depth"], stage["depth"]) if stage else data["depth"],
                rrf_k=data["rrf_k"],
                filters=data["filters"],
            )
        _charge_query(principal_of(request).tenant, data["query"], searched)
        query_sample_maybe(namespaces=searched, tenant=principal_of(request).tenant, query=data["query"])
        offset, size = data["offset"], stage["top_n"] if stage else data["k"]
        hits, has_more = page.hits, page.has_more
        if reranker:
            ordered = _reranked(request, reranker, data["query"], page.hits, searched)
            hits, has_more = ordered[offset : offset + size], len(ordered) > offset + size
        body = {
            "fusion": data["fusion"],
            "namespaces": parts,
            "offset": offset,
            "k": size,
            "next_offset": offset + size if has_more else None,
            "hits": hits,
            **({"reranker": reranker.name} if reranker else {}),
        }
        return Response(HybridSearchOutputSerializer(body).data)
