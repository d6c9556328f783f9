"""The embedded impact index (sparse store) on its own: real scipy postings on disk, random term weights (no model)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import BackendError, DimensionMismatch
from embeddings.stores import files as partition_files
from embeddings.stores.base import SparseItem, SparseStoreConfig
from embeddings.stores.impact import ImpactStore

VOCABULARY = [f"term{i}" for i in range(300)] + ["u.s.", "...", "##.", "café"]


def make_store(path: Path) -> ImpactStore:
    return ImpactStore(SparseStoreConfig(namespace="sparse.test.auto.v1", backend="impact"), path)


def random_terms(rng: np.random.Generator, count: int, width: int = 30) -> list[dict[str, float]]:
    result = []
    for _ in range(count):
        chosen = rng.choice(len(VOCABULARY), size=width, replace=False)
        result.append({VOCABULARY[i]: float(rng.uniform(0.01, 3.0)) for i in chosen})
    return result


def items(labels: range | list[int], weights: list[dict[str, float]]) -> list[SparseItem]:
    return [SparseItem(label=label, terms=terms) for label, terms in zip(labels, weights, strict=True)]


def exact(documents: dict[int, dict[str, float]], query: dict[str, float], k: int) -> list[tuple[int, float]]:
    """The ranking by brute force: dot products in float64, positive scores only, ties by label."""
    scored = [
        (label, sum(weight * terms.get(term, 0.0) for term, weight in query.items()))
        for label, terms in documents.items()
    ]
    return sorted([pair for pair in scored if pair[1] > 0], key=lambda pair: (-pair[1], pair[0]))[:k]


def assert_same_ranking(hits: list, expected: list[tuple[int, float]]) -> None:
    assert [hit.label for hit in hits] == [label for label, _ in expected]
    for hit, (_, score) in zip(hits, expected, strict=True):
        assert hit.score == pytest.approx(score, rel=1e-5)


def test_search_scores_are_dot_products_of_term_weights(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    weights = random_terms(rng, 200)
    store = make_store(tmp_path)
    assert store.upsert(tenant="a", items=items(range(1000, 1200), weights)) == 200
    documents = dict(zip(range(1000, 1200), weights, strict=True))
    for query in random_terms(rng, 10, width=8):
        assert_same_ranking(
            store.search(tenant="a", query_terms=query, query_text="", k=10), exact(documents, query, 10)
        )
    # A term no document has scores nothing; a query of only such terms finds nothing.
    assert store.search(tenant="a", query_terms={"unseen": 5.0}, query_text="", k=10) == []


def test_terms_with_dots_and_unicode_are_plain_terms(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=[SparseItem(1, {"u.s.": 2.0, "##.": 1.0}), SparseItem(2, {"...": 1.5, "café": 1.0})])
    assert [hit.label for hit in store.search(tenant="a", query_terms={"u.s.": 1.0}, query_text="", k=5)] == [1]
    assert [
        hit.label for hit in make_store(tmp_path).search(tenant="a", query_terms={"café": 1.0}, query_text="", k=5)
    ] == [2]


def test_a_tenant_never_sees_another_tenants_documents(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = make_store(tmp_path)
    store.upsert(tenant="big", items=items(range(0, 500), random_terms(rng, 500)))
    small = random_terms(rng, 3)
    store.upsert(tenant="small", items=items([9000, 9001, 9002], small))
    for query in [*small, *random_terms(rng, 5)]:  # even the small tenant's exact documents as queries
        assert {hit.label for hit in store.search(tenant="big", query_terms=query, query_text="", k=1000)} <= set(
            range(500)
        )
        assert {hit.label for hit in store.search(tenant="small", query_terms=query, query_text="", k=1000)} <= {
            9000,
            9001,
            9002,
        }
    assert store.search(tenant="nobody", query_terms=small[0], query_text="", k=10) == []


def test_reupsert_replaces_delete_removes_and_allowed_labels_restrict(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=[SparseItem(1, {"x": 1.0}), SparseItem(2, {"x": 2.0}), SparseItem(3, {"y": 1.0})])
    store.upsert(tenant="a", items=[SparseItem(2, {"y": 5.0})])  # 2 no longer has "x"
    hits = store.search(tenant="a", query_terms={"x": 1.0}, query_text="", k=10)
    assert [(hit.label, hit.score) for hit in hits] == [(1, 1.0)]
    assert [hit.label for hit in store.search(tenant="a", query_terms={"y": 1.0}, query_text="", k=10)] == [2, 3]
    assert [
        hit.label
        for hit in store.search(tenant="a", query_terms={"y": 1.0}, query_text="", k=10, allowed_labels=[3, 99])
    ] == [3]
    assert store.delete(tenant="a", labels=[2, 42]) == 1
    assert [hit.label for hit in store.search(tenant="a", query_terms={"y": 1.0}, query_text="", k=10)] == [3]
    assert store.count(tenant="a") == 2 and store.labels(tenant="a") == {1, 3}
    store.upsert(tenant="a", items=[SparseItem(5, {"z": 1.0}), SparseItem(5, {"x": 9.0})])  # same label twice: last
    assert store.search(tenant="a", query_terms={"x": 1.0}, query_text="", k=1)[0].label == 5


def test_invalid_weights_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for bad in ({"x": 0.0}, {"x": -1.0}, {"x": float("nan")}, {"": 1.0}, {"x": float("inf")}):
        with pytest.raises(DimensionMismatch):
            store.upsert(tenant="a", items=[SparseItem(1, {"ok": 1.0}), SparseItem(2, bad)])
    assert store.count(tenant="a") == 0
    with pytest.raises(DimensionMismatch):
        store.search(tenant="a", query_terms={"x": -1.0}, query_text="", k=1)


def test_a_reader_sees_writes_made_by_another_store_instance(tmp_path: Path) -> None:
    reader, writer = make_store(tmp_path), make_store(tmp_path)
    writer.upsert(tenant="a", items=[SparseItem(1, {"x": 1.0})])
    assert reader.count(tenant="a") == 1
    writer.upsert(tenant="a", items=[SparseItem(2, {"x": 3.0})])
    assert reader.search(tenant="a", query_terms={"x": 1.0}, query_text="", k=1)[0].label == 2  # the file changed


def _write_forever(path: str) -> None:
    store = make_store(Path(path))
    rng = np.random.default_rng(7)
    batch = 0
    while True:  # until killed: each call adds 50 labels, so a consistent file holds a multiple of 50
        store.upsert(tenant="a", items=items(range(batch * 50, batch * 50 + 50), random_terms(rng, 50, width=60)))
        batch += 1


def test_a_writer_killed_mid_write_leaves_the_last_complete_file(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    for delay in (1.5, 2.2, 2.9):
        child = context.Process(target=_write_forever, args=(str(tmp_path),))
        child.start()
        time.sleep(delay)
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        store = make_store(tmp_path)  # a fresh process's view
        labels = store.labels(tenant="a")
        assert labels and len(labels) % 50 == 0 and labels == set(range(len(labels)))
        hits = store.search(tenant="a", query_terms={"term1": 1.0, "term2": 1.0}, query_text="", k=5)
        assert hits and all(hit.label in labels for hit in hits)
        store.drop(tenant="a")
    # Temporary files of killed writers are never mistaken for partitions.
    assert make_store(tmp_path).files.tenants() == []


def test_concurrent_writers_in_separate_processes_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_write_batches, args=(str(tmp_path), start)) for start in (0, 1000)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert make_store(tmp_path).labels(tenant="a") == set(range(100)) | set(range(1000, 1100))


def _write_batches(path: str, start: int) -> None:
    store = make_store(Path(path))
    rng = np.random.default_rng(start)
    for offset in range(0, 100, 10):
        store.upsert(tenant="a", items=items(range(start + offset, start + offset + 10), random_terms(rng, 10)))


def test_a_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=[SparseItem(1, {"x": 1.0})])
    store.files.path_for("a").write_bytes(b"not an npz")
    with pytest.raises(BackendError, match="rebuild_index"):
        make_store(tmp_path).count(tenant="a")


def test_tombstones_are_compacted_and_results_stay_right(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partition_files, "COMPACT_MIN_TOMBSTONES", 10)
    rng = np.random.default_rng(3)
    store = make_store(tmp_path)
    weights = random_terms(rng, 100)
    store.upsert(tenant="a", items=items(range(100), weights))
    store.delete(tenant="a", labels=list(range(0, 60)))
    partition = store.files.current("a", create=False)
    assert partition is not None and partition.tombstones == 0 and partition.labels.size == 40  # compacted
    documents = dict(zip(range(60, 100), weights[60:], strict=True))
    assert len(partition.vocabulary) == len({term for terms in documents.values() for term in terms})
    for query in random_terms(rng, 5, width=10):
        assert_same_ranking(
            make_store(tmp_path).search(tenant="a", query_terms=query, query_text="", k=7), exact(documents, query, 7)
        )


def test_drop_removes_one_tenant_or_all(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=[SparseItem(1, {"x": 1.0})])
    store.upsert(tenant="b", items=[SparseItem(2, {"x": 1.0})])
    store.drop(tenant="a")
    assert store.count(tenant="a") == 0 and store.count(tenant="b") == 1
    assert [stats.tenant for stats in store.stats()] == ["b"]
    store.drop()
    assert store.count(tenant="b") == 0 and not store.files.directory.exists()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operations=st.lists(
        st.tuples(
            st.sampled_from(["upsert", "delete"]),
            st.sampled_from(["a", "b"]),
            st.lists(st.integers(0, 30), min_size=1, max_size=8),
            st.integers(0, 2**32 - 1),
        ),
        max_size=25,
    )
)
def test_store_matches_a_model_of_live_documents_per_tenant(
    tmp_path_factory: pytest.TempPathFactory, operations: list
) -> None:
    path = tmp_path_factory.mktemp("impact")
    store = make_store(path)
    model: dict[str, dict[int, dict[str, float]]] = {"a": {}, "b": {}}
    for operation, tenant, labels, seed in operations:
        if operation == "upsert":
            weights = random_terms(np.random.default_rng(seed), len(labels), width=5)
            store.upsert(tenant=tenant, items=items(labels, weights))
            model[tenant].update(zip(labels, weights, strict=True))
        else:
            store.delete(tenant=tenant, labels=labels)
            for label in labels:
                model[tenant].pop(label, None)
    fresh = make_store(path)
    query = {VOCABULARY[i]: 1.0 for i in range(0, 300, 3)}
    for tenant, documents in model.items():
        assert fresh.labels(tenant=tenant) == set(documents)
        assert_same_ranking(
            fresh.search(tenant=tenant, query_terms=query, query_text="", k=10), exact(documents, query, 10)
        )


def test_purge_takes_deleted_postings_out_of_the_partition_file(tmp_path: Path) -> None:
    """Tombstones wait for compaction (past a quarter of the partition); purge removes them whatever their number."""
    rng = np.random.default_rng(7)
    weights = random_terms(rng, 100)
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=items(range(100), weights))
    store.upsert(tenant="b", items=items([5], weights[:1]))
    store.delete(tenant="a", labels=[3, 40])
    b_before = store.path_for("b").read_bytes()
    assert store.stats()[0].tombstones == 2
    with np.load(store.path_for("a")) as stored:
        assert {3, 40} <= set(stored["labels"].tolist())  # hidden from search, still in the file
    assert store.purge(tenant="a") == 2
    with np.load(store.path_for("a")) as stored:
        assert not {3, 40} & set(stored["labels"].tolist()) and stored["labels"].size == 98
    documents = {label: terms for label, terms in zip(range(100), weights, strict=True) if label not in (3, 40)}
    query = weights[3]
    assert_same_ranking(store.search(tenant="a", query_terms=query, query_text="", k=10), exact(documents, query, 10))
    assert store.purge(tenant="a") == 0 and store.purge(tenant="nobody") == 0
    assert store.path_for("b").read_bytes() == b_before
