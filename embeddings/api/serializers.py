"""Input and output shapes of the embedding endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from medkg.api.fields import NoUnknownFieldsSerializer, StrictBooleanField, StrictCharField, StrictIntegerField
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
    input_type = serializers.ChoiceField(
        choices=["document", "query"],
        required=False,
        default="document",
        help_text="Sparse namespaces: which side's expansion limits apply (documents keep more terms).",
    )


class EmbedInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(required=False, max_length=200, help_text="Must equal the token's tenant when given.")
    namespace = StrictCharField(max_length=200)
    texts = TextsField()
    options = EmbedOptionsSerializer(required=False)


class EmbeddingOutputSerializer(serializers.Serializer):
    text_index = serializers.IntegerField()
    vector = serializers.ListField(child=serializers.FloatField(), required=False, help_text="Dense namespaces.")
    terms = serializers.DictField(
        child=serializers.FloatField(), required=False, help_text="Sparse namespaces: term -> weight > 0."
    )
    token_count = serializers.IntegerField()
    truncated = serializers.BooleanField()


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class EmbedOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    kind = serializers.ChoiceField(choices=["single_vector", "sparse"])
    dim = serializers.IntegerField(allow_null=True, help_text="Vocabulary size for sparse namespaces; null for auto.")
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


# --- documents, jobs and search ---

MAX_METADATA_BYTES = 16 * 1024
METADATA_SCALARS = (str, int, float, bool)


def _reject_nul(value: Any, where: str) -> None:
    """PostgreSQL text and jsonb cannot hold NUL: refuse it here rather than fail at the database."""
    if isinstance(value, str) and "\x00" in value:
        raise serializers.ValidationError(f"{where} contains a NUL character.")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key, where)
            _reject_nul(item, where)
    if isinstance(value, list):
        for item in value:
            _reject_nul(item, where)


class MetadataField(serializers.DictField):
    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be an object.")
        _reject_nul(data, "metadata")
        try:
            size = len(orjson.dumps(data))
        except (TypeError, orjson.JSONEncodeError) as error:
            raise serializers.ValidationError(f"Not JSON: {error}") from error
        if size > MAX_METADATA_BYTES:
            raise serializers.ValidationError(f"metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}.")
        return data


class DocumentInputSerializer(NoUnknownFieldsSerializer):
    id = StrictCharField(max_length=256, allow_blank=False, trim_whitespace=False)
    text = StrictCharField(allow_blank=False, trim_whitespace=False, max_length=settings.MEDKG_MAX_TEXT_CHARS)
    metadata = MetadataField(required=False, default=dict)

    def validate_id(self, value: str) -> str:
        _reject_nul(value, "id")
        return value

    def validate_text(self, value: str) -> str:
        _reject_nul(value, "text")
        if not value.strip():
            raise serializers.ValidationError("text is blank.")
        return value


def check_document_count(count: int) -> None:
    limit = settings.MEDKG_MAX_DOCUMENTS_PER_REQUEST
    if count > limit:
        raise PayloadTooLarge(f"{count} documents in one request; the limit is {limit}.", details={"limit": limit})


class DocumentsField(serializers.ListField):
    def to_internal_value(self, data: Any) -> list[Any]:
        if isinstance(data, list):
            check_document_count(len(data))
        return super().to_internal_value(data)  # type: ignore[no-any-return]


class DocumentsUpsertInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(max_length=200, help_text="Must equal the token's tenant.")
    documents = DocumentsField(
        child=DocumentInputSerializer(), allow_empty=False, max_length=settings.MEDKG_MAX_DOCUMENTS_PER_REQUEST
    )


class DocumentIdsField(serializers.ListField):
    def to_internal_value(self, data: Any) -> list[Any]:
        if isinstance(data, list):
            check_document_count(len(data))
        values = super().to_internal_value(data)
        for value in values:
            _reject_nul(value, "ids")
        return values  # type: ignore[no-any-return]


class DocumentsDeleteInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(max_length=200, help_text="Must equal the token's tenant.")
    ids = DocumentIdsField(
        child=StrictCharField(max_length=256, allow_blank=False, trim_whitespace=False),
        allow_empty=False,
        max_length=settings.MEDKG_MAX_DOCUMENTS_PER_REQUEST,
    )


class JobAcceptedOutputSerializer(serializers.Serializer):
    job_id = serializers.UUIDField()
    status = serializers.CharField()
    accepted = serializers.IntegerField()
    status_url = serializers.CharField()


class JobOutputSerializer(serializers.Serializer):
    job_id = serializers.UUIDField(source="pk")
    namespace = serializers.CharField(source="namespace.name")
    kind = serializers.CharField()
    status = serializers.CharField()
    total = serializers.IntegerField()
    processed = serializers.IntegerField()
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


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
        _reject_nul(values, "filters")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class SearchInputSerializer(NoUnknownFieldsSerializer):
    tenant_id = StrictCharField(max_length=200, help_text="Must equal the token's tenant.")
    query = StrictCharField(allow_blank=False, trim_whitespace=False, max_length=settings.MEDKG_MAX_TEXT_CHARS)
    k = StrictIntegerField(min_value=1, max_value=settings.MEDKG_MAX_SEARCH_K, default=10)
    filters = serializers.DictField(child=FilterValueField(), required=False, default=dict)

    def validate_query(self, value: str) -> str:
        _reject_nul(value, "query")
        return value

    def validate_filters(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) > 20:
            raise serializers.ValidationError("At most 20 filter keys.")
        for key in value:
            if not key or "__" in key or len(key) > 64 or "\x00" in key:
                raise serializers.ValidationError(f"{key[:64]!r} is not a metadata key (1-64 characters, no '__').")
        return value


class SearchHitOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    score = serializers.FloatField()
    metadata = serializers.DictField()


class SearchOutputSerializer(serializers.Serializer):
    namespace = serializers.CharField()
    model = serializers.CharField()
    model_version = serializers.CharField()
    hits = SearchHitOutputSerializer(many=True)


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
    namespace = serializers.CharField()
    weight = serializers.FloatField()
    model = serializers.CharField()
    model_version = serializers.CharField()


class HybridSearchOutputSerializer(serializers.Serializer):
    fusion = serializers.CharField()
    namespaces = HybridPartOutputSerializer(many=True)
    offset = serializers.IntegerField()
    k = serializers.IntegerField()
    next_offset = serializers.IntegerField(allow_null=True)
    hits = HybridHitOutputSerializer(many=True)
