"""Strict serializer fields: a number is not a text, and unknown keys are typos worth reporting."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.errors import PayloadTooLarge


class StrictCharField(serializers.CharField):
    default_error_messages = {"invalid": "Must be a string."}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class NoUnknownFieldsSerializer(serializers.Serializer):
    def to_internal_value(self, data: Any) -> Any:
        # Checked here, not in validate(): nested serializers have no initial_data.
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        if unknown:
            raise serializers.ValidationError(dict.fromkeys((str(name)[:100] for name in unknown), "Unknown field."))
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "Must be an integer."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)  # type: ignore[no-any-return]


def optional_count_field(*, limit: int, help_text: str) -> StrictIntegerField:
    """An optional count of results from 1 to `limit` (top_n, depth)."""
    return StrictIntegerField(required=False, min_value=1, max_value=limit, help_text=help_text)


@extend_schema_field(
    {
        "anyOf": [
            {"type": "array", "items": {"type": "number"}},
            {"type": "array", "items": {"type": "integer"}},
            {"type": "string", "format": "byte"},
        ]
    }
)
class EncodedVectorField(serializers.Field):
    """A vector as its encoding_format wrote it (numbers, integers or base64); numpy rows go to the orjson
    renderer as they are (the hot path)."""

    def to_representation(self, value: Any) -> Any:
        return value


# --- limits shared by the endpoints that take texts and documents ---


def check_text_count(count: int) -> None:
    limit = settings.MEDKG_MAX_TEXTS_PER_REQUEST
    if count > limit:
        raise PayloadTooLarge(f"{count} texts in one request; the limit is {limit}.", details={"limit": limit})


def check_document_count(count: int) -> None:
    limit = settings.MEDKG_MAX_DOCUMENTS_PER_REQUEST
    if count > limit:
        raise PayloadTooLarge(f"{count} documents in one request; the limit is {limit}.", details={"limit": limit})


def reject_nul(value: Any, where: str) -> None:
    """PostgreSQL text and jsonb cannot hold NUL: refuse it here rather than fail at the database."""
    if isinstance(value, str) and "\x00" in value:
        raise serializers.ValidationError(f"{where} contains a NUL character.")
    if isinstance(value, dict):
        for key, item in value.items():
            reject_nul(key, where)
            reject_nul(item, where)
    if isinstance(value, list):
        for item in value:
            reject_nul(item, where)


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


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
