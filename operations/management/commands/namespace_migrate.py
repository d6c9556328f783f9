"""manage.py namespace_migrate: re-embed a namespace's documents into a new version and move its alias there."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from namespaces.management.base import NamespaceCommand
from operations.lifecycle import (
    migration_abort,
    migration_describe,
    migration_pause,
    migration_plan,
    migration_resume,
    migration_run,
)
from operations.models import MIGRATION_STEPS, NamespaceMigration


class Command(NamespaceCommand):
    help = (
        "Migrate an alias from namespace --from to a new version --to, as a resumable, recorded workflow: "
        "shadow (--to mirrors every write), backfill (every tenant's live documents re-embedded into --to from the "
        "stored text, in chunks that survive a crash), gate (--to's nDCG@10 and Recall@10 on --dataset against "
        "--from's; refused when either is more than --margin below), cutover (the alias names --to, --from becomes "
        "its standby), window (--window seconds in which --abort flips back losing nothing) and retire (--from's "
        "index dropped; its rows too with --purge-on-retire). --until STEP stops after that step; --id N continues "
        "a migration (--now ends its window), --pause, --resume or --abort it; --list and --status show them. "
        "Exit 0 on success, 1 when refused or failed (the message says what serves)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--from", dest="source", help="The namespace serving now, e.g. single_vector.minilm.384.v1."
        )
        parser.add_argument("--to", dest="target", help="The new version, e.g. single_vector.minilm.384.v2.")
        parser.add_argument("--alias", help="The alias to move (default: --from's name without its version).")
        parser.add_argument(
            "--dataset", default="", help="BEIR dataset of the gate (default MEDKG_MIGRATION_GATE_DATASET)."
        )
        parser.add_argument("--margin", type=float, help="Largest relative drop the gate accepts (default 0.05).")
        parser.add_argument("--window", type=int, help="Rollback window in seconds (default 7 days).")
        parser.add_argument("--purge-on-retire", action="store_true", help="Retire deletes --from's rows too.")
        parser.add_argument("--reason", default="", help="Why (recorded).")
        parser.add_argument("--until", choices=MIGRATION_STEPS, help="Stop after this step.")
        parser.add_argument("--id", type=int, dest="migration_id", help="An existing migration.")
        parser.add_argument("--now", action="store_true", help="With --id: end the rollback window now and retire.")
        control = parser.add_mutually_exclusive_group()
        for flag in ("pause", "resume", "abort", "status", "list"):
            control.add_argument(
                f"--{flag}", action="store_true", help=f"{flag.capitalize()} (with --id; --list alone)."
            )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"]:
            for migration in NamespaceMigration.objects.select_related("source", "target")[:50]:
                copied, total = migration.backfill_totals()
                self.stdout.write(f"{migration} alias {migration.alias}, backfill {copied}/{total}")
            return
        if options["migration_id"] is not None:
            self._existing(options)
            return
        if not options["source"] or not options["target"]:
            raise CommandError("Name --from and --to (or --id N of an existing migration, or --list).")
        source, target = self.namespace_named(options["source"]), self.namespace_named(options["target"])
        migration = migration_plan(
            source=source,
            target=target,
            alias=options["alias"] or source.name.rsplit(".", 1)[0],
            created_by=self.operator(),
            reason=options["reason"],
            dataset=options["dataset"],
            margin=options["margin"],
            window_seconds=options["window"],
            purge_on_retire=options["purge_on_retire"],
        )
        self.stdout.write(f"migration #{migration.pk}: {source.name} → {target.name} (alias {migration.alias})")
        self._run(migration, options)

    def _existing(self, options: dict[str, Any]) -> None:
        migration = NamespaceMigration.objects.select_related("source", "target").filter(pk=options["migration_id"])
        found = migration.first()
        if found is None:
            raise CommandError(f"There is no migration #{options['migration_id']}.")
        if options["status"]:
            self.stdout.write("\n".join(migration_describe(found)))
        elif options["pause"]:
            self.stdout.write(str(migration_pause(migration=found, changed_by=self.operator())))
        elif options["abort"]:
            migration_abort(migration=found, changed_by=self.operator(), echo=self.stdout.write)
        else:
            if options["resume"]:
                found = migration_resume(migration=found, changed_by=self.operator())
            self._run(found, options)

    def _run(self, migration: NamespaceMigration, options: dict[str, Any]) -> None:
        with self.progress(unit="doc") as bars:
            migration = migration_run(
                migration=migration, until=options["until"], now=options["now"], echo=self.stdout.write, progress=bars
            )
        self.stdout.write(self.style.SUCCESS(f"{migration}"))
