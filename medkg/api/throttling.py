"""The per-tenant quota as a DRF throttle: it runs on every authenticated API view, after the scope check; it also
names the tenant whose interactive work the request's model passes are (core/work.py)."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from core.work import WorkClass, work_mark
from medkg.api.authentication import TenantPrincipal
from namespaces.quotas import quota_check_request


class TenantQuotaThrottle(BaseThrottle):
    def allow_request(self, request: Request, view: Any) -> bool:
        principal = request.user
        if isinstance(principal, TenantPrincipal):
            # raises QuotaExceeded: 429 with Retry-After; a view names its operation for the decisions' counter
            operation = getattr(view, "quota_operation", "other")
            quota_check_request(tenant=principal.tenant, operation=operation)
            work_mark(tenant=principal.tenant_slug, work_class=WorkClass.INTERACTIVE)
        return True
