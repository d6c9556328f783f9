"""Re-embedding migrations (operations.lifecycle, manage.py namespace_migrate): PostgreSQL, the real MiniLM, real
FAISS; ingestion jobs run inline when their transaction commits, so every test commits for real."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from prometheus_client import REGISTRY

from embeddings import ingestion
from embeddings.ingestion import IncomingDocument, documents_accept, documents_delete
from embeddings.models import Document, JobPurpose
from embeddings.stores.registry import index_for
from namespaces.models import Namespace, NamespaceAlias, NamespaceStandby, StandbyPurpose, Tenant
from namespaces.selectors import alias_resolve
from namespaces.services import standby_attach
from operations import lifecycle
from operations.errors import MigrationRefused
from operations.lifecycle import migration_abort, migration_pause, migration_plan, migration_resume, migration_run
from operations.models import MigrationState, MigrationStep, NamespaceMigration
from tests.conftest import DEFAULT_NAMESPACE, counter_value, make_token
from tests.embeddings.test_evaluate_retrieval import SCIFACT

pytestmark = pytest.mark.django_db(transaction=True)

V1, V2 = DEFAULT_NAMESPACE, "single_vector.minilm.384.v2"
ALIAS = "single_vector.minilm"
SEARCH = f"/v1/namespaces/{ALIAS}/search"


@pytest.fixture(autouse=True)
def _inline(settings: Any) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"  # each job runs when the transaction that accepted it commits
    settings.MEDKG_SERVING_STATE_TTL = 0.2  # the cutover's drain


def scifact_subset(folder: Path, *, queries: int, others: int) -> Path:
    """The first `queries` judged SciFact queries, their relevant documents and `others` more: a gate in seconds."""
    with open(SCIFACT / "qrels" / "test.tsv", newline="") as handle:
        judgements = list(csv.DictReader(handle, delimiter="\t"))
    kept = list(dict.fromkeys(row["query-id"] for row in judgements))[:queries]
    qrels = [row for row in judgements if row["query-id"] in kept]
    relevant = {row["corpus-id"] for row in qrels}
    corpus, extra = [], 0
    for line in (SCIFACT / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["_id"] in relevant or extra < others:
            extra += row["_id"] not in relevant
            corpus.append(line)
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    lines = (SCIFACT / "queries.jsonl").read_text().splitlines()
    (folder / "queries.jsonl").write_text("\n".join(q for q in lines if json.loads(q)["_id"] in kept) + "\n")
    with open(folder / "qrels" / "test.tsv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["query-id", "corpus-id", "score"], delimiter="\t")
        writer.writeheader()
        writer.writerows(qrels)
    return folder


@pytest.fixture
def gate_dataset(tmp_path: Path) -> Path:
    return scifact_subset(tmp_path / "scifact-100", queries=100, others=250)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """For tests about the steps around the gate, not the gate's figures."""
    return scifact_subset(tmp_path / "scifact-tiny", queries=10, others=20)


def new_version(synced: dict[str, Namespace], name: str = V2, **changes: Any) -> Namespace:
    """v2: a copy of v1's settings, with `changes`."""
    namespace = Namespace.objects.get(name=V1)
    namespace.pk, namespace.name, namespace.source_file = None, name, ""
    for name, value in changes.items():
        setattr(namespace, name, value)
    namespace.save()
    return namespace


def texts(count: int, start: int = 0) -> list[IncomingDocument]:
    rows = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").read_text().splitlines()[start : start + count]]
    return [IncomingDocument(id=str(r["_id"]), text=f"{r['title']} {r['text']}", metadata={}) for r in rows]


def accept(namespace: Namespace, tenant: Tenant, documents: list[IncomingDocument]) -> None:
    documents_accept(namespace=namespace, tenant=tenant, documents=documents)


def live_ids(namespace: Namespace, tenant: Tenant) -> list[str]:
    rows = Document.objects.filter(namespace=namespace, tenant=tenant, deleted_at__isnull=True)
    return sorted(rows.values_list("external_id", flat=True))


def plan(source: Namespace, target: Namespace, dataset: Path, **options: Any) -> NamespaceMigration:
    return migration_plan(source=source, target=target, alias=ALIAS, created_by="test", dataset=str(dataset), **options)


def links() -> set[tuple[str, str]]:
    """Standby links between the versions under test (the seed files' own, Qwen3 -> MiniLM, are not the test's)."""
    pairs = set(NamespaceStandby.objects.values_list("primary__name", "standby__name"))
    return {pair for pair in pairs if pair != ("single_vector.qwen3.4096.v1", V1)}


def search_ids(api: Any, token: str, query: str) -> tuple[str, list[str]]:
    response = api.post(SEARCH, {"tenant_id": "tenant-a", "query": query, "k": 10}, token=token)
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    return body["namespace"], [hit["id"] for hit in body["hits"]]


def steps_counted(step: str, outcome: str) -> float:
    return counter_value("embedding_migration_steps_total", step=step, outcome=outcome)


def test_an_identical_v2_passes_the_gate_and_cuts_over_with_no_failed_request(
    synced: dict[str, Namespace], tenant_a: Tenant, gate_dataset: Path, api: Any
) -> None:
    v1, v2 = synced[V1], new_version(synced)
    accept(v1, tenant_a, texts(60))
    token = make_token(tenant_a, ["embed:read", "embed:write"])
    migration = plan(v1, v2, gate_dataset)
    assert alias_resolve(ALIAS) == V1  # the plan created the alias, naming the source
    queries = ["vitamin D and bone density", "tumour suppressor genes", "antibiotic resistance in bacteria"]
    before = {query: search_ids(api, token, query) for query in queries}
    assert all(namespace == V1 for namespace, _ in before.values())
    done_before = steps_counted("gate", "done")

    migration = migration_run(migration=migration, until=MigrationStep.GATE)
    assert migration.state == MigrationState.WAITING and migration.step == MigrationStep.CUTOVER
    gate = migration.gate
    assert gate["passed"] and gate["drops"] == {"ndcg_at_10": 0.0, "recall_at_10": 0.0}, gate
    assert gate["source"]["ndcg_at_10"] > 0.5 and gate["overlap_at_10"] == 1.0
    assert steps_counted("gate", "done") == done_before + 1

    failures: list[str] = []
    served: set[str] = set()
    stop = threading.Event()

    def load() -> None:  # a client naming the alias throughout the cutover
        from django.db import connection

        try:
            while not stop.is_set():
                response = api.post(SEARCH, {"tenant_id": "tenant-a", "query": queries[0], "k": 5}, token=token)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.content[:200]!r}")
                else:
                    served.add(response.json()["namespace"])
        finally:
            connection.close()

    thread = threading.Thread(target=load)
    thread.start()
    try:
        migration = migration_run(migration=migration, until=MigrationStep.CUTOVER)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == [] and served == {V1, V2}
    assert migration.state == MigrationState.WAITING and migration.step == MigrationStep.WINDOW
    assert alias_resolve(ALIAS) == V2 and migration.window_ends_at is not None
    assert {(V1, V2), (V2, V1)} <= links()  # v1 is v2's standby for the window; v1 still mirrors to v2
    after = {query: search_ids(api, token, query) for query in queries}
    assert after == {query: (V2, ids) for query, (_, ids) in before.items()}

    # Within the window: a write through the alias reaches v1 too, and the undo flips back at once.
    api.post(
        f"/v1/namespaces/{ALIAS}/documents",
        {"tenant_id": "tenant-a", "documents": [{"id": "late", "text": "written after the cutover"}]},
        token=token,
    )
    assert "late" in live_ids(v1, tenant_a) and "late" in live_ids(v2, tenant_a)
    migration_run(migration=migration)  # the window has not ended: nothing is retired
    assert NamespaceMigration.objects.get(pk=migration.pk).state == MigrationState.WAITING
    migration = migration_abort(migration=migration, changed_by="test")
    assert migration.state == MigrationState.ABORTED and alias_resolve(ALIAS) == V1 and links() == set()
    assert search_ids(api, token, queries[1]) == before[queries[1]]


def test_a_worse_v2_is_refused_with_the_measured_drop_and_v1_keeps_serving(
    synced: dict[str, Namespace], tenant_a: Tenant, gate_dataset: Path, api: Any
) -> None:
    v1, v2 = synced[V1], new_version(synced, max_tokens=32)  # documents truncated to 32 tokens
    accept(v1, tenant_a, texts(20))
    token = make_token(tenant_a, ["embed:read"])
    migration = plan(v1, v2, gate_dataset)
    refused_before = steps_counted("gate", "refused")
    with pytest.raises(MigrationRefused, match=r"(Recall|nDCG)@10 of .* is [0-9.]+ % below .* the margin is 5 %"):
        migration_run(migration=migration)
    migration.refresh_from_db()
    assert migration.state == MigrationState.REFUSED and migration.step == MigrationStep.GATE
    assert not migration.gate["passed"] and max(migration.gate["drops"].values()) > 0.05
    assert "% below" in migration.error and steps_counted("gate", "refused") == refused_before + 1
    assert alias_resolve(ALIAS) == V1 and search_ids(api, token, "cancer")[0] == V1
    with pytest.raises(MigrationRefused, match="abort it"):
        migration_run(migration=migration)
    migration_abort(migration=migration, changed_by="test")
    assert links() == set() and alias_resolve(ALIAS) == V1


def test_backfill_copies_each_tenants_live_documents_once_even_when_interrupted(
    synced: dict[str, Namespace],
    tenant_a: Tenant,
    tenant_b: Tenant,
    tiny_dataset: Path,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.MEDKG_MIGRATION_BACKFILL_CHUNK = 7
    v1, v2 = synced[V1], new_version(synced)
    accept(v1, tenant_a, texts(40))
    accept(v1, tenant_b, texts(25, start=40))
    documents_delete(namespace=v1, tenant=tenant_a, external_ids=[d.id for d in texts(5)])
    migration = plan(v1, v2, tiny_dataset)

    calls = {"count": 0}
    real_mirror = ingestion.documents_mirror

    def crashing_mirror(**arguments: Any) -> Any:  # the process dies in the third chunk's transaction
        calls["count"] += 1
        if calls["count"] == 3:
            raise RuntimeError("killed")
        return real_mirror(**arguments)

    monkeypatch.setattr(lifecycle, "documents_mirror", crashing_mirror)
    with pytest.raises(RuntimeError, match="killed"):
        migration_run(migration=migration, until=MigrationStep.BACKFILL)
    migration.refresh_from_db()
    assert migration.progress["tenant-a"]["copied"] == 14 and migration.progress["tenant-a"]["total"] == 35
    # A client write meanwhile reaches v2 through the shadow link, before the backfill gets to it.
    accept(v1, tenant_b, texts(1, start=100))

    monkeypatch.setattr(lifecycle, "documents_mirror", real_mirror)
    migration = migration_run(migration=migration, until=MigrationStep.BACKFILL)
    assert migration.step == MigrationStep.GATE and migration.state == MigrationState.WAITING
    for tenant in (tenant_a, tenant_b):
        assert live_ids(v2, tenant) == live_ids(v1, tenant)
        rows = Document.objects.filter(namespace=v2, tenant=tenant)
        assert rows.count() == len(live_ids(v1, tenant))  # exactly once: no deleted row, no duplicate
        assert all(row.indexed_version == row.version for row in rows)
    assert {slug: (e["copied"], e["total"], e["indexed"]) for slug, e in migration.progress.items()} == {
        "tenant-a": (35, 35, 35),
        "tenant-b": (26, 26, 26),
    }
    assert set(Document.objects.filter(namespace=v2).values_list("job__purpose", flat=True)) == {
        JobPurpose.BACKFILL,
        JobPurpose.STANDBY,
    }
    labels = {"source": V1, "target": V2}
    gauge = {
        s: REGISTRY.get_sample_value("embedding_migration_backfill_documents", {**labels, "state": s})
        for s in ("total", "copied", "indexed")
    }
    assert gauge == {"total": 61, "copied": 61, "indexed": 61}


def test_pause_stops_between_chunks_and_abort_before_the_cutover_leaves_v1_as_it_was(
    synced: dict[str, Namespace], tenant_a: Tenant, tiny_dataset: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.MEDKG_MIGRATION_BACKFILL_CHUNK = 5
    v1, v2 = synced[V1], new_version(synced)
    accept(v1, tenant_a, texts(20))
    legacy = new_version(synced, name="single_vector.minilm.384.v0")  # v1's rollback target: kept by the abort
    standby_attach(primary=v1, standby=legacy, purpose=StandbyPurpose.ROLLBACK)
    before_links = links()
    migration = plan(v1, v2, tiny_dataset)
    real_mirror = ingestion.documents_mirror

    def pausing_mirror(**arguments: Any) -> Any:  # an operator pauses while the first chunk is copied
        job = real_mirror(**arguments)
        NamespaceMigration.objects.filter(pk=migration.pk).update(state=MigrationState.PAUSED)
        return job

    monkeypatch.setattr(lifecycle, "documents_mirror", pausing_mirror)
    stopped = migration_run(migration=migration)
    assert stopped.state == MigrationState.PAUSED and stopped.step == MigrationStep.BACKFILL
    assert stopped.progress["tenant-a"]["copied"] == 5
    with pytest.raises(MigrationRefused, match="resume it"):
        migration_run(migration=stopped)
    monkeypatch.setattr(lifecycle, "documents_mirror", real_mirror)
    migration_resume(migration=stopped, changed_by="test")
    migration = migration_run(migration=stopped, until=MigrationStep.BACKFILL)
    assert live_ids(v2, tenant_a) == live_ids(v1, tenant_a)
    assert migration_pause(migration=migration, changed_by="test").state == MigrationState.PAUSED

    aborted_before = steps_counted("gate", "aborted")
    migration = migration_abort(migration=migration, changed_by="test")
    assert migration.state == MigrationState.ABORTED and steps_counted("gate", "aborted") == aborted_before + 1
    assert links() == before_links and alias_resolve(ALIAS) == V1
    accept(v1, tenant_a, texts(1, start=200))  # no longer mirrored
    assert len(live_ids(v2, tenant_a)) == 20
    with pytest.raises(MigrationRefused, match="finished"):
        migration_abort(migration=migration, changed_by="test")


def test_retire_after_the_window_drops_v1s_index_and_purges_its_rows(
    synced: dict[str, Namespace], tenant_a: Tenant, tiny_dataset: Path
) -> None:
    v1, v2 = synced[V1], new_version(synced)
    accept(v1, tenant_a, texts(15))
    migration = plan(v1, v2, tiny_dataset, window_seconds=3600, purge_on_retire=True)
    migration = migration_run(migration=migration)
    assert migration.step == MigrationStep.WINDOW and migration.state == MigrationState.WAITING
    assert index_for(v1).stats() and Document.objects.filter(namespace=v1).count() == 15
    migration = migration_run(migration=migration, now=True)
    assert migration.state == MigrationState.DONE and migration.finished_at is not None
    assert set(migration.steps) == {step.value for step in MigrationStep} and all(
        record["ok"] for record in migration.steps.values()
    )
    assert alias_resolve(ALIAS) == V2 and links() == set()
    assert not [s for s in index_for(v1).stats() if s.tenant == "tenant-a" and s.vectors]
    assert not Document.objects.filter(namespace=v1).exists() and len(live_ids(v2, tenant_a)) == 15
    with pytest.raises(MigrationRefused, match="finished"):
        migration_abort(migration=migration, changed_by="test")


def test_the_command_plans_runs_and_reports(
    synced: dict[str, Namespace], tenant_a: Tenant, tiny_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, _ = synced[V1], new_version(synced)
    accept(v1, tenant_a, texts(8))
    call_command("namespace_migrate", "--from", V1, "--to", V2, "--dataset", str(tiny_dataset), "--until", "backfill")
    migration = NamespaceMigration.objects.get()
    assert migration.alias == "single_vector.minilm.384" and migration.step == MigrationStep.GATE
    call_command("namespace_migrate", "--id", str(migration.pk), "--status")
    call_command("namespace_migrate", "--list")
    out = capsys.readouterr().out
    assert "tenant-a: 8/8 copied, 8 indexed" in out and f"migration #{migration.pk}" in out
    with pytest.raises(CommandError, match=r"migration_refused: .* is not finished"):
        call_command("namespace_migrate", "--from", V1, "--to", V2, "--dataset", str(tiny_dataset))
    call_command("namespace_migrate", "--id", str(migration.pk), "--abort")
    assert NamespaceMigration.objects.get().state == MigrationState.ABORTED
    assert NamespaceAlias.objects.get(name="single_vector.minilm.384").namespace.name == V1


def test_the_gates_overlap_runs_each_tenants_recent_real_queries(
    synced: dict[str, Namespace],
    tenant_a: Tenant,
    tenant_b: Tenant,
    tiny_dataset: Path,
    api: Any,
    settings: Any,
    monkeypatch: Any,
) -> None:
    """Tenant A searched (its queries were sampled): the overlap runs those on A's documents; tenant B never
    searched: its overlap runs the dataset's queries."""
    v1, v2 = synced[V1], new_version(synced)
    accept(v1, tenant_a, texts(20))
    accept(v1, tenant_b, texts(10, start=20))
    migration = plan(v1, v2, tiny_dataset)  # the alias exists from here
    settings.MEDKG_QUERY_SAMPLE_RATE = 1.0
    token = make_token(tenant_a, ["embed:read"])
    asked = ["vitamin D and bone density", "tumour suppressor genes", "antibiotic resistance in bacteria"]
    for query in asked:
        assert search_ids(api, token, query)[0] == V1  # through the alias: sampled on the concrete v1
    run: list[tuple[str, str]] = []
    real_search = lifecycle.documents_search

    def recorded_search(**arguments: Any) -> Any:
        run.append((arguments["tenant"].slug, arguments["query"]))
        return real_search(**arguments)

    monkeypatch.setattr(lifecycle, "documents_search", recorded_search)
    migration = migration_run(migration=migration, until=MigrationStep.GATE)
    gate = migration.gate
    assert gate["passed"] and gate["overlap_at_10"] == 1.0 and gate["overlap_queries"] == {"sampled": 3, "dataset": 10}
    assert sorted({query for tenant, query in run if tenant == "tenant-a"}) == sorted(asked)
    assert len({query for tenant, query in run if tenant == "tenant-b"}) == 10 and not set(asked) & {
        query for tenant, query in run if tenant == "tenant-b"
    }
