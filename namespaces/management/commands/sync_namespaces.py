"""manage.py sync_namespaces: create or update namespaces from config/embedding/namespaces/*.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandParser

from core.management import MedkgCommand
from namespaces.services import namespace_sync_from_yaml


class Command(MedkgCommand):
    config_error_note = " (nothing was changed)"

    help = (
        "Create or update embedding namespaces from the YAML seed files. Idempotent: prints created, "
        "updated and unchanged. A bad file is reported with the file, the field and the reason, and nothing changes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--directory",
            type=Path,
            default=None,
            help="Folder of *.yaml seed files (default: $MEDKG_CONFIG_DIR/embedding/namespaces).",
        )
        parser.add_argument("--dry-run", action="store_true", help="Validate and report without writing.")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = options["directory"] or settings.MEDKG_CONFIG_DIR / "embedding" / "namespaces"
        report = namespace_sync_from_yaml(directory=directory, dry_run=options["dry_run"])
        for label, names in (("created", report.created), ("updated", report.updated), ("unchanged", report.unchanged)):
            for name in names:
                self.stdout.write(f"{label}: {name}")
        for slug in report.tenants_created:
            self.stdout.write(f"tenant created: {slug}")
        prefix = "dry run: " if options["dry_run"] else ""
        counts = f"{len(report.created)} created, {len(report.updated)} updated, {len(report.unchanged)} unchanged"
        self.stdout.write(self.style.SUCCESS(prefix + counts))
