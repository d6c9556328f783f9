"""Erasure: `purge_deleted` takes deleted vectors out of the index files at once; `tenant_delete` offboards a tenant.
Real model, real FAISS files, PostgreSQL; jobs run inline on commit."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from embeddings.ingestion import vector_from_bytes
from embeddings.models import Document, IngestionJob
from embeddings.stores.faiss import FaissStore
from embeddings.stores.registry import store_for
from namespaces.models import AccessAuditEvent, Namespace, Tenant, TenantUsage
from tests.conftest import DEFAULT_NAMESPACE
from tests.embeddings.test_documents_api import DOCS, DOCUMENTS, hit_ids, search


@pytest.fixture(autouse=True)
def _inline_ingestion(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.MEDKG_INGESTION_LOCAL_MODE = "inline"
    # The command is under test: no background merge may erase the dead entries first.
    monkeypatch.setattr(FaissStore, "background_merges", False)


def vectors_in_file(path: Path) -> np.ndarray:
    """Every vector the partition's segment files hold, live or dead: what a disk image of the node would give away."""
    found = [np.empty((0, 384), dtype=np.float32)]
    for segment in sorted(path.glob("*.faiss")):
        index = faiss.read_index(str(segment))
        found.append(index.reconstruct_n(0, index.ntotal))
    return np.concatenate(found)


def digest(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(path.iterdir()) if not file.name.endswith(".lock")}


def holds(path: Path, vector: np.ndarray) -> bool:
    return bool((np.abs(vectors_in_file(path) - vector).max(axis=1) < 1e-6).any())


def run(command: str, *args: Any, **options: Any) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out, **options)
    return out.getvalue()


def ingest(api: Any, capture: Any, token: str, tenant: str, documents: list[dict[str, Any]]) -> None:
    with capture(execute=True):
        response = api.post(DOCUMENTS, {"tenant_id": tenant, "documents": documents}, token=token)
    assert response.status_code == 202, response.content[:300]


@pytest.fixture
def two_tenants(
    synced: dict[str, Namespace],
    api: Any,
    token_a_write: str,
    token_b_write: str,
    django_capture_on_commit_callbacks: Any,
) -> Any:
    """Tenant A's four documents and tenant B's first two, indexed; returns the on-commit capture."""
    ingest(api, django_capture_on_commit_callbacks, token_a_write, "tenant-a", DOCS)
    ingest(api, django_capture_on_commit_callbacks, token_b_write, "tenant-b", DOCS[:2])
    return django_capture_on_commit_callbacks


def test_purge_deleted_takes_deleted_vectors_out_of_the_index_file(
    synced: dict[str, Namespace], api: Any, token_a_write: str, two_tenants: Any
) -> None:
    capture = two_tenants
    deleted = vector_from_bytes(Document.objects.get(tenant__slug="tenant-a", external_id="insulin").vector)
    replaced = vector_from_bytes(Document.objects.get(tenant__slug="tenant-a", external_id="statin").vector)
    with capture(execute=True):
        api.delete(DOCUMENTS, {"tenant_id": "tenant-a", "ids": ["insulin"]}, token=token_a_write)
    ingest(api, capture, token_a_write, "tenant-a", [{"id": "statin", "text": "Statins: a new text replaces it."}])
    store = store_for(synced[DEFAULT_NAMESPACE])
    path_a, path_b = store.path_for("tenant-a"), store.path_for("tenant-b")  # type: ignore[attr-defined]
    b_before = digest(path_b)
    # A tombstone hides a vector from search, but the file still holds it: not erasure.
    assert holds(path_a, deleted) and holds(path_a, replaced)
    assert "insulin" not in hit_ids(search(api, token_a_write, "tenant-a", "blood glucose", k=10))

    out = run("purge_deleted", namespace=DEFAULT_NAMESPACE)

    assert f"tenant-a: removed 2 deleted entries from {path_a}" in out
    assert f"tenant-b: removed 0 deleted entries from {path_b}" in out
    assert not holds(path_a, deleted) and not holds(path_a, replaced)
    assert vectors_in_file(path_a).shape[0] == 3 and store.count(tenant="tenant-a") == 3
    assert digest(path_b) == b_before  # nothing to purge: not rewritten
    assert hit_ids(search(api, token_a_write, "tenant-a", "drug that lowers blood sugar", k=4))[0] != "insulin"
    assert set(hit_ids(search(api, token_a_write, "tenant-a", "statins", k=10))) == {
        "aspirin",
        "statin",
        "malaria",
    }
    assert "tenant-a: removed 0" in run("purge_deleted", namespace=DEFAULT_NAMESPACE, tenant="tenant-a")
    with pytest.raises(CommandError, match="Unknown tenant"):
        run("purge_deleted", namespace=DEFAULT_NAMESPACE, tenant="nobody")


def test_tenant_delete_removes_rows_index_files_and_jobs_and_nothing_of_another_tenant(
    synced: dict[str, Namespace], api: Any, token_a_write: str, token_b_write: str, two_tenants: Any
) -> None:
    api.post(DOCUMENTS, {"tenant_id": "tenant-b", "documents": DOCS}, token=token_a_write)  # refused and audited
    audited = AccessAuditEvent.objects.count()
    store = store_for(synced[DEFAULT_NAMESPACE])
    path_a = store.path_for("tenant-a")  # type: ignore[attr-defined]
    assert path_a.exists() and IngestionJob.objects.filter(tenant__slug="tenant-a").exists()

    out = run("tenant_delete", "tenant-a", yes=True)

    assert f"index removed: {path_a} ({DEFAULT_NAMESPACE})" in out
    assert f"documents deleted: 4 in {DEFAULT_NAMESPACE}" in out and "tenant tenant-a erased" in out
    assert not path_a.exists() and "tenant-a" not in store.tenants()
    assert not Document.objects.filter(tenant__slug="tenant-a").exists()
    assert not IngestionJob.objects.filter(tenant__slug="tenant-a").exists()
    assert not Tenant.objects.filter(slug="tenant-a").exists()
    assert not TenantUsage.objects.filter(tenant__slug="tenant-a").exists()
    assert AccessAuditEvent.objects.count() == audited  # the record of who did what stays
    # The erased tenant's tokens are refused; the other tenant is untouched.
    assert search(api, token_a_write, "tenant-a", "aspirin").status_code == 401
    assert hit_ids(search(api, token_b_write, "tenant-b", "blood glucose", k=2))[0] == "insulin"
    assert store.count(tenant="tenant-b") == 2
    with pytest.raises(CommandError, match="Unknown tenant"):
        run("tenant_delete", "tenant-a", yes=True)


def test_tenant_delete_keeps_a_deactivated_tenant_when_asked_and_can_run_again(
    synced: dict[str, Namespace], api: Any, token_a_write: str, django_capture_on_commit_callbacks: Any
) -> None:
    """A crash between the index drop and the row delete leaves an inactive tenant: running again finishes."""
    ingest(api, django_capture_on_commit_callbacks, token_a_write, "tenant-a", DOCS)
    run("tenant_delete", "tenant-a", yes=True, keep_tenant=True)
    tenant = Tenant.objects.get(slug="tenant-a")
    assert not tenant.is_active and not Document.objects.filter(tenant=tenant).exists()
    again = run("tenant_delete", "tenant-a", yes=True)
    assert "documents deleted" not in again and "tenant row deleted" in again
    assert not Tenant.objects.filter(slug="tenant-a").exists()


def test_tenant_delete_asks_before_it_erases(synced: dict[str, Namespace], monkeypatch: Any) -> None:
    Tenant.objects.get_or_create(slug="tenant-c")
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    with pytest.raises(CommandError, match="nothing was changed"):
        run("tenant_delete", "tenant-c")
    assert Tenant.objects.get(slug="tenant-c").is_active


def test_merge_index_merges_a_partitions_segments_and_searches_still_answer(
    synced: dict[str, Namespace], api: Any, token_a_write: str, two_tenants: Any
) -> None:
    ingest(api, two_tenants, token_a_write, "tenant-a", [{"id": "extra", "text": "Metformin for type 2 diabetes."}])
    store = store_for(synced[DEFAULT_NAMESPACE])
    before = len(store.segments(tenant="tenant-a"))  # type: ignore[attr-defined]
    assert before >= 2  # each ingestion step wrote its own segment

    out = run("merge_index", namespace=DEFAULT_NAMESPACE, tenant="tenant-a", full=True)

    assert f"tenant-a: {before} segment(s) -> 1" in out
    assert store.count(tenant="tenant-a") == 5
    assert hit_ids(search(api, token_a_write, "tenant-a", "metformin diabetes", k=1)) == ["extra"]
    assert "tenant-b: 1 segment(s) -> 1 (0 merged)" in run("merge_index", namespace=DEFAULT_NAMESPACE)
