"""manage.py predeploy_check: the runbook's pre-deployment checklist, one PASS/FAIL line per check."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from core.management import MedkgCommand
from operations.predeploy import CHECKS, CheckResult, predeploy_run


class Command(MedkgCommand):
    help = (
        "Run the pre-deployment checklist with the settings of the target environment: every module imports, "
        "no model change lacks a migration, namespace and vLLM configuration valid, GPU namespaces can serve "
        "(verify_environment), alert rules valid (promtool check/test rules), rollback triggers valid and on the "
        "dashboard, check --deploy. One PASS/FAIL line per check; exit status 1 when any check fails."
    )
    requires_system_checks: list[str] = []  # check --deploy is one of the checks, reported as a line

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--skip", action="append", default=[], choices=sorted(CHECKS), help="Leave this check out (repeatable)."
        )
        parser.add_argument("--json", action="store_true", help="Print the results as one JSON document.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["json"]:
            self.stdout.write(f"Pre-deployment checklist (MEDKG_ENVIRONMENT={settings.MEDKG_ENVIRONMENT})")
        results = predeploy_run(skip=options["skip"], on_result=None if options["json"] else self._line)
        failed = [result for result in results if result.status == "FAIL"]
        if options["json"]:
            self.stdout.write(json.dumps({"passed": not failed, "checks": [r.as_dict() for r in results]}, indent=2))
        if failed:
            raise CommandError(f"{len(failed)} of {len(results)} checks failed: {', '.join(r.name for r in failed)}")
        if not options["json"]:
            self.stdout.write(self.style.SUCCESS(f"predeploy_check: ready to deploy ({len(results)} checks)"))

    def _line(self, result: CheckResult) -> None:
        style = {"PASS": self.style.SUCCESS, "FAIL": self.style.ERROR, "SKIP": self.style.WARNING}[result.status]
        self.stdout.write(f"  {style(f'[{result.status}]')} {result.name:<18} {result.detail}")
        self.stdout.flush()
