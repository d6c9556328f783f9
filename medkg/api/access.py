"""Request facts that the access audit records."""

from __future__ import annotations

from typing import Any

from medkg.middleware import client_address_of, request_id_of
from namespaces.services import AccessContext


def endpoint_of(request: Any) -> str:
    match = getattr(request, "resolver_match", None)
    return (match.url_name if match and match.url_name else "unknown")[:100]


def access_context_of(request: Any) -> AccessContext:
    return AccessContext(
        endpoint=endpoint_of(request),
        method=getattr(request, "method", "") or "",
        request_id=request_id_of(request),
        client_address=client_address_of(request),
    )
