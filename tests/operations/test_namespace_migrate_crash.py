"""A crash of `manage.py namespace_migrate` at any moment loses nothing accepted and duplicates nothing.

The real command runs as a subprocess on this test's PostgreSQL database (a `transaction=True` test: it sees what we
committed) and the same FAISS folder. MEDKG_TEST_PAUSE_AT (operations.lifecycle's test hook) blocks it at a known
phase, where it is SIGKILLed; the next run (`--id N`) continues the migration from what the crash left.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings as django_settings
from django.db import connection

from embeddings.ingestion import IncomingDocument, documents_accept, documents_delete
from embeddings.models import Document
from embeddings.stores.registry import store_class, store_config_for
from namespaces.models import AliasFlip, Namespace, NamespaceAlias, NamespaceStandby, Tenant
from operations.lifecycle import TEST_PAUSE_VARIABLE
from operations.models import MigrationState, MigrationStep, NamespaceMigration
from tests.conftest import DEFAULT_NAMESPACE
from tests.operations.test_namespace_migration import new_version, scifact_subset, texts
from tests.servers import embedded_environment, log_tail, start

pytestmark = pytest.mark.django_db(transaction=True)

V1, V2 = DEFAULT_NAMESPACE, "single_vector.minilm.384.v2"
ALIAS = "single_vector.minilm.384"  # the command's default: --from's name without its version
CHUNK = 5


@pytest.fixture(autouse=True)
def _inline(settings: Any) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"  # the test's own writes are indexed when they commit


def command_environment(var_dir: Path, pause_at: str = "") -> dict[str, str]:
    """The command sees this test's database and FAISS folder; its jobs run inline, in it, as ours do."""
    database = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"))
    return embedded_environment(
        var_dir,
        DATABASE_URL=urlunsplit(database._replace(path=f"/{connection.settings_dict['NAME']}")),
        FAISS_DATA_DIR=str(django_settings.FAISS_DATA_DIR),
        MEDKG_INGESTION_LOCAL_MODE="inline",
        MEDKG_MIGRATION_BACKFILL_CHUNK=str(CHUNK),
        MEDKG_SERVING_STATE_TTL="0.2",
        MEDKG_TORCH_THREADS="1",
        **{TEST_PAUSE_VARIABLE: pause_at},
    )


def run_command(arguments: list[str], var_dir: Path, log_path: Path, *, pause_at: str = "") -> None:
    """Run namespace_migrate; with `pause_at`, SIGKILL it once it blocks there (else it must exit 0)."""
    command = [sys.executable, "manage.py", "namespace_migrate", *arguments]
    process = start(command, environment=command_environment(var_dir, pause_at), log_path=log_path)
    try:
        if not pause_at:
            assert process.wait(timeout=240) == 0, log_tail(log_path)
            return
        deadline = time.monotonic() + 240
        while f"{TEST_PAUSE_VARIABLE} reached {pause_at}" not in log_path.read_text(errors="replace"):
            assert process.poll() is None, f"exited {process.returncode} before {pause_at}:\n{log_tail(log_path)}"
            assert time.monotonic() < deadline, log_tail(log_path)
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # no goodbye: no rollback code, no finally, no atexit
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    connection.close()  # a fresh connection sees what the killed process committed (and not what it did not)


def alias_target() -> str:
    return NamespaceAlias.objects.select_related("namespace").get(name=ALIAS).namespace.name


def live_ids(namespace: Namespace, tenant: Tenant) -> list[str]:
    rows = Document.objects.filter(namespace=namespace, tenant=tenant, deleted_at__isnull=True)
    return sorted(rows.values_list("external_id", flat=True))


def indexed_labels(namespace: Namespace, tenant: Tenant) -> set[int]:
    """The FAISS ids of the tenant's index, read afresh from disk (not this process's cached store)."""
    config = store_config_for(namespace)
    return set(store_class(config.backend)(config).labels(tenant=tenant.slug))


def assert_exactly_once(v1: Namespace, v2: Namespace, tenants: list[Tenant]) -> None:
    """Every live document of v1 is in v2 once: one row each (no deleted one left live), one FAISS id per row."""
    for tenant in tenants:
        expected = live_ids(v1, tenant)
        rows = Document.objects.filter(namespace=v2, tenant=tenant)
        assert sorted(rows.values_list("external_id", flat=True)) == expected
        assert live_ids(v2, tenant) == expected
        assert all(row.indexed_version == row.version for row in rows)
        assert indexed_labels(v2, tenant) == set(rows.values_list("pk", flat=True))


def assert_recorded_once(migration: NamespaceMigration) -> None:
    """One migration, each link once, the alias flipped once per real change."""
    assert NamespaceMigration.objects.count() == 1
    assert len(migration.links) == len({tuple(link) for link in migration.links})
    pairs = list(NamespaceStandby.objects.filter(primary__name__in=[V1, V2]).values_list("primary", "standby"))
    assert len(pairs) == len(set(pairs))
    flips = list(
        AliasFlip.objects.filter(alias__name=ALIAS).order_by("id").values_list("from_namespace", "to_namespace")
    )
    changes = [("", V1)] + ([(V1, V2)] if alias_target() == V2 else [])
    assert flips == changes, flips


def test_sigkill_at_each_phase_then_rerun_completes_with_every_document_once(
    synced: dict[str, Namespace], tenant_a: Tenant, tenant_b: Tenant, tmp_path: Path
) -> None:
    v1, v2 = synced[V1], new_version(synced)
    documents_accept(namespace=v1, tenant=tenant_a, documents=texts(22))
    documents_accept(namespace=v1, tenant=tenant_b, documents=texts(9, start=22))
    documents_delete(namespace=v1, tenant=tenant_a, external_ids=[d.id for d in texts(3)])
    dataset = scifact_subset(tmp_path / "scifact-tiny", queries=10, others=20)
    var_dir = tmp_path / "var"
    start_arguments = ["--from", V1, "--to", V2, "--dataset", str(dataset), "--purge-on-retire"]

    # 1. Shadow: the link is committed, the step is not done. v1 serves; v2 has nothing yet but mirrors writes.
    run_command(start_arguments, var_dir, tmp_path / "shadow.log", pause_at="shadow")
    migration = NamespaceMigration.objects.get()
    resume = ["--id", str(migration.pk)]
    assert (migration.step, migration.state) == (MigrationStep.SHADOW, MigrationState.RUNNING)
    assert alias_target() == V1 and not Document.objects.filter(namespace=v2).exists()
    documents_accept(  # accepted while no command runs: the committed link mirrors it into v2
        namespace=v1,
        tenant=tenant_b,
        documents=[IncomingDocument(id="late", text="accepted after the crash", metadata={})],
    )
    assert live_ids(v2, tenant_b) == ["late"]
    assert_recorded_once(migration)

    # 2. Backfill: the first chunk and its cursor are committed; the rest is not copied.
    run_command(resume, var_dir, tmp_path / "backfill.log", pause_at="backfill")
    migration.refresh_from_db()
    assert migration.step == MigrationStep.BACKFILL and migration.steps["shadow"]["ok"]
    assert migration.progress["tenant-a"]["copied"] == CHUNK
    assert len(live_ids(v2, tenant_a)) == CHUNK < len(live_ids(v1, tenant_a))
    assert indexed_labels(v2, tenant_a) == set(
        Document.objects.filter(namespace=v2, tenant=tenant_a).values_list("pk", flat=True)
    )
    assert alias_target() == V1
    copied = live_ids(v2, tenant_a)
    documents_delete(namespace=v1, tenant=tenant_a, external_ids=[copied[0]])  # mirrored: gone from v2 too
    assert copied[0] not in live_ids(v2, tenant_a)
    assert_recorded_once(migration)

    # 3. Gate: measured, nothing recorded. The backfill finished and is exactly v1's live documents.
    run_command(resume, var_dir, tmp_path / "gate.log", pause_at="gate")
    migration.refresh_from_db()
    assert migration.step == MigrationStep.GATE and migration.steps["backfill"]["ok"] and not migration.gate
    assert_exactly_once(v1, v2, [tenant_a, tenant_b])
    assert alias_target() == V1
    assert_recorded_once(migration)

    # 4. Cutover, inside its transaction: the flip is rolled back with the crash, v1 still serves.
    run_command(resume, var_dir, tmp_path / "cutover.log", pause_at="cutover")
    migration.refresh_from_db()
    assert migration.step == MigrationStep.CUTOVER and migration.gate["passed"]
    assert alias_target() == V1 and not NamespaceStandby.objects.filter(primary=v2, standby=v1).exists()
    assert_recorded_once(migration)

    # 5. Cutover, committed but not recorded: v2 serves, the window is not set; the rerun must not flip again.
    run_command(resume, var_dir, tmp_path / "cutover-committed.log", pause_at="cutover-committed")
    migration.refresh_from_db()
    assert migration.step == MigrationStep.CUTOVER and migration.window_ends_at is None
    assert alias_target() == V2 and NamespaceStandby.objects.filter(primary=v2, standby=v1).exists()
    assert_recorded_once(migration)

    # 6. The rerun without a hook: on to the rollback window, where it waits (exit 0).
    run_command(resume, var_dir, tmp_path / "done.log")
    migration.refresh_from_db()
    assert (migration.step, migration.state) == (MigrationStep.WINDOW, MigrationState.WAITING)
    assert all(migration.steps[step]["ok"] for step in ("shadow", "backfill", "gate", "cutover"))
    assert migration.window_ends_at is not None and alias_target() == V2
    assert_exactly_once(v1, v2, [tenant_a, tenant_b])
    assert_recorded_once(migration)
    assert {(V1, V2), (V2, V1)} <= set(NamespaceStandby.objects.values_list("primary__name", "standby__name"))
    assert "late" in live_ids(v2, tenant_b) and copied[0] not in live_ids(v2, tenant_a)

    # 7. Retire (--now ends the window), killed after the first tenant's index is dropped: v2 serves untouched.
    served = {tenant.slug: live_ids(v2, tenant) for tenant in (tenant_a, tenant_b)}
    run_command([*resume, "--now"], var_dir, tmp_path / "retire.log", pause_at="retire")
    migration.refresh_from_db()
    assert (migration.step, migration.state) == (MigrationStep.RETIRE, MigrationState.RUNNING)
    assert indexed_labels(v1, tenant_a) == set() and indexed_labels(v1, tenant_b)  # tenants are dropped in order
    assert Document.objects.filter(namespace=v1).exists() and alias_target() == V2
    assert {tenant.slug: live_ids(v2, tenant) for tenant in (tenant_a, tenant_b)} == served

    # 8. The rerun finishes the retire: v1's indexes and rows are gone, v2 holds what it held, once.
    run_command([*resume, "--now"], var_dir, tmp_path / "retired.log")
    migration.refresh_from_db()
    assert migration.state == MigrationState.DONE and migration.steps["retire"]["ok"]
    assert indexed_labels(v1, tenant_a) == indexed_labels(v1, tenant_b) == set()
    assert not Document.objects.filter(namespace=v1).exists() and alias_target() == V2
    for tenant in (tenant_a, tenant_b):
        rows = Document.objects.filter(namespace=v2, tenant=tenant)
        assert sorted(rows.values_list("external_id", flat=True)) == served[tenant.slug] == live_ids(v2, tenant)
        assert indexed_labels(v2, tenant) == set(rows.values_list("pk", flat=True))
    assert not NamespaceStandby.objects.filter(primary__name__in=[V1, V2]).exists()
    assert_recorded_once(migration)
