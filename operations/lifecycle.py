"""Re-embedding migrations: move an alias from namespace A to a new version B without a failed request.

shadow (B mirrors A's writes) → backfill (A's stored documents re-embedded into B) → gate (B's retrieval quality
against A's) → cutover (the alias names B; A becomes B's standby) → window (a lossless way back) → retire (A's
index dropped, its rows kept or purged). Every step is idempotent and the migration row records where it is, so a
crash anywhere is continued by running it again (`manage.py namespace_migrate --id N`). Aborting before the cutover
leaves A serving exactly as before; within the window it flips the alias back to A.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Count, F
from django.utils import timezone

from core.errors import MedkgError
from core.logging import log_event
from embeddings.ingestion import IncomingDocument, documents_mirror, ingestion_is_paused, ingestion_requeue
from embeddings.models import Document, IngestionJob, JobPurpose, JobStatus
from embeddings.query_samples import query_samples_recent
from embeddings.retrieval_evaluation import beir_load, retrieval_evaluate
from embeddings.selectors import documents_search
from embeddings.stores.registry import index_for
from namespaces.models import Namespace, NamespaceAlias, NamespaceStandby, StandbyPurpose, Tenant
from namespaces.selectors import access_cache_ttl, alias_resolve
from namespaces.services import alias_flip, standby_attach, standby_detach
from operations.errors import MigrationRefused
from operations.metrics import MIGRATION_STEPS
from operations.models import (
    FINISHED_MIGRATION_STATES,
    MigrationState,
    MigrationStep,
    NamespaceMigration,
    NamespaceRoute,
)
from operations.models import (
    MIGRATION_STEPS as STEP_ORDER,
)
from operations.services import namespace_check_takes_over, serving_drain

logger = logging.getLogger("medkg.operations.lifecycle")

Echo = Callable[[str], None]
Progress = Callable[[str, int, int], None]  # (tenant or phase, done, total)
GATE_METRICS = {"ndcg_at_10": "nDCG@10", "recall_at_10": "Recall@10"}
OVERLAP_QUERIES = 20  # a tenant's recent real queries (else dataset ones) run on its own documents in A and in B
POLL_SECONDS = 0.5


def _silent(*_: Any) -> None:
    return None


TEST_PAUSE_VARIABLE = "MEDKG_TEST_PAUSE_AT"


def _test_pause(point: str) -> None:
    """Test hook only (tests/operations/test_namespace_migrate_crash.py): with MEDKG_TEST_PAUSE_AT=point the process
    says so on stdout and blocks here, so the test SIGKILLs it at a known phase. Unset, it does nothing."""
    if os.environ.get(TEST_PAUSE_VARIABLE) != point:
        return
    print(f"{TEST_PAUSE_VARIABLE} reached {point}", flush=True)
    while True:
        time.sleep(3600)


class _Stopped(Exception):
    """The migration was paused or aborted by someone else between two chunks."""


# --- plan -----------------------------------------------------------------------------------------


def migration_plan(
    *,
    source: Namespace,
    target: Namespace,
    alias: str,
    created_by: str,
    reason: str = "",
    dataset: str = "",
    margin: float | None = None,
    window_seconds: int | None = None,
    purge_on_retire: bool = False,
) -> NamespaceMigration:
    """Check that `target` can take over every request of `source`, and record the migration (nothing serves
    differently yet). The alias is created naming `source` when it does not exist."""
    if source.pk == target.pk:
        raise MigrationRefused(f"{source.name} cannot be migrated to itself.")
    if source.kind != target.kind:
        raise MigrationRefused(f"{source.name} is {source.kind} but {target.name} is {target.kind}.")
    if not target.enabled:
        raise MigrationRefused(f"The target namespace {target.name} is disabled.")
    namespace_check_takes_over(source, target, refuse=MigrationRefused)
    if NamespaceRoute.objects.filter(source__in=[source, target]).exists():
        raise MigrationRefused(f"{source.name} or {target.name} is rolled back; undo the rollback first.")
    unfinished = NamespaceMigration.objects.exclude(state__in=FINISHED_MIGRATION_STATES)
    busy = unfinished.filter(source__in=[source, target]).first() or unfinished.filter(target=source).first()
    if busy is not None:
        raise MigrationRefused(f"{busy} is not finished; continue or abort it first.", details={"migration": busy.pk})
    if alias_resolve(alias) not in (alias, source.name):
        raise MigrationRefused(f"The alias {alias} names {alias_resolve(alias)}, not {source.name}.")
    with transaction.atomic():
        if alias_resolve(alias) == alias:  # a new alias: it names the source until the cutover
            alias_flip(alias=alias, to=source, changed_by=created_by, reason="created for a migration")
        migration = NamespaceMigration.objects.create(
            source=source,
            target=target,
            alias=alias,
            created_by=created_by[:200],
            reason=reason,
            dataset=dataset or settings.MEDKG_MIGRATION_GATE_DATASET,
            margin=settings.MEDKG_MIGRATION_GATE_MARGIN if margin is None else margin,
            window_seconds=settings.MEDKG_MIGRATION_WINDOW_SECONDS if window_seconds is None else window_seconds,
            purge_on_retire=purge_on_retire,
        )
    log_event(logger, "migration_planned", migration=migration.pk, source=source.name, target=target.name)
    return migration


# --- running ----------------------------------------------------------------------------------------


def migration_run(
    *,
    migration: NamespaceMigration,
    until: str | None = None,
    now: bool = False,
    echo: Echo = _silent,
    progress: Progress = _silent,
) -> NamespaceMigration:
    """Run the migration's steps from where it is, through `until` (default: to the end, or to the rollback window
    when it has not ended; `now` ends it at once). A paused, refused or finished migration is refused."""
    if until is not None and until not in STEP_ORDER:
        raise MigrationRefused(f"--until must be one of {STEP_ORDER}, not {until!r}.")
    migration = _claim(migration)
    runners: dict[str, Callable[..., str]] = {
        MigrationStep.SHADOW: _shadow,
        MigrationStep.BACKFILL: _backfill,
        MigrationStep.GATE: _gate,
        MigrationStep.CUTOVER: _cutover,
        MigrationStep.RETIRE: _retire,
    }
    while True:
        step = migration.step
        if _state_now(migration) != MigrationState.RUNNING:  # paused or aborted meanwhile
            migration.refresh_from_db()
            return migration
        if step == MigrationStep.WINDOW:
            if not now and migration.window_ends_at and timezone.now() < migration.window_ends_at:
                echo(
                    f"migration #{migration.pk}: the rollback window ends at {migration.window_ends_at:%Y-%m-%d %H:%M}"
                )
                return _set_state(migration, MigrationState.WAITING)
            with _recorded(migration, step, echo) as record:
                record["detail"] = "ended early (--now)" if now else "ended"
        else:
            try:
                with _recorded(migration, step, echo) as record:
                    record["detail"] = runners[step](migration, echo=echo, progress=progress)
            except _Stopped:
                migration.refresh_from_db()
                echo(f"migration #{migration.pk} stopped in {step}: {migration.state}")
                return migration
            if migration.state == MigrationState.REFUSED:
                raise MigrationRefused(f"{migration.error} ({migration.source.name} keeps serving {migration.alias})")
        if step == MigrationStep.RETIRE:
            migration.state, migration.finished_at = MigrationState.DONE, timezone.now()
            migration.save(update_fields=["state", "finished_at", "updated_at"])
            return migration
        migration.step = STEP_ORDER[STEP_ORDER.index(step) + 1]
        migration.save(update_fields=["step", "updated_at"])
        if step == until:
            return _set_state(migration, MigrationState.WAITING)


def _claim(migration: NamespaceMigration) -> NamespaceMigration:
    """Mark the migration running (from running, waiting or failed), or say why it cannot run."""
    with transaction.atomic():
        row = NamespaceMigration.objects.select_for_update().select_related("source", "target").get(pk=migration.pk)
        if row.state in (MigrationState.PAUSED, MigrationState.REFUSED) or row.finished:
            hint = {"paused": "resume it", "refused": "abort it (the gate refused: " + row.error + ")"}
            raise MigrationRefused(f"{row} cannot run: {hint.get(row.state, 'it is finished')}.")
        row.state, row.error = MigrationState.RUNNING, ""
        row.save(update_fields=["state", "error", "updated_at"])
    return row


def _state_now(migration: NamespaceMigration) -> str:
    return NamespaceMigration.objects.filter(pk=migration.pk).values_list("state", flat=True).get()


def _set_state(migration: NamespaceMigration, state: str) -> NamespaceMigration:
    migration.state = state
    migration.save(update_fields=["state", "updated_at"])
    return migration


@contextmanager
def _recorded(migration: NamespaceMigration, step: str, echo: Echo) -> Iterator[dict[str, Any]]:
    """Time the step into `migration.steps[step]` and count its outcome; a project error fails the migration
    (continued by running it again)."""
    previous = migration.steps.get(step, {})
    record: dict[str, Any] = {"started_at": previous.get("started_at") or timezone.now().isoformat(), "ok": False}
    migration.steps = {**migration.steps, step: record}  # its start is visible (the admin's ETA) while it runs
    migration.save(update_fields=["steps", "updated_at"])
    started = time.perf_counter()
    outcome: str | None = "failed"
    try:
        yield record
        outcome = "refused" if migration.state == MigrationState.REFUSED else "done"
        record["ok"] = outcome == "done"
    except _Stopped:
        outcome = None  # counted by migration_pause or migration_abort, which stopped it
        record["detail"] = "stopped"
        raise
    except MedkgError as error:
        migration.state, migration.error = MigrationState.FAILED, f"{step}: {error.message}"
        record["detail"] = error.message
        raise
    finally:
        record["seconds"] = round(previous.get("seconds", 0.0) + time.perf_counter() - started, 3)
        record["finished_at"] = timezone.now().isoformat()
        migration.steps = {**migration.steps, step: record}
        fields = ["steps", "updated_at"]
        if outcome in ("failed", "refused"):
            fields += ["state", "error"]
        migration.save(update_fields=fields)
        if outcome is not None:
            MIGRATION_STEPS.labels(step=step, outcome=outcome).inc()
        echo(
            f"  {step}: {outcome or 'stopped'} in {record['seconds']:.2f} s"
            + (f" ({record['detail']})" if record.get("detail") else "")
        )
        log_event(
            logger, "migration_step", migration=migration.pk, step=step, outcome=outcome, seconds=record["seconds"]
        )


def _link(migration: NamespaceMigration, primary: Namespace, standby: Namespace, purpose: str) -> None:
    """Attach a standby link and remember it, so an abort removes exactly what the migration added."""
    existed = NamespaceStandby.objects.filter(primary=primary, standby=standby).exists()
    standby_attach(primary=primary, standby=standby, purpose=purpose, created_by=f"migration #{migration.pk}")
    entry = [primary.name, standby.name, purpose]
    if not existed and entry not in migration.links:
        migration.links = [*migration.links, entry]
        migration.save(update_fields=["links", "updated_at"])


def _unlink(migration: NamespaceMigration, *, keep_rollback: bool) -> None:
    """Detach the links the migration attached (all of them, or only its migration-purpose ones)."""
    by_name = {
        ns.name: ns for ns in Namespace.objects.filter(name__in={n for link in migration.links for n in link[:2]})
    }
    kept = []
    for primary, standby, purpose in migration.links:
        if keep_rollback and purpose == StandbyPurpose.ROLLBACK:
            kept.append([primary, standby, purpose])
            continue
        if primary in by_name and standby in by_name:
            standby_detach(primary=by_name[primary], standby=by_name[standby])
    migration.links = kept
    migration.save(update_fields=["links", "updated_at"])


# --- the steps (each returns its detail) ---------------------------------------------------------------


def _shadow(migration: NamespaceMigration, **_: Any) -> str:
    _link(migration, migration.source, migration.target, StandbyPurpose.MIGRATION)
    # Serving processes read the links through their access cache: until it expires, one could accept an update
    # of a document the backfill has already copied without mirroring it. The backfill starts after every process
    # mirrors.
    time.sleep(access_cache_ttl() + 0.25)
    _test_pause("shadow")  # the link is committed and seen by every process, the step is not recorded as done
    return f"{migration.target.name} mirrors every write to {migration.source.name}"


def _live_rows(namespace: Namespace, tenant_id: int) -> Any:
    return Document.objects.filter(namespace=namespace, tenant_id=tenant_id, deleted_at__isnull=True)


def _backfill(migration: NamespaceMigration, *, echo: Echo, progress: Progress) -> str:
    """Copy every tenant's live documents of the source into the target, a chunk and its cursor per transaction,
    then wait until the target has indexed them."""
    source, target = migration.source, migration.target
    if not settings.CELERY_BROKER_URL:
        # Embedded mode: jobs of a process that died (a killed command) have no runner; nothing of ours runs yet.
        with transaction.atomic():
            ingestion_requeue(namespace=target, statuses=(JobStatus.QUEUED, JobStatus.RUNNING))
    tenants = dict(
        Tenant.objects.filter(documents__namespace=source, documents__deleted_at__isnull=True)
        .distinct()
        .values_list("slug", "pk")
    )
    for slug, tenant_id in sorted(tenants.items()):
        _backfill_tenant(migration, slug, tenant_id, echo=echo, progress=progress)
    _wait_indexed(migration, tenants, progress=progress)
    copied, total = migration.backfill_totals()
    return f"{copied} of {total} documents of {len(tenants)} tenants copied and indexed"


def _backfill_tenant(
    migration: NamespaceMigration, slug: str, tenant_id: int, *, echo: Echo, progress: Progress
) -> None:
    source, target = migration.source, migration.target
    entry = dict(migration.progress.get(slug) or {"copied": 0, "cursor": 0, "indexed": 0})
    # Copied so far plus what is left after the cursor: writes meanwhile change it, the mirror keeps those in sync.
    entry["total"] = entry["copied"] + _live_rows(source, tenant_id).filter(pk__gt=entry["cursor"]).count()
    _save_progress(migration, slug, entry)
    tenant = Tenant.objects.get(pk=tenant_id)
    chunk = settings.MEDKG_MIGRATION_BACKFILL_CHUNK
    while True:
        with transaction.atomic():
            row = NamespaceMigration.objects.select_for_update().only("state").get(pk=migration.pk)
            if row.state != MigrationState.RUNNING:
                raise _Stopped()
            # Locked: a delete of one of these rows waits for the commit and then mirrors itself into the target;
            # one that committed first is not selected. Either way the target ends with the source's live rows.
            rows = list(
                _live_rows(source, tenant_id)
                .filter(pk__gt=entry["cursor"])
                .order_by("pk")
                .select_for_update(of=("self",))
                .values_list("pk", "external_id", "text", "metadata")[:chunk]
            )
            if not rows:
                break
            documents = [IncomingDocument(id=ext, text=text, metadata=meta) for _, ext, text, meta in rows]
            documents_mirror(namespace=target, tenant=tenant, documents=documents, purpose=JobPurpose.BACKFILL)
            entry["cursor"], entry["copied"] = rows[-1][0], entry["copied"] + len(rows)
            entry["total"] = max(entry["total"], entry["copied"])
            _save_progress(migration, slug, entry)  # with the mirror: a crash loses or repeats no chunk
        progress(slug, entry["copied"], entry["total"])
        echo(f"    {slug}: {entry['copied']}/{entry['total']} copied{_eta(migration)}")
        _test_pause("backfill")  # a chunk and its cursor are committed (and, inline, indexed); more to come
    progress(slug, entry["copied"], entry["total"])


def _save_progress(migration: NamespaceMigration, slug: str = "", entry: dict[str, int] | None = None) -> None:
    if entry is not None:
        migration.progress = {**migration.progress, slug: dict(entry)}
    NamespaceMigration.objects.filter(pk=migration.pk).update(progress=migration.progress, updated_at=timezone.now())


def _eta(migration: NamespaceMigration) -> str:
    eta = migration_eta_seconds(migration)
    return f", ETA {eta:.0f} s" if eta is not None else ""


def migration_eta_seconds(migration: NamespaceMigration) -> float | None:
    """Seconds the backfill's copy should still take at the rate since it started (None when unknown or done)."""
    copied, total = migration.backfill_totals()
    started_at = migration.steps.get(MigrationStep.BACKFILL, {}).get("started_at")
    if not copied or copied >= total or not started_at:
        return None
    elapsed = (timezone.now() - datetime.fromisoformat(started_at)).total_seconds()
    return max((total - copied) * elapsed / copied, 0.0)


def _unindexed(target: Namespace, tenant_ids: list[int]) -> dict[int, int]:
    """The target's documents still to index, per tenant (the partial index document_unindexed)."""
    rows = (
        Document.objects.filter(
            namespace=target, tenant_id__in=tenant_ids, indexed_version__lt=F("version"), deleted_at__isnull=True
        )
        .values("tenant_id")
        .annotate(count=Count("pk"))
    )
    return {row["tenant_id"]: row["count"] for row in rows}


def _wait_indexed(migration: NamespaceMigration, tenants: dict[str, int], *, progress: Progress) -> None:
    target = migration.target
    while True:
        if _state_now(migration) != MigrationState.RUNNING:
            raise _Stopped()
        waiting = _unindexed(target, list(tenants.values()))
        for slug, tenant_id in tenants.items():
            entry = migration.progress[slug]
            entry["indexed"] = max(entry["copied"] - waiting.get(tenant_id, 0), 0)
            progress(f"{slug} indexed", entry["indexed"], entry["copied"])
        _save_progress(migration)
        if not any(waiting.values()):
            return
        failed = IngestionJob.objects.filter(
            namespace=target, purpose=JobPurpose.BACKFILL, status=JobStatus.FAILED, tenant_id__in=tenants.values()
        ).first()
        if failed is not None:
            raise MigrationRefused(f"A backfill job of {target.name} failed: {failed.error}")
        if ingestion_is_paused(namespace=target):
            raise MigrationRefused(f"Ingestion of {target.name} is paused; resume it, then continue the migration.")
        time.sleep(POLL_SECONDS)


def _gate(migration: NamespaceMigration, *, echo: Echo, progress: Progress) -> str:
    """Retrieval quality of the target against the source on the dataset, and their agreement on the migrated
    tenants' own documents; refuses when nDCG@10 or Recall@10 drops by more than the margin (relative)."""
    source, target = migration.source, migration.target
    if not migration.dataset:
        raise MigrationRefused("The gate needs a dataset: --dataset PATH (or MEDKG_MIGRATION_GATE_DATASET).")
    report = retrieval_evaluate(namespaces=[source, target], dataset_path=Path(migration.dataset), progress=progress)
    measured = {run.namespace_id: run.metrics for run in report.runs}
    _test_pause("gate")  # measured, nothing recorded
    before, after = measured[source.pk], measured[target.pk]
    drops = {
        name: round((before[name] - after[name]) / before[name], 6) if before[name] else 0.0 for name in GATE_METRICS
    }
    worst = max(GATE_METRICS, key=lambda name: drops[name])
    passed = drops[worst] <= migration.margin
    reason = (
        f"{GATE_METRICS[worst]} of {target.name} {after[worst]:.3f} is {drops[worst] * 100:.1f} % below "
        f"{source.name}'s {before[worst]:.3f}; the margin is {migration.margin * 100:g} %"
    )
    overlap, overlap_queries = _overlap_at_10(migration)
    migration.gate = {
        "dataset": migration.dataset,
        "source": before,
        "target": after,
        "drops": drops,
        "margin": migration.margin,
        "overlap_at_10": overlap,
        "overlap_queries": overlap_queries,
        "passed": passed,
        "reason": reason if not passed else f"within the margin ({reason.split(';')[0]})",
    }
    migration.save(update_fields=["gate", "updated_at"])
    if not passed:
        migration.state, migration.error = MigrationState.REFUSED, f"The gate refused: {reason}"
        return reason
    return migration.gate["reason"]


def _overlap_at_10(migration: NamespaceMigration) -> tuple[float | None, dict[str, int]]:
    """Mean overlap of the source's and target's top 10 on each migrated tenant's own documents, for the tenant's
    recent real queries of the source (sampled by search), or the first dataset queries for a tenant with none
    (None without any); and how many queries of each kind were run."""
    dataset_queries = list(beir_load(Path(migration.dataset)).queries.values())[:OVERLAP_QUERIES]
    tenants = Tenant.objects.filter(slug__in=list(migration.progress))
    overlaps, counts = [], {"sampled": 0, "dataset": 0}
    for tenant in tenants:
        queries = query_samples_recent(namespace=migration.source, tenant=tenant, limit=OVERLAP_QUERIES)
        counts["sampled" if queries else "dataset"] += len(queries or dataset_queries)
        for query in queries or dataset_queries:
            ranked = [
                {hit.id for hit in documents_search(namespace=namespace, tenant=tenant, query=query, k=10)}
                for namespace in (migration.source, migration.target)
            ]
            if ranked[0]:
                overlaps.append(len(ranked[0] & ranked[1]) / len(ranked[0]))
    return (round(sum(overlaps) / len(overlaps), 4) if overlaps else None), counts


def _cutover(migration: NamespaceMigration, **_: Any) -> str:
    """The alias names the target; the source becomes the target's standby (and the source's rollback targets the
    target's), so flipping back within the window loses nothing."""
    source, target = migration.source, migration.target
    with transaction.atomic():
        _link(migration, target, source, StandbyPurpose.MIGRATION)
        rollback_links = NamespaceStandby.objects.filter(primary=source, purpose=StandbyPurpose.ROLLBACK)
        for link in rollback_links.exclude(standby=target).select_related("standby"):
            _link(migration, target, link.standby, StandbyPurpose.ROLLBACK)
        # A rerun after a crash past this commit finds the alias flipped: a second flip would be a false record.
        if _alias_target_locked(migration.alias) != target.pk:
            alias_flip(
                alias=migration.alias, to=target, changed_by=migration.created_by, reason=f"migration #{migration.pk}"
            )
        _test_pause("cutover")  # flipped, not committed
    _test_pause("cutover-committed")  # the alias names the target; the window is not set
    serving_drain()  # every serving process resolves the alias to the target now
    migration.window_ends_at = timezone.now() + timedelta(seconds=migration.window_seconds)
    migration.save(update_fields=["window_ends_at", "updated_at"])
    until = f"{migration.window_ends_at:%Y-%m-%d %H:%M}"
    return f"{migration.alias} → {target.name}; {source.name} is its standby until {until}"


def _alias_target_locked(alias: str) -> int | None:
    """The pk of the namespace `alias` names, its row locked until the transaction ends (None when it is new)."""
    return NamespaceAlias.objects.select_for_update().filter(name=alias).values_list("namespace_id", flat=True).first()


def _retire(migration: NamespaceMigration, *, echo: Echo, **_: Any) -> str:
    source = migration.source
    _unlink(migration, keep_rollback=True)
    slugs = sorted(set(Tenant.objects.filter(documents__namespace=source).values_list("slug", flat=True)))
    store = index_for(source)
    for slug in slugs:
        store.drop(tenant=slug)
        _test_pause("retire")  # the first tenant's index is dropped, the others' are not, no row is purged
    purged = 0
    if migration.purge_on_retire:
        # The tenants' usage is left as it is: each document is still stored once, in the target.
        while ids := list(Document.objects.filter(namespace=source).values_list("pk", flat=True)[:1000]):
            purged += Document.objects.filter(pk__in=ids).delete()[0]
    return f"index of {source.name} dropped for {len(slugs)} tenants" + (f", {purged} rows purged" if purged else "")


# --- control ----------------------------------------------------------------------------------------


def migration_pause(*, migration: NamespaceMigration, changed_by: str) -> NamespaceMigration:
    """Stop a running migration after its current chunk; `migration_resume` continues it. Writes keep mirroring."""
    with transaction.atomic():
        row = NamespaceMigration.objects.select_for_update().get(pk=migration.pk)
        if row.finished or row.state == MigrationState.REFUSED:
            raise MigrationRefused(f"{row} cannot be paused.")
        row.state = MigrationState.PAUSED
        row.save(update_fields=["state", "updated_at"])
    MIGRATION_STEPS.labels(step=row.step, outcome="paused").inc()
    log_event(logger, "migration_paused", migration=row.pk, step=row.step, by=changed_by)
    return row


def migration_resume(*, migration: NamespaceMigration, changed_by: str) -> NamespaceMigration:
    """Make a paused migration runnable again (run it with `migration_run` or `migration_run_in_background`)."""
    updated = NamespaceMigration.objects.filter(pk=migration.pk, state=MigrationState.PAUSED).update(
        state=MigrationState.WAITING, updated_at=timezone.now()
    )
    migration.refresh_from_db()
    if not updated and migration.state not in (MigrationState.WAITING, MigrationState.FAILED):
        raise MigrationRefused(f"{migration} is not paused.")
    log_event(logger, "migration_resumed", migration=migration.pk, by=changed_by)
    return migration


def migration_abort(*, migration: NamespaceMigration, changed_by: str, echo: Echo = _silent) -> NamespaceMigration:
    """Undo the migration: before the cutover the source never stopped serving, so its links go; after it (within
    the window) the alias flips back to the source, which the target kept in sync."""
    with transaction.atomic():
        row = NamespaceMigration.objects.select_for_update().select_related("source", "target").get(pk=migration.pk)
        if row.finished:
            raise MigrationRefused(f"{row} is finished: nothing to abort.")
        if row.step == MigrationStep.RETIRE and row.steps.get("retire"):
            raise MigrationRefused(f"{row} is retiring the source: it can only be continued.")
        cut_over = bool(row.steps.get(MigrationStep.CUTOVER, {}).get("ok")) or row.step in (
            MigrationStep.WINDOW,
            MigrationStep.RETIRE,
        )
        if cut_over:
            alias_flip(alias=row.alias, to=row.source, changed_by=changed_by, reason=f"abort of migration #{row.pk}")
        _unlink(row, keep_rollback=False)
        previous = row.step
        row.state, row.finished_at = MigrationState.ABORTED, timezone.now()
        row.save(update_fields=["state", "finished_at", "updated_at"])
    if cut_over:
        serving_drain()
    MIGRATION_STEPS.labels(step=previous, outcome="aborted").inc()
    echo(f"migration #{row.pk} aborted: {row.alias} names {row.source.name}" + (" again" if cut_over else ""))
    log_event(logger, "migration_aborted", migration=row.pk, step=previous, cut_over=cut_over, by=changed_by)
    return row


def migration_run_in_background(*, migration: NamespaceMigration, until: str | None = None) -> None:
    """Continue the migration off the request (the admin): a Celery task with a broker, else a thread here."""
    if settings.CELERY_BROKER_URL:
        from operations.tasks import namespace_migration_task

        transaction.on_commit(lambda: namespace_migration_task.delay(migration.pk, until))
        return

    def run() -> None:
        close_old_connections()
        try:
            migration_run(migration=NamespaceMigration.objects.get(pk=migration.pk), until=until)
        except MedkgError as error:
            log_event(logger, "migration_stopped", logging.WARNING, migration=migration.pk, error=error.message)
        finally:
            close_old_connections()

    transaction.on_commit(lambda: threading.Thread(target=run, name=f"migration-{migration.pk}", daemon=True).start())


# --- reading ----------------------------------------------------------------------------------------


def migration_backfill_figures() -> list[tuple[NamespaceMigration, dict[str, int]]]:
    """Each unfinished migration with its backfill's total, copied and indexed documents (metrics, admin)."""
    migrations = NamespaceMigration.objects.exclude(state__in=FINISHED_MIGRATION_STATES).select_related(
        "source", "target"
    )
    figures = []
    for migration in migrations:
        copied, total = migration.backfill_totals()
        tenant_ids = list(Tenant.objects.filter(slug__in=list(migration.progress)).values_list("pk", flat=True))
        waiting = sum(_unindexed(migration.target, tenant_ids).values()) if tenant_ids else 0
        figures.append((migration, {"total": total, "copied": copied, "indexed": max(copied - waiting, 0)}))
    return figures


def migration_describe(migration: NamespaceMigration) -> list[str]:
    """Lines for the command's --status: state, per-tenant progress and the gate's figures."""
    lines = [
        f"{migration}",
        f"  alias {migration.alias}; margin {migration.margin * 100:g} %; window {migration.window_seconds} s"
        + (f" (ends {migration.window_ends_at:%Y-%m-%d %H:%M})" if migration.window_ends_at else ""),
    ]
    for name in STEP_ORDER:
        record = migration.steps.get(name)
        if record:
            status = "ok" if record.get("ok") else "not ok"
            lines.append(f"  {name}: {status}, {record.get('seconds', 0):.2f} s {record.get('detail', '')}".rstrip())
    for slug, entry in sorted(migration.progress.items()):
        lines.append(
            f"  {slug}: {entry.get('copied', 0)}/{entry.get('total', 0)} copied, {entry.get('indexed', 0)} indexed"
        )
    gate = migration.gate
    if gate:
        for name, label in GATE_METRICS.items():
            lines.append(
                f"  {label}: {gate['source'][name]:.4f} → {gate['target'][name]:.4f} "
                f"({gate['drops'][name] * 100:+.1f} % drop)"
            )
        lines.append(f"  overlap@10: {gate.get('overlap_at_10')}; gate {'passed' if gate['passed'] else 'refused'}")
    if migration.error:
        lines.append(f"  error: {migration.error}")
    return lines
