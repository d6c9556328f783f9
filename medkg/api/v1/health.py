"""GET /health for load balancers and Kubernetes probes: no authentication."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from operations.health import health_report


class HealthView(APIView):
    authentication_classes: list[type] = []
    required_scope = None

    @extend_schema(
        responses={200: OpenApiResponse(description="healthy"), 503: OpenApiResponse(description="unhealthy")},
        operation_id="health",
        auth=[],
    )
    def get(self, request: Request) -> Response:
        report = health_report()
        return Response(report.as_dict(), status=200 if report.healthy else 503)
