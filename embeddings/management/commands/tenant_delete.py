"""manage.py tenant_delete SLUG: offboard a tenant, its documents, indexes and jobs."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from core.management import MedkgCommand
from embeddings.maintenance import tenant_erase
from namespaces.models import Tenant


class Command(MedkgCommand):
    help = (
        "Erase a tenant: its tokens are refused at once, then its index partitions in every namespace, its "
        "documents (text, vectors, metadata), jobs and usage are deleted, then the tenant itself (unless "
        "--keep-tenant). Audit events are kept. Prints what it removed from where. Safe to run again after a "
        "failure. Asks for confirmation unless --yes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="The tenant's slug.")
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
        parser.add_argument("--keep-tenant", action="store_true", help="Keep the (deactivated) tenant row.")
        parser.add_argument("--wait", type=float, default=60.0, help="Seconds to wait for running jobs (60).")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            raise CommandError(f"Unknown tenant {options['slug']!r}; nothing was changed.")
        if not options["yes"]:
            answer = input(f"Erase every document and index of tenant {tenant.slug}? Type its slug to go on: ")
            if answer.strip() != tenant.slug:
                raise CommandError("Not confirmed; nothing was changed.")
        report = tenant_erase(tenant=tenant, wait_seconds=options["wait"], keep_tenant=options["keep_tenant"])
        for name, location in report.indexes.items():
            self.stdout.write(f"index removed: {location} ({name})")
        for name, count in report.documents.items():
            self.stdout.write(f"documents deleted: {count} in {name}")
        self.stdout.write(f"jobs deleted: {report.jobs}")
        outcome = "deleted" if report.tenant_deleted else "kept, deactivated"
        self.stdout.write(self.style.SUCCESS(f"tenant {report.tenant} erased (tenant row {outcome})"))
