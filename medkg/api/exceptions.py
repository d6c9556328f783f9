"""One exception handler: every error becomes {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from core.errors import AccessRefused, MedkgError, QuotaExceeded
from core.logging import log_event
from medkg.middleware import request_id_of

logger = logging.getLogger("medkg.api")

_DRF_CODES: dict[type[drf.APIException], str] = {
    drf.ParseError: "malformed_json",
    drf.UnsupportedMediaType: "unsupported_media_type",
    drf.MethodNotAllowed: "method_not_allowed",
    drf.NotAcceptable: "not_acceptable",
    drf.NotFound: "not_found",
    drf.Throttled: "rate_limited",
    drf.ValidationError: "invalid_request",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _record_refusal(error: AccessRefused, request: Any) -> int | None:
    """Count and audit a refusal; for one before authentication, the seconds the address must wait (or None)."""
    from medkg.api.access import access_context_of
    from namespaces.quotas import address_throttle_unauthenticated
    from namespaces.services import UNAUTHENTICATED_REASONS, access_refusal_aggregate, access_refusal_record

    principal = getattr(request, "_user", None)
    context = access_context_of(request)
    if principal is None and error.reason in UNAUTHENTICATED_REASONS:
        wait = address_throttle_unauthenticated(context.client_address)
        access_refusal_aggregate(reason=error.reason, context=context, throttled=wait is not None)
        return wait
    token_tenant = getattr(principal, "tenant_slug", "") if principal is not None else ""
    access_refusal_record(
        reason=error.reason,
        status_code=error.status_code,
        context=context,
        token_tenant=token_tenant,
        claimed_tenant=error.claimed_tenant,
        namespace=error.namespace,
        detail=error.detail,
    )
    return None


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    request = context.get("request")
    if isinstance(exc, AccessRefused) and request is not None:
        wait = _record_refusal(exc, request)
        if wait is not None:
            message = f"Too many unauthenticated requests from this address; retry after {wait} s."
            response = Response(error_body("rate_limited", message, {"retry_after_seconds": wait}), status=429)
            response["Retry-After"] = str(wait)
            return response
    if isinstance(exc, MedkgError):
        response = Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
        if exc.status_code == 401:
            response["WWW-Authenticate"] = 'Bearer realm="medkg"'
        if isinstance(exc, QuotaExceeded):
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("payload_too_large", str(exc)), status=413)
    if isinstance(exc, Http404):
        return Response(error_body("not_found", "Not found."), status=404)
    if isinstance(exc, DjangoPermissionDenied):
        return Response(error_body("permission_denied", "Permission denied."), status=403)
    if isinstance(exc, drf.APIException):
        code = _DRF_CODES.get(type(exc), exc.default_code if isinstance(exc.default_code, str) else "error")
        if isinstance(exc, drf.ValidationError):
            details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
            return Response(error_body(code, "The request is invalid.", {"fields": details}), status=exc.status_code)
        response = Response(error_body(code, str(exc.detail)), status=exc.status_code)
        wait = getattr(exc, "wait", None)
        if isinstance(exc, drf.Throttled) and wait is not None:
            response["Retry-After"] = str(int(wait) + 1)
        return response
    # Anything else is a bug: log it with the request id, answer a JSON 500.
    log_event(
        logger,
        "unhandled_exception",
        logging.ERROR,
        request_id=request_id_of(request) if request is not None else "",
        exc_info=True,
    )
    return Response(error_body("internal_error", "Internal server error."), status=500)


# Django-level handlers, for errors that happen outside DRF views.
def json_not_found(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("internal_error", "Internal server error."), status=500)


def json_bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("bad_request", "Bad request."), status=400)


def json_permission_denied(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("permission_denied", "Permission denied."), status=403)
