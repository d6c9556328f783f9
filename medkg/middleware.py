"""Request id (taken from X-Request-ID when it is sane, otherwise generated; echoed back), and the request's work
mark for the model scheduler (core/work.py), opened per request so that a thread never carries one over."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from core.work import WorkClass, work_for

_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class WorkMarkMiddleware:
    """Requests are interactive work; the quota throttle names the tenant once the token is checked."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with work_for(tenant="", work_class=WorkClass.INTERACTIVE):
            return self.get_response(request)


def request_id_of(request: HttpRequest) -> str:
    return getattr(request, "request_id", "") or ""


def client_address_of(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None
