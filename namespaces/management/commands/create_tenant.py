"""manage.py create_tenant SLUG: add a tenant (idempotent)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser

from core.management import MedkgCommand
from namespaces.services import tenant_create


class Command(MedkgCommand):
    help = "Create a tenant with the given slug (the tenant_id of tokens and payloads). Does nothing if it exists."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="Lowercase letters, digits, '-' and '_'.")
        parser.add_argument("--name", default="", help="Display name (default: the slug).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            tenant, created = tenant_create(slug=options["slug"], name=options["name"])
        except ValidationError as error:
            raise CommandError(f"invalid tenant: {'; '.join(error.messages)}") from error
        self.stdout.write(f"{'created' if created else 'exists'}: {tenant.slug}")
