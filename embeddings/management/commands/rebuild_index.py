"""manage.py rebuild_index --namespace NS: pause ingestion, drop the index files, bootstrap, resume."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from embeddings.maintenance import index_rebuild
from namespaces.management.base import NamespaceCommand


class Command(NamespaceCommand):
    help = (
        "Rebuild a namespace's vector index from the database in one step: pause its ingestion, wait for running "
        "jobs to stop, drop every index of the namespace, bootstrap them again, resume ingestion (unless it was "
        "paused before). Searches return nothing for the namespace while it runs. Asks for confirmation unless --yes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_namespace_argument(parser)
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
        parser.add_argument("--wait", type=float, default=300.0, help="Seconds to wait for running jobs (300).")

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = self.namespace_named(options["namespace"])
        if not options["yes"]:
            answer = input(f"Drop and rebuild every index of {namespace.name}? Type the namespace name to go on: ")
            if answer.strip() != namespace.name:
                raise CommandError("Not confirmed; nothing was changed.")
        with self.progress() as progress:
            report = index_rebuild(
                namespace=namespace, progress=progress, wait_seconds=options["wait"], changed_by="manage.py"
            )
        for step, seconds in report.steps.items():
            self.stdout.write(f"{step}: {seconds:.2f} s")
        written = sum(report.bootstrap.tenants.values())
        self.stdout.write(self.style.SUCCESS(f"{namespace.name} rebuilt: {written} vector(s)"))
