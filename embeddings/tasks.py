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
from embeddings.ingestion import ingestion_job_run, ingestion_requeue

logger = logging.getLogger("medkg.embeddings.tasks")


@shared_task(
    bind=True,
    name="embeddings.ingestion_job",
    acks_late=True,  # a worker killed mid-job leaves the message to be delivered again
    reject_on_worker_lost=True,
    autoretry_for=(BackendUnavailable,),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=20,
)
def ingestion_job_task(self: Task, job_id: str) -> str:
    return ingestion_job_run(job_id=job_id, worker=self.request.hostname or "")


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
