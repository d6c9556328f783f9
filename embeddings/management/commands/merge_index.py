"""manage.py merge_index --namespace NS [--tenant T] [--full]: run the index's segment merges now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from embeddings.maintenance import index_merge
from namespaces.management.base import NamespaceCommand


class Command(NamespaceCommand):
    help = (
        "Merge a namespace's index segments now: what the tiered policy wants (what background merges do after "
        "writes), or with --full every partition into one segment without deleted entries (after a bulk load, "
        "before a benchmark). Searches and ingestion keep running while it works."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_namespace_argument(parser)
        self.add_tenant_argument(parser)
        parser.add_argument("--full", action="store_true", help="Merge each partition into a single segment.")

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = self.namespace_named(options["namespace"])
        tenant = self.tenant_option(options)
        report = index_merge(namespace=namespace, tenant=tenant, full=options["full"])
        if not report.segments:
            self.stdout.write(f"{namespace.name}: no tenant has an index in the {report.store} store.")
        for slug, (before, after) in report.segments.items():
            if before < 0:
                self.stdout.write(f"{slug}: the {report.store} store merged its segments")
            else:
                self.stdout.write(f"{slug}: {before} segment(s) -> {after} ({report.merged[slug]} merged)")
        self.stdout.write(self.style.SUCCESS(f"{namespace.name} merged"))
