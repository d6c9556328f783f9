"""Fair ingestion in the embedded mode: the ingestion thread runs one step at a time, tenants in turn.

Real model, real FAISS, PostgreSQL. The steps are recorded by wrapping `ingestion_job_step` (the real one runs);
the first step is held until every job is accepted, so the order is the runner's choice, not the clock's.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import embeddings.ingestion as ingestion
from embeddings.ingestion import IncomingDocument, documents_accept
from embeddings.models import Document, IngestionJob, JobStatus
from namespaces.models import Namespace, Tenant
from tests.conftest import DEFAULT_NAMESPACE

pytestmark = pytest.mark.django_db(transaction=True)
STEP = 4


def documents(tag: str, count: int) -> list[IncomingDocument]:
    return [
        IncomingDocument(id=f"{tag}-{index}", text=f"{tag} trial {index}: statin therapy and LDL", metadata={})
        for index in range(count)
    ]


def wait_for(condition: Any, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "ingestion did not finish"
        time.sleep(0.05)


def test_a_tenants_backlog_delays_another_tenants_job_by_one_step_at_most(
    synced: dict[str, Namespace], tenant_a: Tenant, tenant_b: Tenant, settings: Any, monkeypatch: Any
) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "thread"
    settings.MEDKG_INGESTION_STEP = STEP
    namespace = synced[DEFAULT_NAMESPACE]
    gate = threading.Event()
    steps: list[tuple[str, str]] = []  # (tenant, job) of each step, in the order the runner took them
    real_step = ingestion.ingestion_job_step

    def recorded_step(*, job_id: Any, worker: str = "") -> str:
        if not steps:
            gate.wait(timeout=60)
        job = IngestionJob.objects.select_related("tenant").get(pk=job_id)
        steps.append((job.tenant.slug, str(job.pk)))
        return real_step(job_id=job_id, worker=worker)

    monkeypatch.setattr(ingestion, "ingestion_job_step", recorded_step)
    a_jobs = [
        documents_accept(namespace=namespace, tenant=tenant_a, documents=documents(f"a{j}", 3 * STEP)) for j in range(5)
    ]
    time.sleep(0.2)  # A's first step has started and waits at the gate
    b_job = documents_accept(namespace=namespace, tenant=tenant_b, documents=documents("b", 1))
    gate.set()
    wait_for(lambda: not IngestionJob.objects.exclude(status=JobStatus.SUCCEEDED).exists())

    b_steps = [index for index, (tenant, _) in enumerate(steps) if tenant == tenant_b.slug]
    assert b_steps == [1], steps  # right after the step that was running when it was accepted
    a_order = [job for tenant, job in steps if tenant == tenant_a.slug]
    assert a_order == [str(job.pk) for job in a_jobs for _ in range(3)]  # A's own jobs in order, 3 steps each
    assert Document.objects.filter(tenant=tenant_a, indexed_version=1).count() == 5 * 3 * STEP
    assert IngestionJob.objects.get(pk=b_job.pk).processed == 1


def test_two_busy_tenants_alternate_step_by_step(
    synced: dict[str, Namespace], tenant_a: Tenant, tenant_b: Tenant, settings: Any, monkeypatch: Any
) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "thread"
    settings.MEDKG_INGESTION_STEP = STEP
    namespace = synced[DEFAULT_NAMESPACE]
    gate = threading.Event()
    steps: list[str] = []
    real_step = ingestion.ingestion_job_step

    def recorded_step(*, job_id: Any, worker: str = "") -> str:
        if not steps:
            gate.wait(timeout=60)
        steps.append(IngestionJob.objects.get(pk=job_id).tenant.slug)
        return real_step(job_id=job_id, worker=worker)

    monkeypatch.setattr(ingestion, "ingestion_job_step", recorded_step)
    for j in range(3):
        documents_accept(namespace=namespace, tenant=tenant_a, documents=documents(f"a{j}", 2 * STEP))
    time.sleep(0.2)
    documents_accept(namespace=namespace, tenant=tenant_b, documents=documents("b", 3 * STEP))
    gate.set()
    wait_for(lambda: not IngestionJob.objects.exclude(status=JobStatus.SUCCEEDED).exists())
    a, b = tenant_a.slug, tenant_b.slug
    assert steps == [a, b, a, b, a, b, a, a, a], steps


def test_a_whole_job_message_of_an_earlier_version_is_run_as_fair_steps(
    synced: dict[str, Namespace], tenant_a: Tenant, settings: Any, monkeypatch: Any
) -> None:
    """A broker may still hold `embeddings.ingestion_job` messages from before the fair steps; they must run the
    job. Celery runs eagerly here (no broker): the task and the steps it queues run in this process."""
    settings.MEDKG_INGESTION_STEP = STEP
    monkeypatch.setattr(ingestion, "ingestion_dispatch", lambda **_: None)  # accepted, not started
    job = documents_accept(namespace=synced[DEFAULT_NAMESPACE], tenant=tenant_a, documents=documents("old", 3 * STEP))
    assert IngestionJob.objects.get(pk=job.pk).status == JobStatus.QUEUED

    from embeddings.tasks import ingestion_job_task

    assert ingestion_job_task.apply(args=[str(job.pk)]).get() == f"{job.pk}: handed to the fair steps"
    assert IngestionJob.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED
    assert Document.objects.filter(tenant=tenant_a, indexed_version=1).count() == 3 * STEP
