"""Rollback drills on a running system, and their export to docs/operations/rollback_drills.md.

A drill probes the running service over HTTP the whole time (native and OpenAI endpoints, in turn) while it
rolls the primary back and undoes it, so its numbers are what clients saw:
  RTO (canary)  start → first probe answered by the legacy namespace
  full          start → rollback complete and verified by consecutive legacy answers
  restore       undo start → first probe answered by the primary again
Any probe that fails, or answers with a dimension other than its namespace's, fails the drill.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from django.utils import timezone

from core.errors import AccessRefused, MedkgError
from namespaces.models import Namespace
from namespaces.selectors import namespace_get_for_tenant
from namespaces.services import tenant_create, token_issue
from operations.errors import DrillFailed
from operations.kubectl import RollbackKubectl
from operations.models import DrillVerdict, RollbackDrill
from operations.services import rollback_start, rollback_undo
from operations.triggers import RtoTargets

PROBE_TEXT = "aspirin inhibits platelet aggregation (rollback drill probe)"
VERIFY_PROBES = 5


@dataclass(frozen=True)
class Probe:
    sent: float
    done: float
    endpoint: str
    status: int | None
    namespace: str
    dim: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


class Prober:
    """Embedding requests for one namespace against the running service, back to back, in a thread."""

    def __init__(self, *, base_url: str, token: str, namespace: str, dims: dict[str, int], interval: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.namespace = namespace
        self.dims = dims  # namespace → dimension it must answer with
        self.interval = interval
        self.client = httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {token}"})
        self.probes: list[Probe] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drill-prober", daemon=True)

    def probe(self, endpoint: str = "embed") -> Probe:
        sent = time.monotonic()
        try:
            if endpoint == "embed":
                response = self.client.post(
                    f"{self.base_url}/v1/embed", json={"namespace": self.namespace, "texts": [PROBE_TEXT]}
                )
            else:
                response = self.client.post(
                    f"{self.base_url}/v1/embeddings", json={"model": self.namespace, "input": [PROBE_TEXT]}
                )
        except httpx.HTTPError as error:
            return Probe(sent, time.monotonic(), endpoint, None, "", None, f"{type(error).__name__}: {error}")
        done = time.monotonic()
        if response.status_code != 200:
            return Probe(sent, done, endpoint, response.status_code, "", None, response.text[:300])
        return self._checked(sent, done, endpoint, response.json())

    def _checked(self, sent: float, done: float, endpoint: str, body: dict[str, Any]) -> Probe:
        if endpoint == "embed":
            served, dim, length = body["namespace"], body["dim"], len(body["embeddings"][0]["vector"])
        else:
            served, length = body["model"], len(body["data"][0]["embedding"])
            dim = length
        expected = self.dims.get(served)
        error = ""
        if expected is None:
            error = f"answered by unexpected namespace {served}"
        elif dim != expected or length != expected:
            error = f"{served} answered {length} values (dim {dim}); its dimension is {expected}"
        return Probe(sent, done, endpoint, 200, served, length, error)

    def _loop(self) -> None:
        endpoints = ("embed", "openai_embeddings")
        count = 0
        while not self._stop.is_set():
            self.probes.append(self.probe(endpoints[count % 2]))
            count += 1
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def wait_for(self, namespace: str, *, after: float, count: int, timeout: float) -> float | None:
        """Completion time of the `count`-th consecutive probe sent after `after` and answered by `namespace`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = 0
            for probe in list(self.probes):
                if probe.sent < after:
                    continue
                run = run + 1 if probe.ok and probe.namespace == namespace else 0
                if run >= count:
                    return probe.done
            time.sleep(0.05)
        return None


def _drill_token(*, tenant_slug: str, namespaces: list[Namespace]) -> str:
    tenant, _ = tenant_create(slug=tenant_slug, name="rollback drills")
    for namespace in namespaces:
        try:
            namespace_get_for_tenant(name=namespace.name, tenant=tenant, scope="embed:write")
        except AccessRefused as error:
            raise DrillFailed(
                f"Tenant {tenant_slug} may not embed in {namespace.name}: grant it, or pass --tenant."
            ) from error
    return token_issue(tenant=tenant, scopes=["embed:write"], ttl=timedelta(hours=1))


def drill_verdict(drill: RollbackDrill) -> str:
    if drill.error or drill.probes_failed or drill.rto_seconds is None or drill.full_seconds is None:
        return DrillVerdict.FAILED
    if drill.full_seconds > drill.max_seconds:
        return DrillVerdict.FAILED
    if drill.rto_seconds > drill.target_canary_seconds or drill.full_seconds > drill.target_full_seconds:
        return DrillVerdict.OVER_TARGET
    return DrillVerdict.PASSED


def drill_run(
    *,
    environment: str,
    namespace: str,
    target: str,
    base_url: str,
    tenant_slug: str,
    targets: RtoTargets,
    kubectl: RollbackKubectl | None = None,
    probe_interval: float = 0.1,
    echo: Callable[[str], None],
) -> RollbackDrill:
    """Roll `namespace` back to `target` on the running service and undo it, measuring what clients see."""
    primary = Namespace.objects.filter(name=namespace).first()
    legacy = Namespace.objects.filter(name=target).first()
    if primary is None or legacy is None or primary.dim is None or legacy.dim is None:
        raise DrillFailed(f"{namespace} and {target} must both exist with a dimension.")
    token = _drill_token(tenant_slug=tenant_slug, namespaces=[primary])
    prober = Prober(
        base_url=base_url,
        token=token,
        namespace=primary.name,
        dims={primary.name: primary.dim, legacy.name: legacy.dim},
        interval=probe_interval,
    )
    drill = RollbackDrill(
        environment=environment,
        namespace=primary.name,
        target_namespace=legacy.name,
        base_url=base_url,
        started_at=timezone.now(),
        target_canary_seconds=targets.canary_seconds,
        target_full_seconds=targets.full_seconds,
        max_seconds=targets.max_seconds,
    )
    steps: list[dict[str, Any]] = []
    preflight = [prober.probe(endpoint) for endpoint in ("embed", "openai_embeddings")]
    bad = [probe for probe in preflight if not probe.ok or probe.namespace != primary.name]
    if bad:
        drill.error = f"preflight: the primary does not serve: {bad[0].status} {bad[0].error or bad[0].namespace}"
        return _finish(drill, prober, steps, DrillVerdict.ABORTED)
    echo(f"preflight: {primary.name} answers {primary.dim} dims on both endpoints")
    prober.start()
    try:
        started = time.monotonic()
        event = rollback_start(
            namespace=primary.name,
            target=legacy.name,
            reason=f"rollback drill ({environment})",
            initiated_by=f"rollback_drill --environment {environment}",
            kubectl=kubectl,
            service_url=base_url,
            echo=echo,
        )
        drill.rollback_event = event
        canary = prober.wait_for(legacy.name, after=started, count=1, timeout=targets.max_seconds)
        verified = prober.wait_for(legacy.name, after=started, count=VERIFY_PROBES, timeout=targets.max_seconds)
        if canary is None or verified is None:
            raise DrillFailed(f"{legacy.name} never answered the probes within {targets.max_seconds} s")
        drill.rto_seconds = round(canary - started, 3)
        drill.full_seconds = round(max(verified, time.monotonic()) - started, 3)
        steps.append({"name": "rollback", "seconds": drill.full_seconds, "rto_seconds": drill.rto_seconds})
        echo(f"legacy serves: RTO {drill.rto_seconds:.2f} s, complete and verified in {drill.full_seconds:.2f} s")
        undo_started = time.monotonic()
        rollback_undo(
            namespace=primary.name,
            initiated_by="rollback_drill",
            reason="drill done",
            kubectl=kubectl,
            service_url=base_url,
        )
        restored = prober.wait_for(primary.name, after=undo_started, count=1, timeout=targets.max_seconds)
        if restored is None:
            raise DrillFailed(f"{primary.name} did not answer again after the undo")
        drill.restore_seconds = round(restored - undo_started, 3)
        steps.append({"name": "undo", "seconds": drill.restore_seconds})
        echo(f"primary serves again after {drill.restore_seconds:.2f} s")
    except MedkgError as error:
        drill.error = error.message
    return _finish(drill, prober, steps, None)


def _finish(drill: RollbackDrill, prober: Prober, steps: list[dict[str, Any]], verdict: str | None) -> RollbackDrill:
    prober.stop()
    failed = [probe for probe in prober.probes if not probe.ok]
    drill.probes_sent = len(prober.probes)
    drill.probes_failed = len(failed)
    if failed:
        steps.append({"name": "failed_probes", "examples": [f"{p.endpoint}: {p.status} {p.error}" for p in failed[:5]]})
    served: dict[str, int] = {}
    for probe in prober.probes:
        if probe.ok:
            served[probe.namespace] = served.get(probe.namespace, 0) + 1
    steps.append({"name": "probes", "sent": drill.probes_sent, "failed": drill.probes_failed, "served_by": served})
    drill.steps = steps
    drill.finished_at = timezone.now()
    drill.verdict = verdict or drill_verdict(drill)
    drill.passed = drill.verdict == DrillVerdict.PASSED
    drill.save()
    return drill


# --- export ---------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def drills_markdown(drills: list[RollbackDrill]) -> str:
    lines = [
        "# Rollback drills",
        "",
        "Written by `manage.py export_drills` from the `RollbackDrill` records; do not edit by hand.",
        "RTO (canary) is the time from the drill's start until the first client request answered by the legacy",
        "namespace; full is until the rollback was complete and verified; restore is the undo.",
        "",
        "| # | environment | started (UTC) | namespace → legacy | RTO (canary) | full | restore "
        "| targets (canary / full / max) | probes (failed) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for drill in drills:
        targets = f"{drill.target_canary_seconds} / {drill.target_full_seconds} / {drill.max_seconds} s"
        lines.append(
            f"| {drill.pk} | {drill.environment} | {drill.started_at:%Y-%m-%d %H:%M:%S} "
            f"| `{drill.namespace}` → `{drill.target_namespace}` | {_seconds(drill.rto_seconds)} "
            f"| {_seconds(drill.full_seconds)} | {_seconds(drill.restore_seconds)} | {targets} "
            f"| {drill.probes_sent} ({drill.probes_failed}) | {drill.verdict} |"
        )
    if not drills:
        lines.append("| | (no drill recorded yet) | | | | | | | | |")
    errors = [drill for drill in drills if drill.error]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- drill {drill.pk}: {drill.error}" for drill in errors]
    return "\n".join(lines) + "\n"


def drills_export(*, path: Path) -> int:
    drills = list(RollbackDrill.objects.order_by("started_at", "id"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(drills_markdown(drills), encoding="utf-8")
    return len(drills)
