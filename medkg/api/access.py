"""Request facts that the access audit records."""

from __future__ import annotations

from typing import Any

from medkg.api.permissions import principal_of
from medkg.middleware import client_address_of, request_id_of
from namespaces.models import Namespace
from namespaces.selectors import namespace_get_for_tenant
from namespaces.services import AccessContext, access_grant_log
from operations.serving import namespace_serving


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


def namespace_granted(request: Any, *, name: str, scope: str, routed: bool = True) -> Namespace:
    """The namespace that serves the caller's request for `name` (AccessRefused when its tenant may not use
    `name` with `scope`), logged as access.

    Access is checked on the namespace asked for. During a rollback a `routed` request is answered by the
    legacy namespace (operations.serving), whose name and dimension the response then carries, so vectors
    never mix; writes that must stay with the namespace asked for (documents) pass routed=False.
    """
    principal = principal_of(request)
    namespace = namespace_get_for_tenant(name=name, tenant=principal.tenant, scope=scope)
    access_grant_log(context=access_context_of(request), tenant=principal.tenant_slug, namespace=namespace.name)
    return namespace_serving(namespace) if routed else namespace
