"""Admin parts every app shares (core is not an installed app: nothing here is registered)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest


class EvidenceAdmin(admin.ModelAdmin):
    """Records the service or its commands write (audit events, rollbacks, drills): viewable by staff, never
    added, edited or deleted here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
