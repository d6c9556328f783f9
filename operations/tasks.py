"""Celery tasks of the operations app: thin wrappers over operations.lifecycle."""

from __future__ import annotations

from celery import shared_task

from operations.lifecycle import migration_run
from operations.models import NamespaceMigration


@shared_task(name="operations.namespace_migration", acks_late=True, reject_on_worker_lost=True)
def namespace_migration_task(migration_id: int, until: str | None = None) -> str:
    """Continue a migration (its steps are idempotent: a redelivered task picks up where the last one stopped)."""
    migration = migration_run(migration=NamespaceMigration.objects.get(pk=migration_id), until=until)
    return f"{migration.step}:{migration.state}"
