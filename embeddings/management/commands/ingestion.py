"""manage.py ingestion pause|resume|status: the persisted ingestion switch."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandParser

from embeddings.ingestion import ingestion_pause, ingestion_resume, ingestion_status
from namespaces.management.base import NamespaceCommand


class Command(NamespaceCommand):
    help = (
        "Pause or resume document ingestion, or show its state. The switch is stored in the database, so every "
        "web process and worker obeys it and it survives restarts. While paused, documents are still accepted "
        "(202) and wait; resume queues their jobs again. Nothing is lost or indexed twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["pause", "resume", "status"])
        self.add_namespace_argument(parser, required=False, help="Only this namespace (default: all namespaces).")
        parser.add_argument("--reason", default="", help="Why (stored with the switch, shown by status).")
        parser.add_argument("--json", action="store_true", help="status as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = self.namespace_named(options["namespace"]) if options["namespace"] else None
        scope = namespace.name if namespace else "all namespaces"
        if options["action"] == "pause":
            ingestion_pause(namespace=namespace, reason=options["reason"], changed_by="manage.py ingestion")
            self.stdout.write(self.style.SUCCESS(f"ingestion paused for {scope}"))
        elif options["action"] == "resume":
            jobs = ingestion_resume(namespace=namespace, changed_by="manage.py ingestion")
            self.stdout.write(self.style.SUCCESS(f"ingestion resumed for {scope}; {len(jobs)} job(s) queued again"))
        else:
            status = ingestion_status()
            if options["json"]:
                self.stdout.write(json.dumps(status))
                return
            paused = ", ".join(status["paused"]) or "nothing"
            self.stdout.write(f"paused: {paused}")
            for name, count in status["jobs"].items():
                self.stdout.write(f"jobs {name}: {count}")
            self.stdout.write(f"documents waiting to be indexed: {status['pending_documents']}")
            self.stdout.write(f"documents waiting to be removed: {status['pending_deletes']}")
