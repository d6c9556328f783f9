"""OpenAPI parts shared by the operations: the uniform error body and the quota's 429 with Retry-After.

Only the schema is described here; the behaviour lives in medkg/api/exceptions.py (error bodies, Retry-After)
and medkg/api/throttling.py (quotas).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse
from rest_framework import serializers

from medkg.api.exceptions import error_body
from medkg.api.throttling import TenantQuotaThrottle


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="snake_case error code, e.g. quota_exceeded, backend_unavailable.")
    message = serializers.CharField()
    details = serializers.DictField(help_text="Machine-readable context of the error; may be empty.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


QUOTA_EXCEEDED = OpenApiResponse(
    response=ErrorSerializer,
    description=(
        "quota_exceeded: the tenant is over its requests/s or tokens/minute quota. "
        "Retry-After (seconds) says when to retry; details.kind names the quota (requests, tokens)."
    ),
    examples=[
        OpenApiExample(
            "quota_exceeded",
            value=error_body(
                "quota_exceeded",
                "Tenant acme is over its quota of 50 requests per second; retry after 1 s.",
                {"kind": "requests", "limit": 50, "retry_after_seconds": 1},
            ),
        )
    ],
)

RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    type=int,
    location=OpenApiParameter.HEADER,
    response=[429],
    required=True,
    description="Whole seconds to wait before the quota lets the request through.",
)


class MedkgAutoSchema(AutoSchema):
    """drf-spectacular's schema, plus the quota's 429 on every operation the throttle can refuse.

    The throttle is global (DEFAULT_THROTTLE_CLASSES), so its answer is documented from the view's own throttles
    rather than by hand on each view: a new view gets it, a public view (no authentication) does not.
    """

    def _quota_applies(self) -> bool:
        # TenantQuotaThrottle decides only for an authenticated tenant: public views (health) never answer 429.
        throttled = any(isinstance(throttle, TenantQuotaThrottle) for throttle in self.view.get_throttles())
        return throttled and bool(self.view.get_authenticators())

    def get_override_parameters(self) -> list[Any]:
        parameters = list(super().get_override_parameters())
        return [*parameters, RETRY_AFTER] if self._quota_applies() else parameters

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        if self._quota_applies() and "429" not in responses:
            responses["429"] = self._get_response_for_code(QUOTA_EXCEEDED, "429", direction=direction)
        return responses
