"""The WSGI edge: over-long URIs and header blocks answered as JSON errors, chunked bodies read (bounded).

gunicorn answers what exceeds its own limits with HTML pages, and Django reads a body without Content-Length
as empty. So the servers' limits are set above these (Makefile `serve`, deploy/gunicorn.conf.py: request line
8190 bytes, gunicorn's ceiling; header fields 32 KiB) and this layer answers in the API's error shape.
A request line over 8190 bytes still gets gunicorn's page: the TLS proxy in front of a deployment answers
those first (deploy/k8s ingress `large-client-header-buffers`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _error(start_response: StartResponse, status: str, code: str, message: str, details: dict[str, Any]) -> list[bytes]:
    body = json.dumps({"error": {"code": code, "message": message, "details": details}}).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")],
    )
    return [body]


def _read_bounded(stream: Any, limit: int) -> bytes:
    """Up to limit + 1 bytes of a chunked body (one more than allowed tells that it is too large)."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        part = stream.read(min(65536, limit + 1 - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


class HttpLimits:
    def __init__(self, application: WSGIApp) -> None:
        self.application = application

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        uri = environ.get("RAW_URI") or environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", "")
        uri_limit = settings.MEDKG_MAX_URI_BYTES
        if len(uri) > uri_limit:
            message = f"The request URI is {len(uri)} bytes; the limit is {uri_limit}."
            return _error(start_response, "414 URI Too Long", "uri_too_long", message, {"limit": uri_limit})
        headers = sum(
            len(name) - 5 + len(str(value)) + 4 for name, value in environ.items() if name.startswith("HTTP_")
        )
        header_limit = settings.MEDKG_MAX_HEADER_BYTES
        if headers > header_limit:
            message = f"The request headers are {headers} bytes; the limit is {header_limit}."
            return _error(
                start_response,
                "431 Request Header Fields Too Large",
                "headers_too_large",
                message,
                {"limit": header_limit},
            )
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and not environ.get("CONTENT_LENGTH"):
            limit = settings.MEDKG_MAX_REQUEST_BYTES
            body = _read_bounded(environ["wsgi.input"], limit)
            if len(body) > limit:
                message = f"Request body exceeds the limit of {limit} bytes."
                return _error(start_response, "413 Payload Too Large", "payload_too_large", message, {"limit": limit})
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)
