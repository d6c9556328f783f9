"""manage.py reload_providers: rebuild every provider, check each can serve; --kubectl restarts the pods."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from core.errors import MedkgError
from embeddings.providers.registry import provider_for, providers_reset
from namespaces.models import Namespace
from operations.kubectl import Kubectl
from operations.management.base import OperationsCommand
from operations.services import serving_generation_bump


class Command(OperationsCommand):
    help = (
        "Restart the embedding layer: every serving process drops and rebuilds its providers (as "
        "purge_embedding_cache), then each enabled namespace's provider is loaded and probed here and reported. "
        "--kubectl restarts the app Deployments instead (kubectl rollout restart, then waits for the rollout); "
        "--dry-run prints the kubectl commands. Exit 1 when the default namespace cannot serve or kubectl fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="With --kubectl: print the commands only.")
        self.add_kubectl_arguments(parser)
        self.add_triggers_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["kubectl"]:
            config = self.triggers_from(options)
            kubectl = Kubectl(
                kubernetes=config.kubernetes,
                echo=self.stdout.write,
                dry_run=options["dry_run"],
                binary=options["kubectl_binary"],
            )
            kubectl.restart(config.kubernetes.app_deployments)
            return
        generation = serving_generation_bump(reason="reload_providers", changed_by=self.operator())
        providers_reset()
        self.stdout.write(f"serving generation {generation}: serving processes rebuild their providers")
        default_ready = False
        for namespace in Namespace.objects.filter(enabled=True).order_by("name"):
            try:
                readiness = provider_for(namespace).readiness()
                ready, detail = readiness.ready, readiness.detail
            except MedkgError as error:
                ready, detail = False, error.message
            if namespace.name == settings.MEDKG_DEFAULT_NAMESPACE:
                default_ready = ready
            line = f"{namespace.name}: {'ready' if ready else 'NOT READY'} ({detail})"
            self.stdout.write(self.style.SUCCESS(line) if ready else self.style.WARNING(line))
        if not default_ready:
            raise CommandError(f"the default namespace {settings.MEDKG_DEFAULT_NAMESPACE} cannot serve")
