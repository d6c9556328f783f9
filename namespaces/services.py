"""State changes for tenants, namespaces, tokens and the access audit."""

from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework_simplejwt.tokens import AccessToken

from core.errors import ConfigError, InvalidRequest
from core.logging import log_event
from namespaces.config import NamespaceSpec, load_namespace_specs
from namespaces.metrics import ALIAS_FLIPS, CROSS_TENANT_ACCESS_ATTEMPTS
from namespaces.models import (
    SCOPES,
    AccessAuditEvent,
    AliasFlip,
    Namespace,
    NamespaceAlias,
    NamespaceStandby,
    StandbyPurpose,
    Tenant,
    UnauthenticatedRefusalWindow,
)

logger = logging.getLogger("medkg.access")

_SYNCED_FIELDS = (
    "kind",
    "provider",
    "model_id",
    "model_path",
    "model_version",
    "dim",
    "max_tokens",
    "tokenizer",
    "pooling",
    "normalize",
    "batch_size",
    "requires_gpu",
    "endpoint",
    "parameters",
    "matryoshka_dims",
    "query_prompt",
    "document_prompt",
    "fallback",
    "enabled",
    "allowed_scopes",
    "description",
)


@dataclass
class SyncReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    tenants_created: list[str] = field(default_factory=list)


def tenant_create(*, slug: str, name: str = "") -> tuple[Tenant, bool]:
    """Create the tenant if it does not exist; returns (tenant, created)."""
    tenant = Tenant(slug=slug, name=name or slug)
    tenant.full_clean(validate_unique=False)
    return Tenant.objects.get_or_create(slug=slug, defaults={"name": name or slug})


def token_issue(*, tenant: Tenant, scopes: list[str], ttl: timedelta) -> str:
    """A signed access token carrying `tenant_id` and `scopes`."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scopes {unknown}; known: {list(SCOPES)}")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    token = AccessToken()
    token.set_exp(lifetime=ttl)
    token["tenant_id"] = tenant.slug
    token["scopes"] = sorted(set(scopes))
    return str(token)


def _spec_fields(spec: NamespaceSpec, path: Path) -> dict[str, Any]:
    values = {name: getattr(spec, name) for name in _SYNCED_FIELDS}
    values["allow_all_tenants"] = spec.allowed_tenants == "all"
    values["source_file"] = str(path.name)
    return values


def _wanted_tenants(spec: NamespaceSpec) -> set[str]:
    return set() if spec.allowed_tenants == "all" else set(spec.allowed_tenants)


@transaction.atomic
def namespace_sync_from_yaml(*, directory: Path, dry_run: bool = False) -> SyncReport:
    """Create or update namespaces from the seed files. All files are validated before anything changes."""
    specs = load_namespace_specs(directory)
    report = SyncReport()
    for path, spec in specs:
        wanted_fields = _spec_fields(spec, path)
        wanted_tenants = _wanted_tenants(spec)
        existing = Namespace.objects.filter(name=spec.name).prefetch_related("allowed_tenants").first()
        if existing is None:
            report.created.append(spec.name)
            namespace = Namespace(name=spec.name, **wanted_fields)
        else:
            current_tenants = {tenant.slug for tenant in existing.allowed_tenants.all()}
            changed = any(getattr(existing, key) != value for key, value in wanted_fields.items())
            if not changed and current_tenants == wanted_tenants:
                report.unchanged.append(spec.name)
                continue
            report.updated.append(spec.name)
            namespace = existing
            for key, value in wanted_fields.items():
                setattr(namespace, key, value)
        try:
            namespace.full_clean(validate_unique=False)
        except ValidationError as error:
            field_name, messages = next(iter(error.message_dict.items()))
            raise ConfigError(str(path), field_name, "; ".join(messages)) from error
        if dry_run:
            continue
        namespace.save()
        tenants = []
        for slug in sorted(wanted_tenants):
            tenant, created = Tenant.objects.get_or_create(slug=slug, defaults={"name": slug})
            if created:
                report.tenants_created.append(slug)
            tenants.append(tenant)
        namespace.allowed_tenants.set(tenants)
    if not dry_run:
        _sync_standbys_and_aliases(specs)
    return report


SYNCED_BY = "sync_namespaces"


def _sync_standbys_and_aliases(specs: list[tuple[Path, NamespaceSpec]]) -> None:
    """Standby links as the files say (links made by hand or by a migration are left alone); aliases created when
    missing, never moved: a flip is an operation (alias_flip, namespace_migrate), not configuration."""
    by_name = {namespace.name: namespace for namespace in Namespace.objects.all()}
    wanted: set[tuple[str, str]] = set()
    declared: dict[str, str] = {}
    for path, spec in specs:
        primary = by_name[spec.name]
        if spec.standby:
            standby = by_name.get(spec.standby)
            if standby is None:
                raise ConfigError(str(path), "standby", f"namespace {spec.standby} does not exist")
            if standby.kind != primary.kind:
                raise ConfigError(str(path), "standby", f"{spec.standby} is {standby.kind}, not {primary.kind}")
            wanted.add((spec.name, spec.standby))
            if not NamespaceStandby.objects.filter(primary=primary, standby=standby).exists():
                standby_attach(primary=primary, standby=standby, created_by=SYNCED_BY)
        for alias in spec.aliases:
            if declared.setdefault(alias, spec.name) != spec.name:
                raise ConfigError(str(path), "aliases", f"{alias} is declared by {declared[alias]} too")
            if not NamespaceAlias.objects.filter(name=alias).exists():
                alias_flip(alias=alias, to=primary, changed_by=SYNCED_BY, reason=f"declared in {path.name}")
    synced_names = [spec.name for _, spec in specs]  # a file set that omits a namespace leaves its links alone
    links = NamespaceStandby.objects.filter(created_by=SYNCED_BY, primary__name__in=synced_names)
    for link in links.select_related("primary", "standby"):
        if (link.primary.name, link.standby.name) not in wanted:
            standby_detach(primary=link.primary, standby=link.standby)


@dataclass(frozen=True)
class AccessContext:
    """Where a request came from, for the audit trail."""

    endpoint: str
    method: str = ""
    request_id: str = ""
    client_address: str | None = None


def _storable(text: str, limit: int) -> str:
    """Client-supplied text cut to its column; NUL, which PostgreSQL text cannot hold, shown as U+FFFD."""
    return text.replace("\x00", "\ufffd")[:limit]


def access_refusal_record(
    *,
    reason: str,
    status_code: int,
    context: AccessContext,
    token_tenant: str = "",
    claimed_tenant: str = "",
    namespace: str = "",
    detail: str = "",
) -> AccessAuditEvent:
    """Count, audit and log one refused request."""
    CROSS_TENANT_ACCESS_ATTEMPTS.labels(reason=reason, endpoint=context.endpoint).inc()
    event = AccessAuditEvent.objects.create(
        token_tenant=_storable(token_tenant, 200),
        claimed_tenant=_storable(claimed_tenant, 200),
        namespace=_storable(namespace, 200),
        endpoint=_storable(context.endpoint, 100),
        method=_storable(context.method, 10),
        reason=reason,
        status_code=status_code,
        request_id=_storable(context.request_id, 64),
        client_address=context.client_address,
        detail=_storable(detail, 500),
    )
    _access_log(
        logging.WARNING,
        outcome="refused",
        reason=reason,
        context=context,
        token_tenant=token_tenant,
        claimed_tenant=claimed_tenant,
        namespace=namespace,
    )
    return event


# Refusals before authentication: anyone can send them, so they are aggregated, not written one by one.
UNAUTHENTICATED_REASONS = frozenset({"missing_token", "invalid_token", "expired_token"})


@dataclass
class _WindowCounts:
    """What this process counted for one (window, source, reason) since it last wrote it."""

    count: int = 0
    throttled: int = 0
    first_endpoint: str = ""
    first_request_id: str = ""
    last_seen_at: datetime = field(default_factory=timezone.now)


class _RefusalWindows:
    """Counts of unauthenticated refusals per (window, source, reason), written to the database at most once a
    second (and at once for a window's first refusal, so evidence exists as soon as a flood starts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[datetime, str, str], _WindowCounts] = {}
        self._written: set[tuple[datetime, str, str]] = set()
        self._flushed_at = 0.0

    def add(self, *, reason: str, context: AccessContext, throttled: bool) -> None:
        now = timezone.now()
        window = settings.MEDKG_REFUSAL_WINDOW_SECONDS
        start = datetime.fromtimestamp(int(now.timestamp()) // window * window, tz=UTC)
        key = (start, (context.client_address or "")[:45], reason)
        with self._lock:
            counts = self._pending.setdefault(
                key, _WindowCounts(first_endpoint=context.endpoint, first_request_id=context.request_id)
            )
            counts.count += 1
            counts.throttled += int(throttled)
            counts.last_seen_at = now
            due = key not in self._written or time.monotonic() - self._flushed_at >= 1.0
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._flushed_at = time.monotonic()
            self._written |= set(pending)
            if pending:  # forget windows that have closed: the set stays as small as the open windows
                newest = max(key[0] for key in pending)
                self._written = {key for key in self._written if key[0] >= newest}
        for key, counts in pending.items():
            _refusal_window_add(key, counts)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self._written.clear()


def _refusal_window_add(key: tuple[datetime, str, str], counts: _WindowCounts) -> None:
    """Add to the window's row, creating it on first use (a concurrent creator wins; then add to its row)."""
    start, address, reason = key
    window = UnauthenticatedRefusalWindow.objects.filter(window_start=start, client_address=address, reason=reason)
    change = {
        "count": F("count") + counts.count,
        "throttled": F("throttled") + counts.throttled,
        "last_seen_at": counts.last_seen_at,
    }
    if window.update(**change):
        return
    try:
        with transaction.atomic():
            UnauthenticatedRefusalWindow.objects.create(
                window_start=start,
                client_address=address,
                reason=reason,
                count=counts.count,
                throttled=counts.throttled,
                first_endpoint=_storable(counts.first_endpoint, 100),
                first_request_id=_storable(counts.first_request_id, 64),
                last_seen_at=counts.last_seen_at,
            )
    except IntegrityError:
        window.update(**change)


_refusal_windows = _RefusalWindows()
atexit.register(_refusal_windows.flush)


def access_refusal_aggregate(*, reason: str, context: AccessContext, throttled: bool = False) -> None:
    """Count, aggregate and log (sampled by the log pipeline) one refusal before authentication."""
    CROSS_TENANT_ACCESS_ATTEMPTS.labels(reason=reason, endpoint=context.endpoint).inc()
    _refusal_windows.add(reason=reason, context=context, throttled=throttled)


def access_refusal_windows_flush() -> None:
    """Write the counts still held in this process (tests, shutdown)."""
    _refusal_windows.flush()


def access_refusal_windows_reset() -> None:
    """Forget what this process holds (tests)."""
    _refusal_windows.clear()


def access_grant_log(*, context: AccessContext, tenant: str, namespace: str) -> None:
    _access_log(
        logging.INFO,
        outcome="allowed",
        context=context,
        token_tenant=tenant,
        claimed_tenant=tenant,
        namespace=namespace,
    )


def _access_log(level: int, *, context: AccessContext, **fields: str) -> None:
    """The runbook's structured `namespace_access` line, for allowed and refused requests alike."""
    log_event(
        logger,
        "namespace_access",
        level,
        **fields,
        endpoint=context.endpoint,
        request_id=context.request_id,
        client_address=context.client_address,
    )


# --- aliases and standbys ---


@transaction.atomic
def alias_flip(*, alias: str, to: Namespace, changed_by: str, reason: str = "") -> AliasFlip:
    """Point `alias` at `to` (creating the alias when it is new), atomically and audited. Every serving process
    resolves it to `to` within MEDKG_SERVING_STATE_TTL (this one at once)."""
    row = NamespaceAlias.objects.select_for_update().filter(name=alias).select_related("namespace").first()
    previous = row.namespace.name if row is not None else ""
    if row is None:
        row = NamespaceAlias(name=alias, namespace=to, changed_by=changed_by[:200])
        try:
            row.full_clean()
        except ValidationError as error:
            raise InvalidRequest(f"{alias!r} cannot be an alias: {'; '.join(error.messages)}") from error
    row.namespace, row.changed_by = to, changed_by[:200]
    row.save()
    flip = AliasFlip.objects.create(
        alias=row, from_namespace=previous, to_namespace=to.name, changed_by=changed_by[:200], reason=reason[:500]
    )
    ALIAS_FLIPS.labels(alias=alias).inc()
    log_event(logger, "alias_flipped", alias=alias, to=to.name, previous=previous, by=changed_by, reason=reason)
    return flip


def standby_attach(
    *, primary: Namespace, standby: Namespace, purpose: str = StandbyPurpose.ROLLBACK, created_by: str = ""
) -> NamespaceStandby:
    """From now on every document accepted for `primary` (and every delete) is also written to `standby`.

    Documents already stored are not copied: a migration's backfill does that (operations.lifecycle)."""
    if primary.pk == standby.pk:
        raise InvalidRequest(f"{primary.name} cannot be its own standby.")
    if primary.kind != standby.kind:
        raise InvalidRequest(f"{primary.name} is {primary.kind} but {standby.name} is {standby.kind}.")
    link, created = NamespaceStandby.objects.get_or_create(
        primary=primary, standby=standby, defaults={"purpose": purpose, "created_by": created_by[:200]}
    )
    if not created and link.purpose != purpose:
        link.purpose = purpose
        link.save(update_fields=["purpose"])
    log_event(logger, "standby_attached", primary=primary.name, standby=standby.name, purpose=purpose)
    return link


def standby_detach(*, primary: Namespace, standby: Namespace) -> bool:
    """Stop mirroring `primary` into `standby`. True when there was such a link."""
    removed, _ = NamespaceStandby.objects.filter(primary=primary, standby=standby).delete()
    if removed:
        log_event(logger, "standby_detached", primary=primary.name, standby=standby.name)
    return bool(removed)
