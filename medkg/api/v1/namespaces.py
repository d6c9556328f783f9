"""GET /v1/namespaces (what the tenant may use), POST /v1/namespaces/{ns}/validate (texts against the budget) and
POST /v1/namespaces/{ns}/tokenize (texts as the model tokenizes them)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings.metrics import request_observed
from embeddings.services import INPUT_TYPES, texts_check_budget, texts_tokenize
from medkg.api.access import namespace_granted
from medkg.api.fields import NoUnknownFieldsSerializer, StrictCharField, TextsField
from medkg.api.permissions import check_claimed_tenant, principal_of
from namespaces.models import Namespace, Tenant
from namespaces.selectors import namespace_list_for_tenant


class NamespaceInfoSerializer(serializers.ModelSerializer):
    """What a tenant may know of a namespace. Other tenants' names are never shown to it."""

    allowed_tenants = serializers.SerializerMethodField()
    matryoshka_dims = serializers.ListField(
        child=serializers.IntegerField(), help_text="Sizes below dim that `dimensions` may ask for."
    )
    aliases: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        many=True,
        read_only=True,
        slug_field="name",
        help_text="Stable names that resolve to this version now (usable wherever a namespace name is).",
    )

    class Meta:
        model = Namespace
        fields = [
            "name",
            "kind",
            "provider",
            "model_id",
            "model_version",
            "dim",
            "matryoshka_dims",
            "max_tokens",
            "tokenizer",
            "pooling",
            "normalize",
            "query_prompt",
            "document_prompt",
            "batch_size",
            "requires_gpu",
            "enabled",
            "allowed_scopes",
            "allowed_tenants",
            "aliases",
            "description",
        ]

    def get_allowed_tenants(self, namespace: Namespace) -> str | list[str]:
        if namespace.allow_all_tenants:
            return "all"
        # Only the caller itself: listing the other grantees would reveal other tenants.
        viewer: Tenant | None = self.context.get("tenant")
        return [
            tenant.slug for tenant in namespace.allowed_tenants.all() if viewer is not None and tenant.pk == viewer.pk
        ]


class NamespaceListOutputSerializer(serializers.Serializer):
    namespaces = NamespaceInfoSerializer(many=True)


class NamespaceListView(APIView):
    required_scope = "embed:read"

    @extend_schema(responses={200: NamespaceListOutputSerializer}, operation_id="namespace_list")
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        namespaces = namespace_list_for_tenant(tenant=principal.tenant)
        body = {"namespaces": namespaces}
        return Response(NamespaceListOutputSerializer(body, context={"tenant": principal.tenant}).data)


class ValidateInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(required=False, max_length=200)
    texts = TextsField()
    input_type = serializers.ChoiceField(
        choices=list(INPUT_TYPES),
        default="document",
        help_text="Count each text as a query or a document (default): the namespace's prompt for it is counted.",
    )


class ValidationResultSerializer(serializers.Serializer):
    text_index = serializers.IntegerField()
    token_count = serializers.IntegerField()
    exceeds_budget = serializers.BooleanField()
    warning = serializers.CharField(allow_null=True)


class ValidateOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    max_tokens = serializers.IntegerField()
    valid = serializers.BooleanField()
    results = ValidationResultSerializer(many=True)


def _texts_request(
    request: Request, namespace: str, serializer: type[serializers.Serializer], scope: str
) -> tuple[serializers.Serializer, Namespace]:
    """The checked payload of a texts request (/validate, /tokenize) and the namespace granted for it."""
    check_claimed_tenant(request)
    payload = serializer(data=request.data)
    payload.is_valid(raise_exception=True)
    return payload, namespace_granted(request, name=namespace, scope=scope)


class NamespaceValidateView(APIView):
    required_scope = "embed:read"

    @extend_schema(
        request=ValidateInputSerializer, responses={200: ValidateOutputSerializer}, operation_id="namespace_validate"
    )
    def post(self, request: Request, namespace: str) -> Response:
        payload, found = _texts_request(request, namespace, ValidateInputSerializer, self.required_scope)
        with request_observed(namespace=found.name, endpoint="namespace_validate"):
            checks = texts_check_budget(
                namespace=found,
                texts=payload.validated_data["texts"],
                input_type=payload.validated_data["input_type"],
            )
        body = {
            "namespace": found.name,
            "max_tokens": found.max_tokens,
            "valid": not any(check.exceeds_budget for check in checks),
            "results": checks,
        }
        return Response(ValidateOutputSerializer(body).data)


class TokenizeInputSerializer(ValidateInputSerializer):
    pass


class TokenizedSerializer(serializers.Serializer):
    text_index = serializers.IntegerField()
    token_count = serializers.IntegerField()
    ids = serializers.ListField(child=serializers.IntegerField())
    tokens = serializers.ListField(child=serializers.CharField(allow_blank=True, trim_whitespace=False))


class TokenizeOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    max_tokens = serializers.IntegerField()
    results = TokenizedSerializer(many=True)


class NamespaceTokenizeView(APIView):
    """Each text as the namespace's model tokenizes it (prompt and special tokens included, untruncated): its local
    tokenizer, or the serving backend's own (vLLM's /tokenize) where none is installed."""

    required_scope = "embed:read"

    @extend_schema(
        request=TokenizeInputSerializer, responses={200: TokenizeOutputSerializer}, operation_id="namespace_tokenize"
    )
    def post(self, request: Request, namespace: str) -> Response:
        payload, found = _texts_request(request, namespace, TokenizeInputSerializer, self.required_scope)
        with request_observed(namespace=found.name, endpoint="namespace_tokenize"):
            tokenized = texts_tokenize(
                namespace=found, texts=payload.validated_data["texts"], input_type=payload.validated_data["input_type"]
            )
        results = [
            {"text_index": i, "token_count": len(item.ids), "ids": item.ids, "tokens": item.tokens}
            for i, item in enumerate(tokenized)
        ]
        body = {"namespace": found.name, "max_tokens": found.max_tokens, "results": results}
        return Response(TokenizeOutputSerializer(body).data)
