"""POST and DELETE /v1/namespaces/{ns}/documents: accept documents (or deletions) of the caller's tenant as a job."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings.ingestion import IncomingDocument, documents_accept, documents_delete
from embeddings.metrics import request_observed
from embeddings.models import IngestionJob
from medkg.api.access import namespace_granted
from medkg.api.exceptions import error_body
from medkg.api.fields import NoUnknownFieldsSerializer, StrictCharField, check_document_count, reject_nul
from medkg.api.permissions import payload_of, principal_of
from medkg.api.schema import ErrorSerializer

STORAGE_LIMIT_EXCEEDED = OpenApiResponse(
    response=ErrorSerializer,
    description=(
        "document_limit_exceeded or storage_limit_exceeded: accepting the documents would take the tenant past its "
        "limit of live documents or of stored bytes (UTF-8 text + metadata JSON), all namespaces together. Nothing "
        "of the request is stored; an update counts only its difference, and deletes free usage at once. "
        "details: kind (documents, bytes), limit, usage (stored now) and requested (what the request adds)."
    ),
    examples=[
        OpenApiExample(
            "storage_limit_exceeded",
            value=error_body(
                "storage_limit_exceeded",
                "Tenant acme stores 21474836000 bytes; 52000 more would pass its limit of 21474836480 bytes. "
                "Delete documents or ask for a higher limit.",
                {"kind": "bytes", "limit": 21474836480, "usage": 21474836000, "requested": 52000},
            ),
        )
    ],
)


def nesting_depth(value: Any, limit: int) -> int:
    """How deep objects and arrays nest in `value` (a flat object is 1), counting no further than limit + 1.

    Iterative, so a hostile document cannot exhaust the stack while it is measured.
    """
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if not isinstance(item, dict | list):
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children)
    return deepest


class MetadataField(serializers.DictField):
    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError("Must be an object.")
        limit = settings.MEDKG_METADATA_MAX_DEPTH
        if nesting_depth(data, limit) > limit:
            # Checked first and without recursion: deeper JSON than the renderer can write back would be
            # stored and then fail every search that returns it.
            raise serializers.ValidationError(f"metadata nests deeper than the limit of {limit} levels.")
        reject_nul(data, "metadata")
        try:
            size = len(orjson.dumps(data))
        except (TypeError, orjson.JSONEncodeError) as error:
            raise serializers.ValidationError(f"Not JSON: {error}") from error
        if size > settings.MEDKG_METADATA_MAX_BYTES:
            raise serializers.ValidationError(
                f"metadata is {size} bytes; the limit is {settings.MEDKG_METADATA_MAX_BYTES}."
            )
        return data


class DocumentInputSerializer(NoUnknownFieldsSerializer):
    id = StrictCharField(max_length=256, allow_blank=False, trim_whitespace=False)
    text = StrictCharField(allow_blank=False, trim_whitespace=False, max_length=settings.MEDKG_MAX_TEXT_CHARS)
    metadata = MetadataField(required=False, default=dict)

    def validate_id(self, value: str) -> str:
        reject_nul(value, "id")
        return value

    def validate_text(self, value: str) -> str:
        reject_nul(value, "text")
        if not value.strip():
            raise serializers.ValidationError("text is blank.")
        return value


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
            reject_nul(value, "ids")
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


def _accepted(job: IngestionJob, accepted: int) -> Response:
    status_url = f"/v1/jobs/{job.pk}"
    body = {"job_id": job.pk, "status": job.status, "accepted": accepted, "status_url": status_url}
    return Response(
        JobAcceptedOutputSerializer(body).data, status=status.HTTP_202_ACCEPTED, headers={"Location": status_url}
    )


class DocumentsView(APIView):
    required_scope = "embed:write"
    quota_operation = "ingest"

    @extend_schema(
        request=DocumentsUpsertInputSerializer,
        responses={202: JobAcceptedOutputSerializer, 413: STORAGE_LIMIT_EXCEEDED},
        operation_id="documents_upsert",
    )
    def post(self, request: Request, namespace: str) -> Response:
        data = payload_of(request, DocumentsUpsertInputSerializer)
        granted = namespace_granted(request, name=namespace, scope=self.required_scope, routed=False)
        documents = [
            IncomingDocument(id=item["id"], text=item["text"], metadata=item["metadata"]) for item in data["documents"]
        ]
        with request_observed(namespace=granted.name, endpoint="documents_upsert"):
            job = documents_accept(namespace=granted, tenant=principal_of(request).tenant, documents=documents)
        return _accepted(job, len(documents))

    @extend_schema(
        request=DocumentsDeleteInputSerializer,
        responses={202: JobAcceptedOutputSerializer},
        operation_id="documents_delete",
    )
    def delete(self, request: Request, namespace: str) -> Response:
        ids = payload_of(request, DocumentsDeleteInputSerializer)["ids"]
        granted = namespace_granted(request, name=namespace, scope=self.required_scope, routed=False)
        with request_observed(namespace=granted.name, endpoint="documents_delete"):
            job = documents_delete(namespace=granted, tenant=principal_of(request).tenant, external_ids=ids)
        return _accepted(job, len(set(ids)))
