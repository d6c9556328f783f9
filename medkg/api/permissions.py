"""Scope checks: each view names the scope it needs in `required_scope`."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.serializers import Serializer

from core.errors import AccessRefused
from medkg.api.authentication import TenantPrincipal


class HasRequiredScope(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        required = getattr(view, "required_scope", None)
        if required is None:  # public view (health, schema)
            return True
        principal = request.user
        if not isinstance(principal, TenantPrincipal):
            raise AccessRefused("missing_token")
        if not principal.has_scope(required):
            raise AccessRefused("insufficient_scope", detail=f"needs {required}")
        return True


def principal_of(request: Request) -> TenantPrincipal:
    principal = request.user
    if not isinstance(principal, TenantPrincipal):  # permission class guarantees this for scoped views
        raise AccessRefused("missing_token")
    return principal


def check_claimed_tenant(request: Request) -> None:
    """A payload tenant_id, when present, must be the token's tenant.

    Checked on the raw body before any other validation, so a swapped tenant id is refused,
    counted and audited even when the rest of the payload is invalid too.
    """
    principal = principal_of(request)
    claimed = request.data.get("tenant_id") if isinstance(request.data, dict) else None
    if claimed is not None and claimed != principal.tenant_slug:
        raise AccessRefused("tenant_mismatch", claimed_tenant=str(claimed)[:200])


def payload_of(request: Request, serializer_class: type[Serializer], *, claims_tenant: bool = True) -> dict[str, Any]:
    """The request body validated by `serializer_class` (400 when invalid); its claimed tenant_id is checked first."""
    if claims_tenant:
        check_claimed_tenant(request)
    payload = serializer_class(data=request.data)
    payload.is_valid(raise_exception=True)
    return payload.validated_data  # type: ignore[return-value]
