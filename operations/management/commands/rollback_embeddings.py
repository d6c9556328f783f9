"""manage.py rollback_embeddings: move a namespace's traffic to its legacy namespace, or back with --undo."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser

from operations.management.base import OperationsCommand
from operations.models import RollbackEvent
from operations.services import rollback_start, rollback_undo


class Command(OperationsCommand):
    help = (
        "Roll a namespace back: requests for --namespace (native and OpenAI `model`) are answered by the legacy "
        "namespace --to (default: the triggers file's `rollbacks` entry), which names itself and its dimension in "
        "every answer, so vectors of two dimensions never mix. The legacy must be able to serve first; ingestion "
        "of the namespace is paused; each step is timed and recorded (RTO) as a RollbackEvent. --kubectl also "
        "scales the legacy Deployment up before the switch and the vLLM Deployment down after it, with the "
        "replica counts of deploy/k8s/overlays/rollback; --dry-run prints every step and kubectl command and "
        "changes nothing. --undo moves the traffic back once the primary can serve again. "
        "Exit 0 on success, 1 when refused or failed (the message says where the traffic is)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--namespace", required=True, help="The primary namespace, e.g. single_vector.qwen3.4096.v1."
        )
        parser.add_argument("--to", help="The legacy namespace (default: from the triggers file).")
        parser.add_argument("--reason", default="", help="Why (required for a rollback; recorded).")
        parser.add_argument("--undo", action="store_true", help="Move the traffic back to the primary.")
        parser.add_argument("--force", action="store_true", help="With --undo: even if the primary is not ready.")
        parser.add_argument("--dry-run", action="store_true", help="Print the steps and commands; change nothing.")
        parser.add_argument(
            "--base-url",
            default=None,
            help="Check that the namespace taking the traffic can serve through this running service's /health "
            "(which also loads it there) instead of loading it in this process.",
        )
        parser.add_argument("--json", action="store_true", help="Print the recorded event as JSON at the end.")
        self.add_kubectl_arguments(parser)
        self.add_triggers_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        config = self.triggers_from(options)
        pair = config.rollback_for(options["namespace"])
        echo = self.stdout.write if not options["json"] else self.stderr.write
        kubectl = self.rollback_kubectl(config, pair, options, echo)
        if options["undo"]:
            event = rollback_undo(
                namespace=options["namespace"],
                initiated_by=self.operator(),
                reason=options["reason"],
                kubectl=kubectl,
                dry_run=options["dry_run"],
                force=options["force"],
                service_url=options["base_url"],
                echo=echo,
            )
        else:
            target = options["to"] or (pair.to if pair else None)
            if not target:
                raise CommandError(f"--to is needed: the triggers file has no rollback for {options['namespace']}")
            if not options["reason"].strip():
                raise CommandError("--reason is required: it is recorded with the rollback")
            event = rollback_start(
                namespace=options["namespace"],
                target=target,
                reason=options["reason"],
                initiated_by=self.operator(),
                kubectl=kubectl,
                dry_run=options["dry_run"],
                service_url=options["base_url"],
                echo=echo,
            )
        if event is not None:
            self._report(event, undo=options["undo"], as_json=options["json"])

    def _report(self, event: RollbackEvent, *, undo: bool, as_json: bool) -> None:
        if as_json:
            fields = ("id", "namespace", "target_namespace", "source_dim", "target_dim", "status", "rto_seconds")
            summary = {name: getattr(event, "pk" if name == "id" else name) for name in fields}
            summary.update(
                duration_seconds=event.duration_seconds,
                restore_seconds=event.restore_seconds,
                steps=event.steps,
                undo_steps=event.undo_steps,
            )
            self.stdout.write(json.dumps(summary, indent=2))
            return
        if undo:
            message = f"rollback #{event.pk} undone: {event.namespace} serves its own traffic again"
            self.stdout.write(self.style.SUCCESS(f"{message} (restored in {event.restore_seconds:.2f} s)"))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"rollback #{event.pk} active: {event.namespace} is served by {event.target_namespace} "
                f"({event.target_dim} dims). RTO {event.rto_seconds:.2f} s, all steps {event.duration_seconds:.2f} s"
            )
        )
