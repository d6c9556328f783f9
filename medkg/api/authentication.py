"""Bearer JWT authentication for tenants (simplejwt tokens carrying tenant_id and scopes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request
from rest_framework_simplejwt.exceptions import ExpiredTokenError, TokenError
from rest_framework_simplejwt.tokens import AccessToken, UntypedToken

from core.errors import AccessRefused
from namespaces.models import SCOPES, Tenant
from namespaces.selectors import tenant_get_active


@dataclass(frozen=True)
class TenantPrincipal:
    """The caller: a tenant acting through a token with some scopes."""

    tenant: Tenant
    scopes: frozenset[str]
    token_id: str

    is_authenticated = True
    is_anonymous = False

    @property
    def tenant_slug(self) -> str:
        return self.tenant.slug

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or "embed:admin" in self.scopes


def _unverified_tenant(raw: str) -> str:
    try:
        token = UntypedToken(raw, verify=False)  # type: ignore[arg-type]  # stubs say Token; str is the API
        return str(token.payload.get("tenant_id", ""))[:100]
    except Exception:  # noqa: BLE001 - a garbage token simply has no tenant to report
        return ""


class TenantJWTAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request: Request) -> tuple[TenantPrincipal, AccessToken] | None:
        header = get_authorization_header(request).split()
        if not header:
            return None
        if header[0].lower() != self.keyword or len(header) != 2:
            raise AccessRefused("invalid_token", detail="Authorization header is not 'Bearer <token>'")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError as error:
            raise AccessRefused("invalid_token", detail="token is not ASCII") from error
        try:
            token = AccessToken(raw)  # type: ignore[arg-type]  # stubs say Token; str is the API
        except ExpiredTokenError as error:
            raise AccessRefused("expired_token", detail=f"unverified tenant_id={_unverified_tenant(raw)}") from error
        except TokenError as error:
            raise AccessRefused("invalid_token", detail=str(error)[:200]) from error
        except (TypeError, ValueError, OverflowError) as error:
            # A validly signed token with a claim of the wrong type (an `exp` that is a string): simplejwt's own
            # checks raise these, not TokenError.
            raise AccessRefused("invalid_token", detail=f"malformed claim: {str(error)[:150]}") from error
        slug = token.payload.get("tenant_id")
        scopes = token.payload.get("scopes")
        if not isinstance(slug, str) or not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise AccessRefused("invalid_token", detail="token lacks tenant_id or scopes")
        tenant = tenant_get_active(slug=slug)
        if tenant is None:
            raise AccessRefused("tenant_inactive", detail=f"tenant {slug[:100]!r} is unknown or inactive")
        principal = TenantPrincipal(
            tenant=tenant, scopes=frozenset(s for s in scopes if s in SCOPES), token_id=str(token.get("jti", ""))
        )
        return principal, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="medkg"'


class TenantJWTAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Tells drf-spectacular that the API takes a bearer JWT."""

    target_class = "medkg.api.authentication.TenantJWTAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
