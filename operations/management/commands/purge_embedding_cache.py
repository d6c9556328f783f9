"""manage.py purge_embedding_cache: every serving process drops its cached providers."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from core.management import MedkgCommand
from operations.services import serving_generation_bump
from operations.serving import serving_state_ttl


class Command(MedkgCommand):
    help = (
        "Make every serving process drop its cached embedding providers (HTTP clients and connection pools to "
        "vLLM, readiness results, model handles): they are rebuilt from the namespaces' current settings on the "
        "next request. Takes effect within MEDKG_SERVING_STATE_TTL seconds; nothing is restarted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reason", default="purge_embedding_cache", help="Recorded with the change.")

    def handle(self, *args: Any, **options: Any) -> None:
        generation = serving_generation_bump(reason=options["reason"], changed_by=self.operator())
        self.stdout.write(
            self.style.SUCCESS(
                f"serving generation {generation}: every serving process drops its cached providers "
                f"within {serving_state_ttl():.1f} s"
            )
        )
