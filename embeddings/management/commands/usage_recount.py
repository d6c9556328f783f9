"""manage.py usage_recount [--tenant T]: the usage rows that storage limits read, recounted from the documents."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from core.management import MedkgCommand
from embeddings.maintenance import tenant_usage_recount
from namespaces.models import Tenant


class Command(MedkgCommand):
    help = (
        "Recount each tenant's stored documents and bytes (what MEDKG_MAX_DOCUMENTS_PER_TENANT and "
        "MEDKG_MAX_STORED_BYTES_PER_TENANT are checked against) from its live documents, and correct the usage "
        "row where it drifted (a database restore, rows changed by hand). Prints every tenant's figures; the "
        "tenant's accepts and deletes wait while its documents are counted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant (its slug); default: every tenant.")

    def handle(self, *args: Any, **options: Any) -> None:
        tenants = Tenant.objects.order_by("slug")
        if options["tenant"]:
            tenants = tenants.filter(slug=options["tenant"])
            if not tenants.exists():
                raise CommandError(f"Unknown tenant {options['tenant']!r}.")
        drifted = 0
        for tenant in tenants:
            report = tenant_usage_recount(tenant=tenant)
            (documents, stored), (was_documents, was_stored) = report.after, report.before
            if report.drifted:
                drifted += 1
                self.stdout.write(
                    f"{report.tenant}: corrected to {documents} documents, {stored} bytes "
                    f"(the row said {was_documents} documents, {was_stored} bytes)"
                )
            else:
                self.stdout.write(f"{report.tenant}: {documents} documents, {stored} bytes (unchanged)")
        self.stdout.write(self.style.SUCCESS(f"usage recounted: {drifted} tenant(s) corrected"))
