"""Ingestion on the real stack: gunicorn + a Celery worker on Redis, a PostgreSQL database of their own, FAISS files.

Driven from outside like a client and an operator would: HTTP for documents and search, manage.py for the switch
and the rebuild, signals for the crash. Nothing here is mocked.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import yaml

from tests.servers import (
    REPO_ROOT,
    VENV_BIN,
    embedded_environment,
    free_port,
    log_tail,
    manage,
    start,
    stop,
    wait_for_health,
)

NAMESPACE = "single_vector.minilm.384.v1"
TENANTS = ("tenant-a", "tenant-b", "tenant-c", "tenant-d")
STEP = 40  # documents per ingestion step: a job of a few hundred documents has many steps to be killed in


@dataclass
class Stack:
    environment: dict[str, str]
    var_dir: Path
    web_port: int
    worker_name: str
    tokens: dict[str, str]
    log_dir: Path
    web: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start_worker(self) -> None:
        log_path = self.log_dir / f"worker-{len(self.logs)}.log"
        self.logs.append(log_path)
        command = [
            str(VENV_BIN / "celery"),
            "-A",
            "medkg",
            "worker",
            "--loglevel=INFO",
            "--concurrency=1",
            f"--hostname={self.worker_name}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--queues={self.environment['CELERY_TASK_DEFAULT_QUEUE']}",
        ]
        self.worker = start(command, environment=self.environment, log_path=log_path)
        deadline = time.monotonic() + 120
        while "ready." not in log_path.read_text(errors="replace"):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Celery worker did not start:\n{log_tail(log_path)}")
            time.sleep(0.5)

    def kill_worker(self) -> None:
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)  # the main process and its pool child: no goodbye, no ack
        self.worker.wait(timeout=30)
        self.worker = None

    def start_web(self) -> None:
        log_path = self.log_dir / f"web-{len(self.logs)}.log"
        self.logs.append(log_path)
        command = [
            str(VENV_BIN / "gunicorn"),
            "medkg.wsgi:application",
            f"--bind=127.0.0.1:{self.web_port}",
            "--worker-class=gthread",
            "--workers=1",
            "--threads=4",
            "--timeout=120",
        ]
        self.web = start(command, environment=self.environment, log_path=log_path)
        wait_for_health(self.base_url, process=self.web, log_path=log_path, deadline=time.monotonic() + 120)

    def manage(self, *arguments: str) -> str:
        return manage(list(arguments), environment=self.environment)

    def request(self, method: str, path: str, tenant: str, body: dict[str, Any] | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[tenant]}"}
        return httpx.request(method, self.base_url + path, json=body, headers=headers, timeout=60)

    def ingest(self, tenant: str, documents: list[dict[str, Any]], namespace: str = NAMESPACE) -> str:
        response = self.request(
            "POST", f"/v1/namespaces/{namespace}/documents", tenant, {"tenant_id": tenant, "documents": documents}
        )
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    def job(self, tenant: str, job_id: str) -> dict[str, Any]:
        response = self.request("GET", f"/v1/jobs/{job_id}", tenant)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_job(self, tenant: str, job_id: str, status: str = "succeeded", timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(tenant, job_id)
            if job["status"] == status:
                return job
            if job["status"] == "failed" or time.monotonic() > deadline:
                logs = "\n".join(log_tail(path, 3000) for path in self.logs[-2:])
                pytest.fail(f"job {job_id} is {job}, expected {status}\n{logs}")
            time.sleep(0.5)

    def search(self, tenant: str, query: str, k: int = 10, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
        response = self.request(
            "POST", f"/v1/namespaces/{namespace}/search", tenant, {"tenant_id": tenant, "query": query, "k": k}
        )
        assert response.status_code == 200, response.text
        return list(response.json()["hits"])


def _server_url(database: str) -> str:
    base = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"))
    return urlunsplit(base._replace(path=f"/{database}"))


def _admin(sql: str) -> None:
    with psycopg.connect(_server_url("postgres").replace("postgres://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    suffix = secrets.token_hex(4)
    database = f"medkg_stack_{suffix}"
    _admin(f'CREATE DATABASE "{database}"')
    root = tmp_path_factory.mktemp("stack")
    redis = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    environment = embedded_environment(
        root / "var",
        DATABASE_URL=_server_url(database),
        CELERY_BROKER_URL=urlunsplit(redis._replace(path="/14")),
        CELERY_TASK_DEFAULT_QUEUE=f"medkg-test-{suffix}",  # parallel runs never take each other's tasks
        CELERY_VISIBILITY_TIMEOUT="30",
        MEDKG_INGESTION_STEP=str(STEP),
        MEDKG_TORCH_THREADS="1",  # web and worker share two cores
    )
    stack = Stack(
        environment=environment,
        var_dir=root / "var",
        web_port=free_port(),
        worker_name=f"stack-{suffix}@localhost",
        tokens={},
        log_dir=root,
    )
    try:
        stack.manage("migrate", "--noinput")
        stack.manage("sync_namespaces")
        for tenant in TENANTS:
            stack.manage("create_tenant", tenant)
            stack.tokens[tenant] = stack.manage(
                "issue_token", "--tenant", tenant, "--scopes", "embed:read,embed:write", "--ttl", "1h"
            ).strip()
        stack.start_worker()
        stack.start_web()
        yield stack
    finally:
        for process in (stack.web, stack.worker):
            if process is not None:
                stop(process)
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def documents(prefix: str, count: int) -> list[dict[str, Any]]:
    topics = ["cardiology", "oncology", "neurology", "infectious disease", "endocrinology", "nephrology"]
    return [
        {
            "id": f"{prefix}-{i}",
            "text": f"Case report {prefix} number {i} in {topics[i % len(topics)]}: patient {i * 7919 % 1000} responded.",
            "metadata": {"topic": topics[i % len(topics)], "n": i},
        }
        for i in range(count)
    ]


def test_ingest_and_search_through_a_real_worker(stack: Stack) -> None:
    sent = documents("a", 30)
    job_id = stack.ingest("tenant-a", sent)
    job = stack.wait_job("tenant-a", job_id)
    assert job["processed"] == job["total"] == 30
    hits = stack.search("tenant-a", sent[17]["text"], k=3)
    assert hits[0]["id"] == "a-17" and hits[0]["metadata"] == sent[17]["metadata"]
    assert "Task embeddings.ingestion_step[" in stack.logs[0].read_text(errors="replace")  # the worker ran it
    assert stack.search("tenant-b", "Case report a number 17", k=50) == []  # another tenant sees nothing


def test_bm25_indexed_by_a_forked_celery_worker_is_searched_by_gunicorn(stack: Stack) -> None:
    """Pyserini's JVM starts in the prefork child that runs the job and in the gunicorn worker that searches: each
    process its own, none inherited across a fork. The Lucene index the worker commits is what the web reads."""
    bm25 = "sparse.bm25.auto.v1"
    sent = documents("bm", 40)
    job = stack.wait_job("tenant-a", stack.ingest("tenant-a", sent, namespace=bm25))
    assert job["processed"] == job["total"] == 40
    hits = stack.search("tenant-a", "oncology", k=50, namespace=bm25)
    assert {hit["id"] for hit in hits} == {d["id"] for d in sent if d["metadata"]["topic"] == "oncology"}
    assert stack.search("tenant-b", "oncology", k=50, namespace=bm25) == []
    worker_log = stack.logs[0].read_text(errors="replace")
    assert "pyserini_jvm_started" in worker_log and "a JVM does not survive fork" not in worker_log


def test_a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing(stack: Stack) -> None:
    sent = documents("b", 12 * STEP)
    job_id = stack.ingest("tenant-b", sent)
    deadline = time.monotonic() + 180
    while True:  # wait until the job is part-way: some steps durable, more to come
        job = stack.job("tenant-b", job_id)
        if job["status"] == "running" and STEP <= job["processed"] < len(sent) - 2 * STEP:
            break
        assert job["status"] != "succeeded", "the job finished before it could be killed; make it longer"
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    stack.kill_worker()
    killed_at = stack.job("tenant-b", job_id)
    assert killed_at["status"] == "running" and killed_at["processed"] < len(sent)
    stack.start_worker()  # the same node name: it takes back the jobs it was running
    job = stack.wait_job("tenant-b", job_id)
    assert job["processed"] == len(sent)
    hits = stack.search("tenant-b", "case report", k=len(sent) + 50)
    ids = [hit["id"] for hit in hits]
    assert len(ids) == len(set(ids)) == len(sent)  # every accepted document exactly once
    assert set(ids) == {document["id"] for document in sent}
    for number in (0, len(sent) // 2, len(sent) - 1):
        assert stack.search("tenant-b", sent[number]["text"], k=1)[0]["id"] == sent[number]["id"]


def test_the_index_survives_a_restart_of_the_web_process(stack: Stack) -> None:
    queries = ["oncology patient responded", "Case report a number 3", "neurology"]
    before = [stack.search("tenant-a", query, k=5) for query in queries]
    assert all(before)
    assert stack.web is not None
    stop(stack.web)
    stack.start_web()
    assert [stack.search("tenant-a", query, k=5) for query in queries] == before


def test_pause_holds_accepted_documents_and_resume_indexes_them_all(stack: Stack) -> None:
    stack.manage("ingestion", "pause", "--reason", "test")
    try:
        assert "paused: *" in stack.manage("ingestion", "status")
        sent = documents("c", 25)
        job_id = stack.ingest("tenant-c", sent)
        time.sleep(3)  # a worker that ignored the switch would have indexed them by now
        assert stack.job("tenant-c", job_id)["status"] == "paused"
        assert stack.search("tenant-c", "case report", k=50) == []
    finally:
        output = stack.manage("ingestion", "resume")
    assert "1 job(s) queued again" in output
    stack.wait_job("tenant-c", job_id)
    assert {hit["id"] for hit in stack.search("tenant-c", "case report", k=50)} == {d["id"] for d in sent}


def test_rebuild_gives_the_same_search_results(stack: Stack) -> None:
    queries = ["cardiology case", "Case report b number 101 in nephrology", "patient 17 responded", "b-3"]
    before = {query: stack.search("tenant-b", query, k=10) for query in queries}
    output = stack.manage("rebuild_index", "--namespace", NAMESPACE, "--yes")
    assert "rebuilt" in output and "bootstrap:" in output
    after = {query: stack.search("tenant-b", query, k=10) for query in queries}
    for query in queries:
        assert [hit["id"] for hit in after[query]] == [hit["id"] for hit in before[query]]
        for old, new in zip(before[query], after[query], strict=True):
            assert new["score"] == pytest.approx(old["score"], abs=1e-5)
    assert "paused: nothing" in stack.manage("ingestion", "status")  # resumed afterwards


def test_a_tenants_backlog_delays_another_tenants_job_by_at_most_a_step(stack: Stack) -> None:
    """Each Celery task takes one step of the job whose tenant waited longest (embeddings.ingestion_step_fair):
    run in arrival order, the backlog's 15 steps would all go first."""
    backlog = [stack.ingest("tenant-a", documents(f"backlog{j}", 3 * STEP)) for j in range(5)]

    def backlog_processed() -> int:
        return sum(stack.job("tenant-a", job_id)["processed"] for job_id in backlog)

    deadline = time.monotonic() + 120
    while backlog_processed() == 0:  # the backlog is being worked on
        assert time.monotonic() < deadline
        time.sleep(0.1)
    before = backlog_processed()
    small = stack.ingest("tenant-c", documents("late", 5))
    while stack.job("tenant-c", small)["status"] != "succeeded":
        after = backlog_processed()
        assert time.monotonic() < deadline + 120
        time.sleep(0.05)
    steps = (after - before) / STEP
    print(f"\ntenant-c's 1-step job behind tenant-a's 15-step backlog: {steps:.0f} backlog step(s) ran meanwhile")
    # 2 measured alone (the step in flight, and one that ended while `before` was read); under the full suite's load
    # the POST itself can take a step's time. In arrival order the whole 15-step backlog would go first.
    assert steps <= 4, f"{steps:.0f} steps of tenant-a's backlog ran before tenant-c's 1-step job finished"
    for job_id in backlog:
        stack.wait_job("tenant-a", job_id)
    ids = [hit["id"] for hit in stack.search("tenant-a", "Case report backlog", k=1000)]
    backlog_ids = {i for i in ids if i.startswith("backlog")}
    assert len(backlog_ids) == 5 * 3 * STEP and len(ids) == len(set(ids))


def _served(stack: Stack, tenant: str, query: str, namespace: str = NAMESPACE) -> tuple[str, list[str]]:
    body = {"tenant_id": tenant, "query": query, "k": 10}
    response = stack.request("POST", f"/v1/namespaces/{namespace}/search", tenant, body)
    assert response.status_code == 200, response.text
    return response.json()["namespace"], [hit["id"] for hit in response.json()["hits"]]


def _all_ids(stack: Stack, tenant: str, namespace: str) -> list[str]:
    return [hit["id"] for hit in stack.search(tenant, "case report", k=500, namespace=namespace)]


def test_a_standby_kept_by_the_worker_holds_the_same_ids_and_a_rollback_to_it_searches_them(
    stack: Stack, tmp_path: Path
) -> None:
    """Kept last in the module: it links the default namespace to a standby (and unlinks it at the end)."""
    standby = "single_vector.minilm.384.v2"
    seed = yaml.safe_load((REPO_ROOT / "config" / "embedding" / "namespaces" / f"{NAMESPACE}.yaml").read_text())
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / f"{standby}.yaml").write_text(yaml.safe_dump({**seed, "name": standby, "aliases": []}))
    (seeds / f"{NAMESPACE}.yaml").write_text(yaml.safe_dump({**seed, "standby": standby}))
    stack.manage("sync_namespaces", "--directory", str(seeds))
    try:
        sent = documents("s", 90)
        stack.wait_job("tenant-d", stack.ingest("tenant-d", sent))
        deadline = time.monotonic() + 120
        while len(_all_ids(stack, "tenant-d", standby)) < len(sent):  # the standby's own job, on the same worker
            assert time.monotonic() < deadline, "the standby did not index the documents"
            time.sleep(0.5)
        for namespace in (NAMESPACE, standby):
            ids = _all_ids(stack, "tenant-d", namespace)
            assert len(ids) == len(set(ids)) == len(sent) and set(ids) == {d["id"] for d in sent}
        queries = ["cardiology patient", "Case report s number 42 in endocrinology", "neurology responded", "s-7"]
        before = {query: _served(stack, "tenant-d", query) for query in queries}
        assert {name for name, _ in before.values()} == {NAMESPACE}
        assert {query: _served(stack, "tenant-d", query, standby)[1] for query in queries} == {
            query: ids for query, (_, ids) in before.items()
        }

        stack.manage("rollback_embeddings", "--namespace", NAMESPACE, "--to", standby, "--reason", "standby test")
        during = {query: _served(stack, "tenant-d", query) for query in queries}
        assert {name for name, _ in during.values()} == {standby}
        assert {q: ids for q, (_, ids) in during.items()} == {q: ids for q, (_, ids) in before.items()}
        stack.manage("rollback_embeddings", "--undo", "--namespace", NAMESPACE)
        after = {query: _served(stack, "tenant-d", query) for query in queries}
        assert after == before

        gone = [d["id"] for d in sent[:10]]
        response = stack.request(
            "DELETE", f"/v1/namespaces/{NAMESPACE}/documents", "tenant-d", {"tenant_id": "tenant-d", "ids": gone}
        )
        assert response.status_code == 202, response.text
        stack.wait_job("tenant-d", response.json()["job_id"])
        deadline = time.monotonic() + 60
        while set(gone) & set(_all_ids(stack, "tenant-d", standby)):
            assert time.monotonic() < deadline, "the delete did not reach the standby"
            time.sleep(0.5)
        assert set(_all_ids(stack, "tenant-d", NAMESPACE)) == set(_all_ids(stack, "tenant-d", standby))
    finally:
        (seeds / f"{NAMESPACE}.yaml").write_text(yaml.safe_dump(seed))
        stack.manage("sync_namespaces", "--directory", str(seeds))


def test_a_worker_killed_mid_backfill_leaves_every_document_exactly_once_in_the_new_version(
    stack: Stack, tmp_path: Path
) -> None:
    """namespace_migrate's backfill re-embeds the stored documents into v2 through the worker's jobs; SIGKILL of the
    worker part-way, a restart, and the command's wait completes with v2 holding v1's ids once each."""
    target = "single_vector.minilm.384.v3"
    seed = yaml.safe_load((REPO_ROOT / "config" / "embedding" / "namespaces" / f"{NAMESPACE}.yaml").read_text())
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / f"{target}.yaml").write_text(yaml.safe_dump({**seed, "name": target, "aliases": []}))
    stack.manage("sync_namespaces", "--directory", str(seeds))
    sent = documents("m", 10 * STEP)
    stack.wait_job("tenant-d", stack.ingest("tenant-d", sent))
    expected = set(_all_ids(stack, "tenant-d", NAMESPACE))
    assert {d["id"] for d in sent} <= expected
    log_path = tmp_path / "migrate.log"
    command = [str(VENV_BIN / "python"), "manage.py", "namespace_migrate", "--from", NAMESPACE, "--to", target]
    migrate = start([*command, "--until", "backfill"], environment=stack.environment, log_path=log_path)
    try:
        deadline = time.monotonic() + 180
        while len(_all_ids(stack, "tenant-d", target)) < STEP:  # some steps of the backfill are durable
            assert migrate.poll() is None, log_tail(log_path)
            assert time.monotonic() < deadline, log_tail(log_path)
            time.sleep(0.2)
        assert len(_all_ids(stack, "tenant-d", target)) < len(expected), "the backfill finished before the kill"
        stack.kill_worker()
        stack.start_worker()  # the same node: it lifts the leases of the steps it died in and goes on
        assert migrate.wait(timeout=300) == 0, log_tail(log_path)
    finally:
        if migrate.poll() is None:
            stop(migrate)
    ids = _all_ids(stack, "tenant-d", target)
    assert len(ids) == len(set(ids)) and set(ids) == expected  # every stored document, exactly once
    assert "backfill" in stack.manage("namespace_migrate", "--list")
    stack.manage("namespace_migrate", "--id", "1", "--abort")  # v1 serves as before, nothing mirrors into v3
