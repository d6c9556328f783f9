"""manage.py purge_deleted --namespace NS [--tenant T]: deleted documents leave the index files now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from embeddings.maintenance import index_purge_deleted
from namespaces.management.base import NamespaceCommand


class Command(NamespaceCommand):
    help = (
        "Remove deleted and replaced documents from a namespace's index files at once, instead of at the next "
        "merge (the right to erasure: a tombstone is not erasure). Prints, per tenant, how many "
        "entries left which file. Searches keep answering while it runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_namespace_argument(parser)
        self.add_tenant_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = self.namespace_named(options["namespace"])
        tenant = self.tenant_option(options)
        report = index_purge_deleted(namespace=namespace, tenant=tenant)
        if not report.removed:
            self.stdout.write(f"{namespace.name}: no tenant has an index in the {report.store} store.")
        for slug, removed in report.removed.items():
            if removed is None:
                self.stdout.write(
                    f"{slug}: the {report.store} store removes deleted entries at its own merges, not on demand"
                )
            else:
                self.stdout.write(
                    f"{slug}: removed {removed} deleted entr{'y' if removed == 1 else 'ies'} from {report.where[slug]}"
                )
        self.stdout.write(self.style.SUCCESS(f"{namespace.name} purged"))
