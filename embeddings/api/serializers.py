"""Input and output shapes of the embedding endpoints."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from medkg.api.fields import NoUnknownFieldsSerializer, StrictBooleanField, StrictCharField
from medkg.errors import PayloadTooLarge, UnsupportedInput


def check_text_count(count: int) -> None:
    limit = settings.MEDKG_MAX_TEXTS_PER_REQUEST
    if count > limit:
        raise PayloadTooLarge(f"{count} texts in one request; the limit is {limit}.", details={"limit": limit})


class TextsField(serializers.ListField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            child=StrictCharField(allow_blank=False, trim_whitespace=False, max_length=settings.MEDKG_MAX_TEXT_CHARS),
            allow_empty=False,
            # Only for the schema's minItems/maxItems: emptiness (400) and the count (413) are checked first.
            min_length=1,
            max_length=settings.MEDKG_MAX_TEXTS_PER_REQUEST,
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, list):
            check_text_count(len(data))
        return super().to_internal_value(data)  # type: ignore[no-any-return]


class EmbedOptionsSerializer(NoUnknownFieldsSerializer):
    normalize = StrictBooleanField(required=False, allow_null=True, default=None)
    truncate = StrictBooleanField(required=False, default=False)


class EmbedInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(required=False, max_length=200, help_text="Must equal the token's tenant when given.")
    namespace = StrictCharField(max_length=200)
    texts = TextsField()
    options = EmbedOptionsSerializer(required=False)


class EmbeddingOutputSerializer(serializers.Serializer):
    text_index = serializers.IntegerField()
    vector = serializers.ListField(child=serializers.FloatField())
    token_count = serializers.IntegerField()
    truncated = serializers.BooleanField()


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class EmbedOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    dim = serializers.IntegerField()
    normalized = serializers.BooleanField()
    embeddings = EmbeddingOutputSerializer(many=True)
    usage = UsageSerializer()


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
    encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False, default="float")
    dimensions = serializers.IntegerField(required=False, min_value=1)
    user = StrictCharField(required=False, max_length=500)
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
    embedding = serializers.JSONField(help_text="A list of floats, or base64 of little-endian float32.")


class OpenAIEmbeddingsOutputSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = OpenAIEmbeddingItemSerializer(many=True)  # type: ignore[assignment]  # OpenAI's field name
    model = serializers.CharField()
    usage = UsageSerializer()
