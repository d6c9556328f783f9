"""manage.py bootstrap_faiss --namespace NS: create or load the namespace's index and fill it from the database."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from embeddings.ingestion import namespace_provenance
from embeddings.maintenance import index_bootstrap
from namespaces.management.base import NamespaceCommand


class Command(NamespaceCommand):
    help = (
        "Create or load the index of a namespace (one per tenant: FAISS HNSW for dense namespaces, the impact or "
        "Lucene index for sparse ones, or the namespace's OpenSearch index) and make it hold exactly what the "
        "database stores (vectors, or term weights and texts): missing entries are added, ones the database no "
        "longer has are removed. Never runs the model. Safe to run again. Exit code 1 on failure."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_namespace_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = self.namespace_named(options["namespace"])
        with self.progress() as progress:
            report = index_bootstrap(namespace=namespace, progress=progress)
        written = sum(report.tenants.values())
        self.stdout.write(
            self.style.SUCCESS(
                f"{namespace.name}: {len(report.tenants)} tenant index(es), {written} vector(s) added, "
                f"{report.removed} stale removed, {report.pending} document(s) still waiting for ingestion "
                f"({report.seconds:.1f} s)"
            )
        )
        if report.refused:
            self.stdout.write(
                self.style.WARNING(
                    f"refused {report.refused} row(s) embedded by {', '.join(report.refused_provenance)} (not "
                    f"{namespace_provenance(namespace)}): not indexed, queued to be embedded again from their text"
                )
            )
