"""The FAISS store on its own: real faiss indexes on disk, random unit vectors (no model needed)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import BackendError, DimensionMismatch
from embeddings.stores import faiss as faiss_store
from embeddings.stores.base import StoreConfig, StoredVector
from embeddings.stores.faiss import FaissStore

DIM = 16


def unit(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def items(labels: range | list[int], vectors: np.ndarray) -> list[StoredVector]:
    return [StoredVector(label=label, vector=vector) for label, vector in zip(labels, vectors, strict=True)]


def make_store(path: Path, dim: int = DIM, **overrides: int) -> FaissStore:
    return FaissStore(StoreConfig(namespace="single_vector.test.16.v1", dim=dim, backend="faiss", **overrides), path)


def exact_top(vectors: np.ndarray, labels: list[int], query: np.ndarray, k: int) -> list[int]:
    order = np.argsort(-(vectors @ query), kind="stable")[:k]
    return [labels[i] for i in order]


def test_upsert_then_search_finds_the_nearest(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 50)
    store = make_store(tmp_path)
    assert store.upsert(tenant="a", items=items(range(100, 150), vectors)) == 50
    hits = store.search(tenant="a", query=vectors[7], k=3)
    assert hits[0].label == 107
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [hit.label for hit in hits] == exact_top(vectors, list(range(100, 150)), vectors[7], 3)
    assert store.count(tenant="a") == 50


def test_a_tenant_never_sees_another_tenants_vectors_even_with_large_k(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = make_store(tmp_path)
    store.upsert(tenant="big", items=items(range(0, 3000), unit(rng, 3000)))
    store.upsert(tenant="small", items=items(range(5000, 5003), unit(rng, 3)))
    for query in unit(rng, 5):
        small = store.search(tenant="small", query=query, k=1000)
        assert sorted(hit.label for hit in small) == [5000, 5001, 5002]  # complete, and only its own
        big = store.search(tenant="big", query=query, k=1000)
        assert len(big) == 1000 and all(hit.label < 3000 for hit in big)
    assert store.search(tenant="nobody", query=unit(rng, 1)[0], k=10) == []


def test_reupsert_replaces_and_delete_removes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    old, new = unit(rng, 2)
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=[StoredVector(1, old), StoredVector(2, unit(rng, 1)[0])])
    store.upsert(tenant="a", items=[StoredVector(1, new)])
    hits = store.search(tenant="a", query=new, k=10)
    assert [hit.label for hit in hits].count(1) == 1  # replaced, not duplicated
    assert hits[0].label == 1 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert store.count(tenant="a") == 2
    assert store.delete(tenant="a", labels=[1, 999]) == 1  # unknown labels are ignored
    assert [hit.label for hit in store.search(tenant="a", query=new, k=10)] == [2]
    assert store.labels(tenant="a") == {2}


def test_same_label_twice_in_one_call_keeps_the_last(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    first, last = unit(rng, 2)
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=[StoredVector(1, first), StoredVector(1, last)])
    assert store.count(tenant="a") == 1
    assert store.search(tenant="a", query=last, k=1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_index_survives_a_new_process_view(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    vectors = unit(rng, 40)
    writer = make_store(tmp_path)
    writer.upsert(tenant="a", items=items(range(40), vectors))
    writer.delete(tenant="a", labels=[3])
    reader = make_store(tmp_path)  # a fresh store object loads the file: what a restarted process sees
    assert reader.labels(tenant="a") == set(range(40)) - {3}
    assert [h.label for h in reader.search(tenant="a", query=vectors[5], k=5)] == [
        h.label for h in writer.search(tenant="a", query=vectors[5], k=5)
    ]


def test_a_reader_sees_writes_made_by_another_store_instance(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    reader, writer = make_store(tmp_path), make_store(tmp_path)
    writer.upsert(tenant="a", items=items(range(5), unit(rng, 5)))
    assert reader.count(tenant="a") == 5  # loaded now
    vector = unit(rng, 1)[0]
    writer.upsert(tenant="a", items=[StoredVector(77, vector)])
    assert reader.search(tenant="a", query=vector, k=1)[0].label == 77  # reloaded: the file changed


def _write_from_child(path: str, tenant: str, start: int) -> None:
    rng = np.random.default_rng(start)
    store = make_store(Path(path))
    for offset in range(0, 100, 10):
        store.upsert(tenant=tenant, items=items(range(start + offset, start + offset + 10), unit(rng, 10)))


def test_concurrent_writers_in_separate_processes_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_write_from_child, args=(str(tmp_path), "a", start)) for start in (0, 1000)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert make_store(tmp_path).labels(tenant="a") == set(range(100)) | set(range(1000, 1100))


def test_dimension_is_checked_on_write_and_read(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(DimensionMismatch) as error:
        store.upsert(tenant="a", items=[StoredVector(1, np.ones(DIM + 1, dtype=np.float32))])
    assert error.value.details == {"namespace": "single_vector.test.16.v1", "expected": DIM, "got": DIM + 1}
    store.upsert(tenant="a", items=[StoredVector(1, np.ones(DIM, dtype=np.float32) / 4)])
    with pytest.raises(DimensionMismatch):
        store.search(tenant="a", query=np.ones(DIM - 1, dtype=np.float32), k=1)
    with pytest.raises(DimensionMismatch):
        store.upsert(tenant="a", items=[StoredVector(2, np.full(DIM, np.nan, dtype=np.float32))])
    assert store.count(tenant="a") == 1  # the refused writes changed nothing


def test_an_index_of_another_dimension_on_disk_is_refused_not_mixed(tmp_path: Path) -> None:
    make_store(tmp_path).upsert(tenant="a", items=[StoredVector(1, np.ones(DIM, dtype=np.float32) / 4)])
    wider = make_store(tmp_path, dim=DIM * 2)  # the namespace's dimension changed, the file did not
    with pytest.raises(DimensionMismatch):
        wider.search(tenant="a", query=np.ones(DIM * 2, dtype=np.float32), k=1)


def test_a_corrupt_index_file_is_a_clear_error(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=[StoredVector(1, np.ones(DIM, dtype=np.float32) / 4)])
    (segment,) = store.segments(tenant="a")
    (store.path_for("a") / f"{segment.name}.faiss").write_bytes(b"not an index")
    with pytest.raises(BackendError, match="rebuild_index"):
        make_store(tmp_path).count(tenant="a")
    (store.path_for("a") / "commit.json").write_text("{not json")
    with pytest.raises(BackendError, match="rebuild_index"):
        make_store(tmp_path).count(tenant="a")


def test_unsafe_tenant_or_namespace_names_never_reach_the_filesystem(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(BackendError):
        store.upsert(tenant="../escape", items=[StoredVector(1, np.ones(DIM, dtype=np.float32) / 4)])
    with pytest.raises(BackendError):
        FaissStore(StoreConfig(namespace="../x", dim=DIM, backend="faiss"), tmp_path)


def test_deletes_are_merged_away_and_results_stay_right(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vectors = unit(rng, 100)
    store = make_store(tmp_path)
    store.background_merges = False
    store.upsert(tenant="a", items=items(range(100), vectors))
    store.delete(tenant="a", labels=list(range(0, 60)))
    (segment,) = store.segments(tenant="a")
    assert (segment.slots, segment.dead) == (100, 60)
    assert store.merge(tenant="a") == (1, 60)  # past MAX_DEAD_FRACTION the policy rewrites it alone
    (segment,) = store.segments(tenant="a")
    assert (segment.slots, segment.dead) == (40, 0)
    hits = store.search(tenant="a", query=vectors[70], k=5)
    assert hits[0].label == 70
    assert [h.label for h in hits] == exact_top(vectors[60:], list(range(60, 100)), vectors[70], 5)


def test_hnsw_path_with_tombstones_and_filters_matches_exact_search(tmp_path: Path) -> None:
    """Above the exact-search threshold the HNSW graph is searched with a selector: still only live, allowed labels."""
    rng = np.random.default_rng(8)
    count = 2 * faiss_store.EXACT_SEARCH_MAX_CANDIDATES + 1500  # the allowed half is above the threshold too
    vectors = unit(rng, count)
    store = make_store(tmp_path, ef_search=128)
    store.upsert(tenant="a", items=items(range(count), vectors))
    dead = set(range(0, count, 7))
    store.delete(tenant="a", labels=sorted(dead))
    allowed = [label for label in range(count) if label % 2 == 0 and label not in dead]
    live = [label for label in range(count) if label not in dead]
    queries = unit(rng, 20)
    recall_live = recall_allowed = 0.0
    for query in queries:
        hits = [h.label for h in store.search(tenant="a", query=query, k=10)]
        assert not set(hits) & dead
        recall_live += len(set(hits) & set(exact_top(vectors[live], live, query, 10))) / 10
        filtered = [h.label for h in store.search(tenant="a", query=query, k=10, allowed_labels=allowed)]
        assert set(filtered) <= set(allowed)
        recall_allowed += len(set(filtered) & set(exact_top(vectors[allowed], allowed, query, 10))) / 10
    assert recall_live / len(queries) >= 0.95
    assert recall_allowed / len(queries) >= 0.95


def test_drop_removes_one_tenant_or_all(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=items(range(3), unit(rng, 3)))
    store.upsert(tenant="b", items=items(range(3), unit(rng, 3)))
    store.drop(tenant="a")
    assert store.count(tenant="a") == 0 and store.count(tenant="b") == 3
    assert store.tenants() == ["b"]
    store.drop()
    assert store.count(tenant="b") == 0 and store.tenants() == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operations=st.lists(
        st.tuples(st.sampled_from(["upsert", "delete"]), st.sampled_from(["a", "b", "c"]), st.integers(0, 30)),
        min_size=1,
        max_size=60,
    ),
    seed=st.integers(0, 2**16),
)
def test_store_matches_a_model_of_live_labels_per_tenant(
    tmp_path_factory: pytest.TempPathFactory, operations: list[tuple[str, str, int]], seed: int
) -> None:
    """Any sequence of upserts and deletes leaves exactly the expected labels per tenant, each once."""
    rng = np.random.default_rng(seed)
    store = make_store(tmp_path_factory.mktemp("model"))
    expected: dict[str, dict[int, np.ndarray]] = {"a": {}, "b": {}, "c": {}}
    for action, tenant, label in operations:
        if action == "upsert":
            vector = unit(rng, 1)[0]
            store.upsert(tenant=tenant, items=[StoredVector(label, vector)])
            expected[tenant][label] = vector
        else:
            store.delete(tenant=tenant, labels=[label])
            expected[tenant].pop(label, None)
    for tenant, live in expected.items():
        assert store.labels(tenant=tenant) == set(live)
        for label, vector in live.items():
            hits = store.search(tenant=tenant, query=vector, k=100)
            assert [hit.label for hit in hits].count(label) == 1
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert {hit.label for hit in hits} == set(live)
