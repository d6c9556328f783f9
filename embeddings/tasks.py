"""Celery tasks: thin wrappers over the ingestion services, plus worker start-up recovery and metrics."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_ready
from django.conf import settings
from django.db import transaction

from core.errors import BackendUnavailable
from core.logging import log_event
from embeddings.ingestion import ingestion_requeue, ingestion_step_fair
from embeddings.models import JobStatus

logger = logging.getLogger("medkg.embeddings.tasks")


# Only queues a step: no backend call to retry, but a worker killed before that must leave the message.
@shared_task(name="embeddings.ingestion_job", acks_late=True, reject_on_worker_lost=True)
def ingestion_job_task(job_id: str) -> str:
    """A message of an earlier version (one task ran a whole job): now a fair step, like every accepted job."""
    ingestion_step_task.delay()
    return f"{job_id}: handed to the fair steps"


@shared_task(
    bind=True,
    name="embeddings.ingestion_step",
    acks_late=True,  # a worker killed mid-step leaves the message to be delivered again
    reject_on_worker_lost=True,
    autoretry_for=(BackendUnavailable,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=None,  # the task stands for an accepted job: it must not vanish while the backend is down
)
def ingestion_step_task(self: Task) -> str:
    """One fair step of some unfinished job (embeddings.ingestion.ingestion_step_fair); queued again while that
    job has steps left, so each unfinished job keeps one task on the broker."""
    job_id, status = ingestion_step_fair(worker=self.request.hostname or "")
    if status == JobStatus.RUNNING:
        ingestion_step_task.delay()
    return f"{job_id}: {status}" if job_id else status


@worker_ready.connect
def requeue_jobs_of_previous_run(sender: Any = None, **_: Any) -> None:
    """Jobs this node was running when it died are ours to restart: nothing of this node runs yet."""
    hostname = getattr(sender, "hostname", "") or ""
    if settings.CELERY_WORKER_METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(settings.CELERY_WORKER_METRICS_PORT)
    if not hostname:
        return
    with transaction.atomic():
        jobs = ingestion_requeue(statuses=("running",), worker=hostname)
    log_event(logger, "worker_recovered_jobs", worker=hostname, jobs=[str(job.pk) for job in jobs])
