"""manage.py rollback_drill: rehearse the rollback end to end on the running system, and record it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from operations.drills import drill_run
from operations.management.base import OperationsCommand


class Command(OperationsCommand):
    help = (
        "Run a rollback drill on the running service: probe it continuously over HTTP (native and OpenAI "
        "endpoints) while the primary namespace is rolled back to its legacy namespace and then restored, "
        "and record a RollbackDrill with the measured RTO (first answer from the legacy), the full rollback "
        "time and the restore time, judged against the targets of the triggers file (canary 5 min, full 15 min, "
        "max 20 min). Any failed probe fails the drill. Exit 0 when it passed, 1 otherwise."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--environment", required=True, help="Where the drill runs: staging, production, ...")
        parser.add_argument("--namespace", help="Primary namespace (default: the first rollback of the triggers file).")
        parser.add_argument("--to", help="Legacy namespace (default: from the triggers file).")
        parser.add_argument("--base-url", default=None, help="The running service (default: $MEDKG_BASE_URL).")
        parser.add_argument("--tenant", default="ops-drill", help="Tenant the probes use (created if missing).")
        parser.add_argument("--probe-interval", type=float, default=0.1, help="Seconds between probes.")
        self.add_kubectl_arguments(parser)
        self.add_triggers_argument(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        config = self.triggers_from(options)
        if not config.rollbacks and not (options["namespace"] and options["to"]):
            raise CommandError("name --namespace and --to, or configure `rollbacks` in the triggers file")
        namespace = options["namespace"] or config.rollbacks[0].namespace
        pair = config.rollback_for(namespace)
        target = options["to"] or (pair.to if pair else None)
        if not target:
            raise CommandError(f"--to is needed: the triggers file has no rollback for {namespace}")
        base_url = options["base_url"] or settings.MEDKG_BASE_URL
        self.stdout.write(f"drill ({options['environment']}): {namespace} → {target} on {base_url}")
        drill = drill_run(
            environment=options["environment"],
            namespace=namespace,
            target=target,
            base_url=base_url,
            tenant_slug=options["tenant"],
            targets=config.rto_targets,
            kubectl=self.rollback_kubectl(config, pair, options, self.stdout.write),
            probe_interval=options["probe_interval"],
            echo=self.stdout.write,
        )
        summary = (
            f"drill #{drill.pk} {drill.verdict}: RTO {drill.rto_seconds} s (target {drill.target_canary_seconds} s), "
            f"full {drill.full_seconds} s (target {drill.target_full_seconds} s, max {drill.max_seconds} s), "
            f"restore {drill.restore_seconds} s; {drill.probes_sent} probes, {drill.probes_failed} failed"
        )
        if not drill.passed:
            raise CommandError(summary + (f"; {drill.error}" if drill.error else ""))
        self.stdout.write(self.style.SUCCESS(summary))
