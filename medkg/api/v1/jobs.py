"""GET /v1/jobs/{job_id}: an ingestion job of the caller's tenant."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from embeddings.selectors import job_get_for_tenant
from medkg.api.permissions import principal_of


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


class JobView(APIView):
    required_scope = "embed:read"

    @extend_schema(responses={200: JobOutputSerializer}, operation_id="job_get")
    def get(self, request: Request, job_id: str) -> Response:
        job = job_get_for_tenant(job_id=job_id, tenant=principal_of(request).tenant)
        return Response(JobOutputSerializer(job).data)
