"""Shapes of the namespace endpoints."""

from __future__ import annotations

from rest_framework import serializers

from embeddings.api.serializers import TextsField
from medkg.api.fields import NoUnknownFieldsSerializer, StrictCharField
from namespaces.models import Namespace, Tenant


class NamespaceInfoSerializer(serializers.ModelSerializer):
    """What a tenant may know of a namespace. Other tenants' names are never shown to it."""

    allowed_tenants = serializers.SerializerMethodField()

    class Meta:
        model = Namespace
        fields = [
            "name",
            "kind",
            "provider",
            "model_id",
            "model_version",
            "dim",
            "max_tokens",
            "tokenizer",
            "pooling",
            "normalize",
            "batch_size",
            "requires_gpu",
            "enabled",
            "allowed_scopes",
            "allowed_tenants",
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


class ValidateInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(required=False, max_length=200)
    texts = TextsField()


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
