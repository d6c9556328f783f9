"""The base of the rollback commands: the triggers file and the kubectl side of a rollback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from django.core.management.base import CommandError, CommandParser

from namespaces.management.base import NamespaceCommand
from operations.kubectl import Kubectl, RollbackKubectl
from operations.triggers import RollbackPair, RollbackTriggers, load_rollback_triggers


class OperationsCommand(NamespaceCommand):
    def add_triggers_argument(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--triggers",
            type=Path,
            default=None,
            help="Rollback triggers file (default: $MEDKG_CONFIG_DIR/monitoring/rollback_triggers.yaml).",
        )

    def add_kubectl_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--kubectl",
            action="store_true",
            help="Also scale the Kubernetes deployments with the overlays named in the triggers file "
            "(deploy/k8s/overlays/rollback; production for the undo).",
        )
        parser.add_argument("--kubectl-binary", default="kubectl", help="kubectl to run (default: kubectl on PATH).")

    def triggers_from(self, options: dict[str, object]) -> RollbackTriggers:
        path = options.get("triggers")
        return load_rollback_triggers(path if isinstance(path, Path) else None)

    def rollback_kubectl(
        self,
        config: RollbackTriggers,
        pair: RollbackPair | None,
        options: dict[str, object],
        echo: Callable[[str], None],
    ) -> RollbackKubectl | None:
        """The kubectl side of a rollback when --kubectl was given; the pair names the deployments."""
        if not options.get("kubectl"):
            return None
        if pair is None:
            raise CommandError("--kubectl needs the namespace's entry under `rollbacks` in the triggers file.")
        kubectl = Kubectl(
            kubernetes=config.kubernetes,
            echo=echo,
            dry_run=bool(options.get("dry_run")),
            binary=str(options.get("kubectl_binary") or "kubectl"),
        )
        return RollbackKubectl(kubectl, pair)
