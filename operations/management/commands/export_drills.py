"""manage.py export_drills: write docs/operations/rollback_drills.md from the drill records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandParser

from core.management import MedkgCommand
from operations.drills import drills_export


class Command(MedkgCommand):
    help = "Write the recorded rollback drills (RTO against targets, verdicts) as a Markdown table."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output",
            type=Path,
            default=None,
            help="Where to write (default: docs/operations/rollback_drills.md in the repository).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["output"] or Path(settings.BASE_DIR) / "docs" / "operations" / "rollback_drills.md"
        count = drills_export(path=path)
        self.stdout.write(self.style.SUCCESS(f"{count} drill(s) written to {path}"))
