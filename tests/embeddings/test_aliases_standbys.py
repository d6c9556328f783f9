"""Aliases and standby namespaces through the API: real MiniLM, real FAISS, PostgreSQL; jobs run inline on commit.

The second namespace is MiniLM under another version (identical settings), so a standby's rankings must equal
its primary's exactly; the migration with a different model is in tests/operations/test_namespace_migration.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
from django.core.management import call_command

from core.errors import ConfigError, InvalidRequest
from embeddings.ingestion import namespace_provenance
from embeddings.models import Document, IngestionJob, JobPurpose
from embeddings.stores.registry import index_for
from namespaces.models import (
    AccessAuditEvent,
    AliasFlip,
    Namespace,
    NamespaceAlias,
    NamespaceStandby,
    Tenant,
    TenantUsage,
)
from namespaces.selectors import alias_resolve
from namespaces.services import alias_flip, namespace_sync_from_yaml, standby_attach, standby_detach
from operations.models import NamespaceRoute
from operations.services import rollback_start, rollback_undo
from tests.conftest import DEFAULT_NAMESPACE, assert_error, counter_value

V2 = "single_vector.minilm.384.v2"
ALIAS = "dense.under-test"
DOCS = [
    {"id": "aspirin", "text": "Aspirin irreversibly inhibits platelet cyclooxygenase.", "metadata": {"kind": "drug"}},
    {"id": "insulin", "text": "Insulin lowers blood glucose in type 1 diabetes.", "metadata": {"kind": "hormone"}},
    {"id": "statin", "text": "Statins reduce LDL cholesterol and cardiovascular events.", "metadata": {"kind": "drug"}},
    {"id": "malaria", "text": "Plasmodium falciparum causes severe malaria.", "metadata": {"kind": "pathogen"}},
    {"id": "warfarin", "text": "Warfarin antagonises vitamin K epoxide reductase.", "metadata": {"kind": "drug"}},
]
QUERIES = ["blood thinner", "diabetes hormone", "mosquito-borne parasite", "cholesterol lowering drug"]

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _inline_ingestion(settings: Any) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"
    settings.MEDKG_SERVING_STATE_TTL = 0.0  # one process: a rollback has nothing to drain


def twin(namespace: Namespace, name: str, **changes: Any) -> Namespace:
    """The same model and settings under another namespace version."""
    skipped = {"id", "name", "created_at", "updated_at", "source_file"}
    fields = {f.name: getattr(namespace, f.name) for f in Namespace._meta.concrete_fields if f.name not in skipped}
    return Namespace.objects.create(name=name, **{**fields, **changes})


@pytest.fixture
def v2(synced: dict[str, Namespace]) -> Namespace:
    return twin(synced[DEFAULT_NAMESPACE], V2)


@pytest.fixture
def ingest(api: Any, django_capture_on_commit_callbacks: Any) -> Callable[..., Any]:
    def post(token: str, namespace: str, documents: list[dict[str, Any]], tenant: str = "tenant-a") -> Any:
        with django_capture_on_commit_callbacks(execute=True):
            return api.post(
                f"/v1/namespaces/{namespace}/documents", {"tenant_id": tenant, "documents": documents}, token=token
            )

    return post


def search(api: Any, token: str, namespace: str, query: str, k: int = 5) -> tuple[str, list[str]]:
    response = api.post(
        f"/v1/namespaces/{namespace}/search", {"tenant_id": "tenant-a", "query": query, "k": k}, token=token
    )
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    return body["namespace"], [hit["id"] for hit in body["hits"]]


# --- aliases ---


def test_an_alias_is_accepted_wherever_a_namespace_name_is_and_answers_name_the_concrete_one(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str
) -> None:
    alias_flip(alias=ALIAS, to=synced[DEFAULT_NAMESPACE], changed_by="pytest", reason="first")
    assert ingest(token_a_write, ALIAS, DOCS).status_code == 202
    assert Document.objects.filter(namespace=synced[DEFAULT_NAMESPACE]).count() == len(DOCS)
    embedded = api.post("/v1/embed", {"namespace": ALIAS, "texts": ["aspirin"]}, token=token_a_write)
    assert embedded.status_code == 200 and embedded.json()["namespace"] == DEFAULT_NAMESPACE
    openai = api.post("/v1/embeddings", {"model": ALIAS, "input": "aspirin"}, token=token_a_write)
    assert openai.status_code == 200 and openai.json()["model"] == DEFAULT_NAMESPACE
    validated = api.post(
        f"/v1/namespaces/{ALIAS}/validate", {"tenant_id": "tenant-a", "texts": ["aspirin"]}, token=token_a_write
    )
    assert validated.status_code == 200 and validated.json()["namespace"] == DEFAULT_NAMESPACE
    assert search(api, token_a_write, ALIAS, "platelet inhibitor") == search(
        api, token_a_write, DEFAULT_NAMESPACE, "platelet inhibitor"
    )
    assert search(api, token_a_write, ALIAS, "platelet inhibitor")[1][0] == "aspirin"
    hybrid = api.post(
        "/v1/search",
        {"tenant_id": "tenant-a", "query": "aspirin", "namespaces": [{"namespace": ALIAS}]},
        token=token_a_write,
    )
    assert hybrid.status_code == 200 and hybrid.json()["namespaces"][0]["namespace"] == DEFAULT_NAMESPACE


def test_grants_are_checked_on_the_concrete_namespace(
    synced: dict[str, Namespace], restricted_namespace: Namespace, api: Any, token_b_write: str
) -> None:
    alias_flip(alias="restricted.latest", to=restricted_namespace, changed_by="pytest")
    response = api.post("/v1/embed", {"namespace": "restricted.latest", "texts": ["x"]}, token=token_b_write)
    assert_error(response, 404, "namespace_not_found")
    event = AccessAuditEvent.objects.get(reason="namespace_not_granted")
    assert event.namespace == "restricted.latest" and event.token_tenant == "tenant-b"
    unknown = api.post("/v1/embed", {"namespace": "no.such.alias", "texts": ["x"]}, token=token_b_write)
    assert_error(unknown, 404, "namespace_not_found")


def test_a_flip_is_atomic_audited_counted_and_reaches_processes_within_the_ttl(
    synced: dict[str, Namespace], v2: Namespace, settings: Any
) -> None:
    v1 = synced[DEFAULT_NAMESPACE]
    alias_flip(alias=ALIAS, to=v1, changed_by="pytest", reason="created")
    before = counter_value("medkg_namespace_alias_flips_total", alias=ALIAS)
    flip = alias_flip(alias=ALIAS, to=v2, changed_by="ops@example.org", reason="v2 passed its gate")
    assert (flip.from_namespace, flip.to_namespace, flip.changed_by, flip.reason) == (
        DEFAULT_NAMESPACE,
        V2,
        "ops@example.org",
        "v2 passed its gate",
    )
    assert [f.to_namespace for f in AliasFlip.objects.filter(alias__name=ALIAS).order_by("flipped_at", "id")] == [
        DEFAULT_NAMESPACE,
        V2,
    ]
    assert counter_value("medkg_namespace_alias_flips_total", alias=ALIAS) == before + 1
    assert alias_resolve(ALIAS) == V2  # this process: at once
    # Another process's change (here: an update that sends no signal) is seen once the cached entry expires.
    settings.MEDKG_SERVING_STATE_TTL = 60.0
    assert alias_resolve(ALIAS) == V2
    NamespaceAlias.objects.filter(name=ALIAS).update(namespace=v1)
    assert alias_resolve(ALIAS) == V2
    settings.MEDKG_SERVING_STATE_TTL = 0.0
    assert alias_resolve(ALIAS) == DEFAULT_NAMESPACE


@pytest.mark.parametrize("name", [DEFAULT_NAMESPACE, "Dense.Default", "a..b", "", "x" * 201])
def test_an_alias_cannot_shadow_a_namespace_version_or_be_malformed(synced: dict[str, Namespace], name: str) -> None:
    before = set(NamespaceAlias.objects.values_list("name", flat=True))
    with pytest.raises(InvalidRequest):
        alias_flip(alias=name, to=synced[DEFAULT_NAMESPACE], changed_by="pytest")
    assert set(NamespaceAlias.objects.values_list("name", flat=True)) == before


# --- standbys ---


def test_a_standby_receives_every_document_and_delete_uncharged(
    synced: dict[str, Namespace],
    v2: Namespace,
    api: Any,
    ingest: Any,
    token_a_write: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    v1 = synced[DEFAULT_NAMESPACE]
    standby_attach(primary=v1, standby=v2, created_by="pytest")
    assert ingest(token_a_write, DEFAULT_NAMESPACE, DOCS).status_code == 202
    tenant = Tenant.objects.get(slug="tenant-a")
    ids = {document["id"] for document in DOCS}
    for namespace in (v1, v2):
        labels = index_for(namespace).labels(tenant=tenant.slug)
        rows = Document.objects.filter(namespace=namespace, tenant=tenant)
        assert {row.external_id for row in rows} == ids and labels == {row.pk for row in rows}
        assert {row.provenance for row in rows} == {namespace_provenance(namespace)}
    standby_jobs = IngestionJob.objects.filter(namespace=v2)
    assert [(job.purpose, job.status) for job in standby_jobs] == [(JobPurpose.STANDBY, "succeeded")]
    usage = TenantUsage.objects.get(tenant=tenant)
    assert usage.documents == len(DOCS)  # counted once, where the client sent them
    for query in QUERIES:
        assert search(api, token_a_write, V2, query)[1] == search(api, token_a_write, DEFAULT_NAMESPACE, query)[1]

    with_update = [{**DOCS[0], "text": "Aspirin is acetylsalicylic acid, an antiplatelet drug."}]
    assert ingest(token_a_write, DEFAULT_NAMESPACE, with_update).status_code == 202
    assert Document.objects.get(namespace=v2, external_id="aspirin").text == with_update[0]["text"]
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(
            f"/v1/namespaces/{DEFAULT_NAMESPACE}/documents",
            {"tenant_id": "tenant-a", "ids": ["malaria", "statin"]},
            token=token_a_write,
        )
    assert response.status_code == 202, response.content
    remaining = ids - {"malaria", "statin"}
    for namespace in (v1, v2):
        assert set(Document.objects.filter(namespace=namespace).values_list("external_id", flat=True)) == remaining
        assert len(index_for(namespace).labels(tenant=tenant.slug)) == len(remaining)
    assert TenantUsage.objects.get(tenant=tenant).documents == len(remaining)

    standby_detach(primary=v1, standby=v2)
    assert ingest(token_a_write, DEFAULT_NAMESPACE, [{"id": "late", "text": "Heparin activates antithrombin."}])
    assert not Document.objects.filter(namespace=v2, external_id="late").exists()


def test_a_refused_accept_stores_nothing_in_the_standby_either(
    synced: dict[str, Namespace], v2: Namespace, ingest: Any, token_a_write: str, tenant_a: Tenant
) -> None:
    standby_attach(primary=synced[DEFAULT_NAMESPACE], standby=v2)
    tenant_a.max_documents = 2
    tenant_a.save()
    assert_error(ingest(token_a_write, DEFAULT_NAMESPACE, DOCS), 413, "document_limit_exceeded")
    assert not Document.objects.exists() and not IngestionJob.objects.exists()


def test_a_standby_must_be_another_namespace_of_the_same_kind(synced: dict[str, Namespace]) -> None:
    v1 = synced[DEFAULT_NAMESPACE]
    with pytest.raises(InvalidRequest):
        standby_attach(primary=v1, standby=v1)
    with pytest.raises(InvalidRequest):
        standby_attach(primary=v1, standby=synced["sparse.bm25.auto.v1"])


def test_rollback_to_the_standby_keeps_search_answering_the_same_ids_and_undo_returns(
    synced: dict[str, Namespace],
    v2: Namespace,
    api: Any,
    ingest: Any,
    token_a_write: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    v1 = synced[DEFAULT_NAMESPACE]
    standby_attach(primary=v1, standby=v2)
    ingest(token_a_write, DEFAULT_NAMESPACE, DOCS)
    before = {query: search(api, token_a_write, DEFAULT_NAMESPACE, query) for query in QUERIES}
    assert all(served == DEFAULT_NAMESPACE for served, _ in before.values())

    rollback_start(namespace=DEFAULT_NAMESPACE, target=V2, reason="test", initiated_by="pytest")
    assert NamespaceRoute.objects.filter(source=v1, target=v2).exists()
    during = {query: search(api, token_a_write, DEFAULT_NAMESPACE, query) for query in QUERIES}
    assert {served for served, _ in during.values()} == {V2}
    assert {query: ids for query, (_, ids) in during.items()} == {query: ids for query, (_, ids) in before.items()}
    # Written during the rollback: the primary's job waits (its ingestion is paused), the standby indexes it now.
    assert ingest(token_a_write, DEFAULT_NAMESPACE, [{"id": "heparin", "text": "Heparin activates antithrombin."}])
    assert search(api, token_a_write, DEFAULT_NAMESPACE, "antithrombin activator")[1][0] == "heparin"

    with django_capture_on_commit_callbacks(execute=True):  # the undo's resume queues the job that waited
        rollback_undo(namespace=DEFAULT_NAMESPACE, initiated_by="pytest")
    after = {query: search(api, token_a_write, DEFAULT_NAMESPACE, query) for query in QUERIES}
    assert {served for served, _ in after.values()} == {DEFAULT_NAMESPACE}
    assert search(api, token_a_write, DEFAULT_NAMESPACE, "antithrombin activator")[1][0] == "heparin"


# --- provenance ---


def test_bootstrap_refuses_vectors_of_another_model_version_and_has_them_embedded_again(
    synced: dict[str, Namespace], api: Any, ingest: Any, token_a_write: str, django_capture_on_commit_callbacks: Any
) -> None:
    v1 = synced[DEFAULT_NAMESPACE]
    ingest(token_a_write, DEFAULT_NAMESPACE, DOCS)
    old = namespace_provenance(v1)
    Document.objects.filter(external_id__in=["aspirin", "insulin"]).update(provenance="some.other.model|x@0")
    with django_capture_on_commit_callbacks(execute=True):
        call_command("bootstrap_faiss", "--namespace", DEFAULT_NAMESPACE, stdout=(out := _Output()))
    assert "refused 2 row(s) embedded by some.other.model|x@0" in out.text
    assert Document.objects.filter(provenance=old).count() == len(DOCS)  # embedded again by the queued job
    assert Document.objects.filter(indexed_version__lt=1).count() == 0
    assert search(api, token_a_write, DEFAULT_NAMESPACE, "platelet inhibitor")[1][0] == "aspirin"
    job = IngestionJob.objects.get(purpose=JobPurpose.BACKFILL)
    assert job.status == "succeeded" and job.total == 2


class _Output:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str, *_: Any, **__: Any) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_the_seed_files_declare_standbys_and_aliases_and_a_sync_never_moves_an_alias(
    synced: dict[str, Namespace], tmp_path: Any, settings: Any
) -> None:
    qwen, minilm = synced["single_vector.qwen3.4096.v1"], synced[DEFAULT_NAMESPACE]
    assert NamespaceStandby.objects.filter(primary=qwen, standby=minilm, created_by="sync_namespaces").exists()
    assert alias_resolve("single_vector.qwen3") == qwen.name and alias_resolve("dense.default") == DEFAULT_NAMESPACE
    alias_flip(alias="dense.default", to=twin(minilm, V2), changed_by="pytest")  # an operator's flip

    seeds = tmp_path / "namespaces"
    shutil.copytree(settings.MEDKG_CONFIG_DIR / "embedding" / "namespaces", seeds)
    qwen_file = seeds / "single_vector.qwen3.4096.v1.yaml"
    qwen_file.write_text(qwen_file.read_text().replace("standby: single_vector.minilm.384.v1\n", ""))
    namespace_sync_from_yaml(directory=seeds)
    assert not NamespaceStandby.objects.filter(primary=qwen).exists()  # the file no longer names it
    assert alias_resolve("dense.default") == V2  # not moved back by the sync

    qwen_file.write_text(qwen_file.read_text() + "standby: sparse.bm25.auto.v1\n")
    with pytest.raises(ConfigError, match="standby"):
        namespace_sync_from_yaml(directory=seeds)
