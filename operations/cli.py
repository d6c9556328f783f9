"""What the operations commands share: who runs them, the triggers file, kubectl, error handling."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from pathlib import Path

from django.core.management.base import CommandError, CommandParser

from medkg.errors import ConfigError
from operations.kubectl import Kubectl, RollbackKubectl
from operations.triggers import RollbackPair, RollbackTriggers, load_rollback_triggers


def operator() -> str:
    """Who ran the command, for the records."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:200]


def add_triggers_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--triggers",
        type=Path,
        default=None,
        help="Rollback triggers file (default: $MEDKG_CONFIG_DIR/monitoring/rollback_triggers.yaml).",
    )


def add_kubectl_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--kubectl",
        action="store_true",
        help="Also scale the Kubernetes deployments with the overlays named in the triggers file "
        "(deploy/k8s/overlays/rollback; production for the undo).",
    )
    parser.add_argument("--kubectl-binary", default="kubectl", help="kubectl to run (default: kubectl on PATH).")


def triggers_from(options: dict[str, object]) -> RollbackTriggers:
    path = options.get("triggers")
    try:
        return load_rollback_triggers(path if isinstance(path, Path) else None)
    except ConfigError as error:
        raise CommandError(f"{error.file}: field {error.field!r}: {error.reason}") from error


def rollback_kubectl(
    config: RollbackTriggers, pair: RollbackPair | None, options: dict[str, object], echo: Callable[[str], None]
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
