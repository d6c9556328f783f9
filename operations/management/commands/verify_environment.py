"""manage.py verify_environment: the GPU this process can use, and the GPU each GPU namespace needs."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from core.errors import MedkgError
from core.management import MedkgCommand
from embeddings.providers.registry import provider_for
from namespaces.models import Namespace
from operations.environment import verify_environment


def _namespace_gpu(namespace: Namespace, local_available: bool, local_reason: str | None) -> dict[str, Any]:
    """An in-process model needs this machine's GPU; a remote one (vLLM) needs its server, where its GPU is."""
    entry: dict[str, Any] = {"namespace": namespace.name, "provider": namespace.provider}
    if not namespace.endpoint:
        return {**entry, "where": "local", "available": local_available, "reason": local_reason}
    try:
        readiness = provider_for(namespace).readiness()
    except MedkgError as error:
        return {**entry, "where": "remote", "available": False, "reason": error.message}
    return {
        **entry,
        "where": "remote",
        "available": readiness.ready,
        "reason": None if readiness.ready else readiness.detail,
    }


class Command(MedkgCommand):
    help = (
        "Probe the GPU environment for real (torch.cuda; NVML through nvidia-ml-py where installed) and report "
        "available, devices, driver, CUDA and the reason when there is none. A GPU is required by --require-gpu "
        "and by every enabled namespace with requires_gpu (an in-process model needs this machine's GPU; a vLLM "
        "namespace needs its GPU server to answer). Exit 0 when every required GPU is there, 1 when one is missing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
        parser.add_argument("--require-gpu", action="store_true", help="This machine must have a usable GPU.")
        parser.add_argument("--namespace", help="Check only this namespace's GPU requirement.")

    def handle(self, *args: Any, **options: Any) -> None:
        report: dict[str, Any] = dict(verify_environment())
        required_by: list[str] = ["--require-gpu"] if options["require_gpu"] else []
        checks: list[dict[str, Any]] = []
        try:
            namespaces = Namespace.objects.filter(enabled=True, requires_gpu=True)
            if options["namespace"]:
                namespaces = Namespace.objects.filter(name=options["namespace"])
                if not namespaces.exists():
                    raise CommandError(f"namespace {options['namespace']!r} does not exist")
            for namespace in namespaces.filter(requires_gpu=True):
                checks.append(_namespace_gpu(namespace, report["available"], report["reason"]))
                required_by.append(namespace.name)
        except DatabaseError as error:
            report["namespaces_error"] = f"namespaces not checked: database unavailable ({error})"[:300]
        local_missing = options["require_gpu"] and not report["available"]
        missing = [check["namespace"] for check in checks if not check["available"]]
        report.update(
            required=bool(required_by),
            required_by=required_by,
            namespaces=checks,
            ok=not local_missing and not missing,
        )
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self._print(report)
        if not report["ok"]:
            raise CommandError("a required GPU is missing: " + ", ".join(missing or ["this machine (--require-gpu)"]))

    def _print(self, report: dict[str, Any]) -> None:
        if report["available"]:
            self.stdout.write(self.style.SUCCESS(f"GPU available: {len(report['devices'])} device(s)"))
            for device in report["devices"]:
                memory = device["memory_total_bytes"]
                size = f", {memory / 2**30:.1f} GiB" if memory else ""
                self.stdout.write(f"  [{device['index']}] {device['name']}{size}")
        else:
            self.stdout.write(self.style.WARNING(f"GPU available: no ({report['reason']})"))
        self.stdout.write(f"driver: {report['driver'] or '-'}   CUDA: {report['cuda'] or '-'}")
        self.stdout.write(f"torch: {report['torch']['detail']}")
        self.stdout.write(f"NVML: {report['nvml']['detail']}")
        if "namespaces_error" in report:
            self.stdout.write(self.style.WARNING(report["namespaces_error"]))
        for check in report["namespaces"]:
            state = "ok" if check["available"] else f"MISSING ({check['reason']})"
            self.stdout.write(f"{check['namespace']} needs a {check['where']} GPU: {state}")
        if not report["required"]:
            self.stdout.write("no GPU is required here")
