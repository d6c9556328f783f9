"""POST /v1/namespaces/{ns}/search (one namespace) and POST /v1/search (several, fused): the caller's tenant only."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings.metrics import request_observed
from embeddings.selectors import HybridPart, documents_search, hybrid_search
from embeddings.services import texts_token_counts
from medkg.api.access import namespace_granted
from medkg.api.fields import NoUnknownFieldsSerializer, StrictCharField, StrictIntegerField, reject_nul
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


class SearchInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(max_length=200, help_text="Must equal the token's tenant.")
    query = StrictCharField(allow_blank=False, trim_whitespace=False, max_length=settings.MEDKG_MAX_TEXT_CHARS)
    k = StrictIntegerField(min_value=1, max_value=settings.MEDKG_MAX_SEARCH_K, default=10)
    filters = serializers.DictField(child=FilterValueField(), required=False, default=dict)

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


class SearchHitOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    score = serializers.FloatField()
    metadata = serializers.DictField()


class SearchOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    hits = SearchHitOutputSerializer(many=True)


class SearchView(APIView):
    required_scope = "embed:read"
    quota_operation = "search"

    @extend_schema(request=SearchInputSerializer, responses={200: SearchOutputSerializer}, operation_id="search")
    def post(self, request: Request, namespace: str) -> Response:
        data = payload_of(request, SearchInputSerializer)
        granted = namespace_granted(request, name=namespace, scope=self.required_scope)
        with request_observed(namespace=granted.name, endpoint="search"):
            hits = documents_search(
                namespace=granted,
                tenant=principal_of(request).tenant,
                query=data["query"],
                k=data["k"],
                filters=data["filters"],
            )
        _charge_query(principal_of(request).tenant, data["query"], [granted])
        body = {"namespace": granted.name, "model": granted.model_id, "model_version": granted.model_version}
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
        return attrs


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
        with request_observed(namespace="hybrid", endpoint="hybrid_search"):
            page = hybrid_search(
                tenant=principal_of(request).tenant,
                query=data["query"],
                parts=parts,
                method=data["fusion"],
                k=data["k"],
                offset=data["offset"],
                depth=data["depth"],
                rrf_k=data["rrf_k"],
                filters=data["filters"],
            )
        _charge_query(principal_of(request).tenant, data["query"], [part.namespace for part in parts])
        body = {
            "fusion": data["fusion"],
            "namespaces": parts,
            "offset": page.offset,
            "k": data["k"],
            "next_offset": page.offset + data["k"] if page.has_more else None,
            "hits": page.hits,
        }
        return Response(HybridSearchOutputSerializer(body).data)
