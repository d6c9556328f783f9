"""manage.py issue_token: print a signed access token for a tenant, and nothing else."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError, CommandParser

from core.management import MedkgCommand
from namespaces.selectors import tenant_get_active
from namespaces.services import token_issue

_TTL = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_ttl(text: str) -> timedelta:
    match = _TTL.match(text.strip())
    if not match or int(match[1]) == 0:
        raise ValueError(f"TTL {text!r} must look like 30s, 15m, 1h or 7d")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


class Command(MedkgCommand):
    help = (
        "Issue a JWT access token carrying tenant_id and scopes. "
        "Prints only the token, so TOKEN=$(manage.py issue_token ...) works."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", required=True, help="Tenant slug (must exist and be active).")
        parser.add_argument("--scopes", default="embed:read,embed:write", help="Comma-separated scopes.")
        parser.add_argument("--ttl", default="1h", help="Lifetime: 30s, 15m, 1h, 7d (default 1h).")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = tenant_get_active(slug=options["tenant"])
        if tenant is None:
            raise CommandError(f"tenant {options['tenant']!r} does not exist or is inactive")
        scopes = [scope.strip() for scope in options["scopes"].split(",") if scope.strip()]
        try:
            token = token_issue(tenant=tenant, scopes=scopes, ttl=parse_ttl(options["ttl"]))
        except ValueError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(token)
