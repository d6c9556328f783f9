"""Operations procedures that change state: rollback and its undo, incidents, serving caches.

Rollback order (no request may fail, vectors never mix):
  legacy up (kubectl) → legacy can serve → ingestion of the primary paused → route switched →
  every process has seen the route (drain) → primary down (kubectl) → overlay applied.
Undo is the mirror image, and refuses while the primary cannot serve. Each step is timed and recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from string import Template
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from core.errors import MedkgError
from core.logging import log_event
from embeddings.ingestion import ingestion_pause, ingestion_resume
from embeddings.models import Document
from embeddings.providers.registry import provider_for
from namespaces.models import Namespace, NamespaceStandby
from operations.errors import RollbackRefused
from operations.kubectl import RollbackKubectl
from operations.models import (
    POST_INCIDENT_REVIEW_DELAY,
    Incident,
    IncidentStatus,
    NamespaceRoute,
    RollbackEvent,
    RollbackStatus,
    ServingControl,
)
from operations.serving import serving_state_invalidate, serving_state_ttl

logger = logging.getLogger("medkg.operations")

Echo = Callable[[str], None]
INCIDENT_TEMPLATE = Path("docs/templates/rollback_incident_template.md")


def _silent(_: str) -> None:
    return None


class StepRecorder:
    """Times named steps into a list of {name, started_at, seconds, ok, detail} (the recorded RTO)."""

    def __init__(self, echo: Echo) -> None:
        self.steps: list[dict[str, Any]] = []
        self.echo = echo

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        record: dict[str, Any] = {"name": name, "started_at": timezone.now().isoformat(), "ok": False, "detail": ""}
        started = time.perf_counter()
        try:
            yield record
            record["ok"] = True
        except MedkgError as error:
            record["detail"] = error.message
            raise
        finally:
            record["seconds"] = round(time.perf_counter() - started, 3)
            self.steps.append(record)
            status = "ok" if record["ok"] else "FAILED"
            detail = f" ({record['detail']})" if record["detail"] else ""
            self.echo(f"  {name}: {status} in {record['seconds']:.2f} s{detail}")


def _seconds_since(moment: datetime) -> float:
    return round((timezone.now() - moment).total_seconds(), 3)


# --- checks ---------------------------------------------------------------------------------


def _namespace(name: str) -> Namespace:
    namespace = Namespace.objects.filter(name=name).prefetch_related("allowed_tenants").first()
    if namespace is None:
        raise RollbackRefused(f"Namespace {name} does not exist.", details={"namespace": name})
    return namespace


def _check_rollback_possible(source: Namespace, target: Namespace) -> None:
    """Everything that would make a request fail or mix spaces after the switch, checked before it."""
    if source.pk == target.pk:
        raise RollbackRefused("A namespace cannot be rolled back to itself.")
    if not target.enabled:
        raise RollbackRefused(f"The legacy namespace {target.name} is disabled.")
    if source.kind != target.kind:
        raise RollbackRefused(f"{source.name} is {source.kind} but {target.name} is {target.kind}.")
    active = NamespaceRoute.objects.filter(source=source).select_related("target").first()
    if active is not None:
        raise RollbackRefused(
            f"{source.name} is already served by {active.target.name} (rollback #{active.event_id}); undo it first.",
            details={"event": active.event_id},
        )
    if NamespaceRoute.objects.filter(source=target).exists() or NamespaceRoute.objects.filter(target=source).exists():
        raise RollbackRefused("Routes do not chain: the legacy namespace is itself rolled back, or is a legacy.")
    namespace_check_takes_over(source, target, refuse=RollbackRefused)


def namespace_check_takes_over(source: Namespace, target: Namespace, *, refuse: type[MedkgError]) -> None:
    """`target` may serve every request `source` serves: each scope it allows and each tenant it is granted to.

    Shared by a rollback (target: the legacy) and a migration (target: the next version)."""
    missing_scopes = sorted(set(source.allowed_scopes) - set(target.allowed_scopes))
    if missing_scopes:
        raise refuse(f"{target.name} does not allow the scopes {missing_scopes} that {source.name} allows.")
    if not target.allow_all_tenants:
        if source.allow_all_tenants:
            raise refuse(f"{source.name} is open to all tenants but {target.name} is not.")
        missing = sorted(
            {t.slug for t in source.allowed_tenants.all()} - {t.slug for t in target.allowed_tenants.all()}
        )
        if missing:
            raise refuse(f"{target.name} is not granted to tenants {missing} that use {source.name}.")


def _check_serves(namespace: Namespace, role: str, service_url: str | None = None) -> str:
    """Whether `namespace` can serve; a namespace that cannot stops the procedure before the switch.

    With `service_url`, the running service's /health answers (it loads the model there, where the traffic
    will go, and costs nothing when it is loaded already); otherwise the provider is loaded or probed here.
    """
    if service_url:
        return _check_serves_on_service(namespace, role, service_url)
    try:
        readiness = provider_for(namespace).readiness()
    except MedkgError as error:
        raise RollbackRefused(f"The {role} namespace {namespace.name} cannot serve: {error.message}") from error
    if not readiness.ready:
        raise RollbackRefused(f"The {role} namespace {namespace.name} cannot serve: {readiness.detail}")
    return readiness.detail


def _check_serves_on_service(namespace: Namespace, role: str, service_url: str) -> str:
    url = f"{service_url.rstrip('/')}/health"
    try:
        providers = httpx.get(url, timeout=120.0).json()["providers"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
        raise RollbackRefused(f"{url} cannot be read to check the {role} namespace: {error}") from error
    entry = next((item for item in providers if item.get("namespace") == namespace.name), None)
    if entry is None or not entry.get("ready"):
        detail = entry.get("detail", "") if entry else "not listed"
        raise RollbackRefused(f"The {role} namespace {namespace.name} cannot serve on {service_url}: {detail}")
    return f"{service_url}: {entry.get('detail', 'ready')}"


def _standby_state(source: Namespace, legacy: Namespace) -> str:
    """Whether search after the switch finds the primary's documents: only when the legacy is its standby."""
    if not NamespaceStandby.objects.filter(primary=source, standby=legacy).exists():
        return (
            f"{legacy.name} is not a standby of {source.name}: search will see only documents written to "
            f"{legacy.name} itself"
        )
    behind = Document.objects.filter(namespace=legacy, deleted_at__isnull=True, indexed_version__lt=F("version"))
    return f"{legacy.name} is the standby of {source.name}; {behind.count()} document(s) still to index"


def serving_drain() -> None:
    """Wait until every serving process has reloaded its routes and aliases (operations.serving)."""
    time.sleep(serving_state_ttl() + 0.25)


# --- rollback -------------------------------------------------------------------------------


def rollback_start(
    *,
    namespace: str,
    target: str,
    reason: str,
    initiated_by: str,
    kubectl: RollbackKubectl | None = None,
    dry_run: bool = False,
    trigger: str = "",
    service_url: str | None = None,
    echo: Echo = _silent,
) -> RollbackEvent | None:
    """Move the traffic of `namespace` to `target`. Returns the recorded event (None for a dry run)."""
    started_at = timezone.now()
    source, legacy = _namespace(namespace), _namespace(target)
    _check_rollback_possible(source, legacy)
    replicas_up, replicas_down = kubectl.prepare(undo=False) if kubectl else (None, None)
    if dry_run:
        _echo_plan(echo, kubectl, replicas_up, replicas_down, source, legacy, undo=False)
        return None
    event = RollbackEvent.objects.create(
        namespace=source.name,
        target_namespace=legacy.name,
        source_dim=source.dim,
        target_dim=legacy.dim,
        reason=reason,
        trigger=trigger,
        initiated_by=initiated_by,
        kubectl=kubectl is not None,
        started_at=started_at,
    )
    echo(f"rollback #{event.pk}: {source.name} ({source.dim} dims) → {legacy.name} ({legacy.dim} dims)")
    recorder = StepRecorder(echo)
    try:
        if kubectl:
            with recorder.step("scale_up_legacy"):
                kubectl.scale_up(kubectl.pair.legacy_deployment, replicas_up, undo=False)
        with recorder.step("legacy_ready") as step:
            step["detail"] = _check_serves(legacy, "legacy", service_url)
        with recorder.step("standby_state") as step:
            step["detail"] = _standby_state(source, legacy)
        with recorder.step("pause_ingestion") as step:
            event.ingestion_paused = ingestion_pause(
                namespace=source, reason=f"rollback #{event.pk}: {reason}", changed_by=initiated_by
            )
            step["detail"] = "paused" if event.ingestion_paused else "already paused"
        with recorder.step("switch_traffic"):
            with transaction.atomic():
                NamespaceRoute.objects.create(source=source, target=legacy, event=event)
            serving_state_invalidate()
            event.switched_at = timezone.now()
        with recorder.step("drain"):
            serving_drain()
        event.rto_seconds = _seconds_since(started_at)
        if kubectl:
            with recorder.step("scale_down_primary"):
                kubectl.scale_down_and_apply(kubectl.pair.primary_deployment, replicas_down, undo=False)
    except MedkgError as error:
        _fail(event, recorder, error)
        raise
    event.status = RollbackStatus.ACTIVE
    event.completed_at = timezone.now()
    event.duration_seconds = _seconds_since(started_at)
    event.steps = recorder.steps
    event.save()
    log_event(
        logger, "rollback_done", rollback=event.pk, namespace=source.name, target=legacy.name, rto=event.rto_seconds
    )
    return event


def _fail(event: RollbackEvent, recorder: StepRecorder, error: MedkgError) -> None:
    """Record the failure. A route already switched stays: traffic on the legacy is the safe side."""
    switched = NamespaceRoute.objects.filter(event=event).exists()
    event.status = RollbackStatus.ACTIVE if switched else RollbackStatus.FAILED
    event.error = error.message
    event.steps = recorder.steps
    if not switched and event.ingestion_paused:
        ingestion_resume(
            namespace=Namespace.objects.get(name=event.namespace),
            reason=f"rollback #{event.pk} failed",
            changed_by="rollback",
        )
    event.save()
    log_event(logger, "rollback_failed", logging.ERROR, rollback=event.pk, switched=switched, error=error.message)
    if switched:
        error.message += f" (traffic is already on {event.target_namespace}; rollback #{event.pk} stays active)"
    else:
        error.message += " (traffic was not switched)"


def rollback_undo(
    *,
    namespace: str,
    initiated_by: str,
    reason: str = "",
    kubectl: RollbackKubectl | None = None,
    dry_run: bool = False,
    force: bool = False,
    service_url: str | None = None,
    echo: Echo = _silent,
) -> RollbackEvent | None:
    """Move the traffic of `namespace` back from its legacy namespace, once the primary can serve again."""
    started_at = timezone.now()
    route = NamespaceRoute.objects.select_related("source", "target", "event").filter(source__name=namespace).first()
    if route is None:
        raise RollbackRefused(f"{namespace} is not rolled back: there is nothing to undo.")
    event, source, legacy = route.event, route.source, route.target
    replicas_up, replicas_down = kubectl.prepare(undo=True) if kubectl else (None, None)
    if dry_run:
        _echo_plan(echo, kubectl, replicas_up, replicas_down, source, legacy, undo=True)
        return None
    echo(f"undo of rollback #{event.pk}: {legacy.name} → {source.name}")
    recorder = StepRecorder(echo)
    try:
        if kubectl:
            with recorder.step("scale_up_primary"):
                kubectl.scale_up(kubectl.pair.primary_deployment, replicas_up, undo=True)
        with recorder.step("primary_ready") as step:
            try:
                step["detail"] = _check_serves(source, "primary", service_url)
            except RollbackRefused:
                if not force:
                    raise
                step["detail"] = "not ready; undone anyway (--force)"
        with recorder.step("switch_traffic"):
            route.delete()
            serving_state_invalidate()
        with recorder.step("drain"):
            serving_drain()
        event.restore_seconds = _seconds_since(started_at)
        if event.ingestion_paused:
            with recorder.step("resume_ingestion"):
                # The one resume: it also queues the jobs accepted meanwhile and the ones the pause stopped.
                ingestion_resume(namespace=source, reason=f"undo of rollback #{event.pk}", changed_by=initiated_by)
        if kubectl:
            with recorder.step("scale_down_legacy"):
                kubectl.scale_down_and_apply(kubectl.pair.legacy_deployment, replicas_down, undo=True)
    except MedkgError as error:
        event.undo_steps = recorder.steps
        event.error = f"undo: {error.message}"
        event.save(update_fields=["undo_steps", "error"])
        routed = NamespaceRoute.objects.filter(event=event).exists()
        error.message += f" (traffic is {'still on ' + legacy.name if routed else 'back on ' + source.name})"
        raise
    event.status = RollbackStatus.UNDONE
    event.undone_at = timezone.now()
    event.undone_by = initiated_by
    event.undo_reason = reason
    event.undo_steps = recorder.steps
    event.save()
    log_event(logger, "rollback_undone", rollback=event.pk, namespace=source.name, restore=event.restore_seconds)
    return event


def _echo_plan(
    echo: Echo,
    kubectl: RollbackKubectl | None,
    replicas_up: int | None,
    replicas_down: int | None,
    source: Namespace,
    legacy: Namespace,
    *,
    undo: bool,
) -> None:
    """A dry run: the in-app steps, and the kubectl commands with the replica counts they would use."""
    if not undo:
        echo(f"dry run: rollback {source.name} ({source.dim} dims) → {legacy.name} ({legacy.dim} dims)")
    else:
        echo(f"dry run: undo, {legacy.name} → {source.name}")
    up, down = (source, legacy) if undo else (legacy, source)
    if kubectl:
        deployment_up = kubectl.pair.primary_deployment if undo else kubectl.pair.legacy_deployment
        kubectl.scale_up(deployment_up, replicas_up, undo=undo)
    echo(f"would check that {up.name} can serve, then switch the route and wait {serving_state_ttl() + 0.25:.2f} s")
    echo(f"would {'resume' if undo else 'pause'} ingestion of {source.name}")
    if kubectl:
        deployment_down = kubectl.pair.legacy_deployment if undo else kubectl.pair.primary_deployment
        kubectl.scale_down_and_apply(deployment_down, replicas_down, undo=undo)
    echo(f"nothing was changed ({down.name} keeps serving)" if not undo else "nothing was changed")


# --- incidents ------------------------------------------------------------------------------


def _template_text() -> str:
    return (Path(settings.BASE_DIR) / INCIDENT_TEMPLATE).read_text(encoding="utf-8")


def _steps_table(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "| (no rollback yet) | | |"
    return "\n".join(
        f"| {step['name']} | {step['seconds']:.2f} | {'ok' if step['ok'] else 'FAILED: ' + step['detail']} |"
        for step in steps
    )


def incident_render(incident: Incident) -> str:
    """The incident's body from docs/templates/rollback_incident_template.md."""
    event = incident.rollback_event
    pending = "(pending)"
    values = {
        "incident_id": str(incident.pk or pending),
        "title": incident.title,
        "trigger": incident.trigger,
        "severity": incident.severity,
        "namespace": incident.namespace,
        "opened_at": incident.opened_at.isoformat(timespec="seconds"),
        "measurements": ", ".join(f"{key} = {value}" for key, value in sorted(incident.measurements.items()))
        or "(none)",
        "target_namespace": event.target_namespace if event else pending,
        "rollback_event": f"#{event.pk}" if event else pending,
        "rollback_started_at": event.started_at.isoformat(timespec="seconds") if event else pending,
        "rollback_completed_at": event.completed_at.isoformat(timespec="seconds")
        if event and event.completed_at
        else pending,
        "rto_seconds": f"{event.rto_seconds:.2f}" if event and event.rto_seconds is not None else pending,
        "review_due_at": incident.review_due_at.isoformat(timespec="seconds") if incident.review_due_at else pending,
        "steps_table": _steps_table(event.steps if event else []),
    }
    return Template(_template_text()).safe_substitute(values)


def incident_open(
    *, trigger: str, severity: str, namespace: str, title: str, measurements: dict[str, Any] | None = None
) -> Incident:
    incident = Incident(
        title=title[:300],
        trigger=trigger,
        severity=severity,
        namespace=namespace,
        opened_at=timezone.now(),
        measurements=measurements or {},
        body="",
    )
    incident.save()
    incident.body = incident_render(incident)
    incident.save(update_fields=["body"])
    log_event(logger, "incident_opened", incident=incident.pk, trigger=trigger, namespace=namespace)
    return incident


def incident_attach_rollback(*, incident: Incident, event: RollbackEvent) -> Incident:
    """The rollback mitigated the incident: its post-incident review is due two hours after completion."""
    incident.rollback_event = event
    incident.status = IncidentStatus.MITIGATED
    if event.completed_at:
        incident.review_due_at = event.completed_at + POST_INCIDENT_REVIEW_DELAY
    incident.body = incident_render(incident)
    incident.save()
    return incident


# --- serving caches -------------------------------------------------------------------------


def serving_generation_bump(*, reason: str, changed_by: str) -> int:
    """Every serving process drops its cached providers (HTTP clients, readiness, model handles) at its next
    request; returns the new generation."""
    control, _ = ServingControl.objects.get_or_create(pk=1)
    ServingControl.objects.filter(pk=control.pk).update(
        generation=F("generation") + 1, reason=reason[:500], changed_by=changed_by[:200], updated_at=timezone.now()
    )
    serving_state_invalidate()
    generation = ServingControl.objects.values_list("generation", flat=True).get(pk=control.pk)
    log_event(logger, "serving_generation_bumped", generation=generation, reason=reason)
    return generation
