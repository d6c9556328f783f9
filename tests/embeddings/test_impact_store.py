"""The embedded impact index (sparse store) on its own: real scipy postings in segments on disk, random term weights
(no model): scores, isolation, writes of their own size, snapshot readers, merges, purge, legacy files, crashes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import BackendError, DimensionMismatch
from embeddings.stores import impact as impact_store
from embeddings.stores.base import SparseItem, SparseStoreConfig
from embeddings.stores.impact import ImpactStore
from tests.embeddings.segment_crashes import ingest_forever, kill_writers_and_check

VOCABULARY = [f"term{i}" for i in range(300)] + ["u.s.", "...", "##.", "café"]


def make_store(path: Path, *, merges: bool = True) -> ImpactStore:
    store = ImpactStore(SparseStoreConfig(namespace="sparse.test.auto.v1", backend="impact"), path)
    store.background_merges = merges
    return store


def files(store: ImpactStore, tenant: str = "a") -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.path_for(tenant).iterdir()}


def raw_bytes(store: ImpactStore, tenant: str = "a") -> bytes:
    return b"".join(path.read_bytes() for path in sorted(store.path_for(tenant).iterdir()))


def stored_labels(store: ImpactStore, tenant: str = "a") -> list[int]:
    """Every label the partition's segment files hold, dead ones included."""
    return sorted(label for path in store.path_for(tenant).glob("*.labels.npy") for label in np.load(path).tolist())


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
    assert make_store(tmp_path).tenants() == []


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
    next(store.path_for("a").glob("*.rows.npz")).write_bytes(b"not an npz")
    with pytest.raises(BackendError, match="rebuild_index"):
        make_store(tmp_path).count(tenant="a")


def test_a_segment_past_the_dead_fraction_is_rewritten_and_results_stay_right(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    store = make_store(tmp_path, merges=False)
    weights = random_terms(rng, 100)
    store.upsert(tenant="a", items=items(range(100), weights))
    store.delete(tenant="a", labels=list(range(0, 60)))
    assert store.merge(tenant="a") == (1, 60)  # the policy picks the segment past MAX_DEAD_FRACTION on its own
    (segment,) = store.segments(tenant="a")
    assert segment.slots == 40 and segment.dead == 0 and stored_labels(store) == list(range(60, 100))
    documents = dict(zip(range(60, 100), weights[60:], strict=True))
    with np.load(store.path_for("a") / f"{segment.name}.rows.npz") as stored:  # terms only the dead had left too
        assert set(stored["terms"].tolist()) == {term for terms in documents.values() for term in terms}
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
    assert store.count(tenant="b") == 0 and not store.directory.exists()


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


def test_purge_takes_deleted_postings_out_of_the_partition_files(tmp_path: Path) -> None:
    """Dead documents wait for a merge of their segment; purge removes them whatever their number."""
    rng = np.random.default_rng(7)
    weights = random_terms(rng, 100)
    store = make_store(tmp_path, merges=False)
    store.upsert(tenant="a", items=items(range(100), weights))
    store.upsert(tenant="b", items=items([5], weights[:1]))
    store.delete(tenant="a", labels=[3, 40])
    b_before = {path.name: path.read_bytes() for path in store.path_for("b").iterdir()}
    assert store.stats()[0].tombstones == 2
    assert {3, 40} <= set(stored_labels(store))  # hidden from search, still in the files
    assert store.purge(tenant="a") == 2
    assert stored_labels(store) == sorted(set(range(100)) - {3, 40})
    documents = {label: terms for label, terms in zip(range(100), weights, strict=True) if label not in (3, 40)}
    query = weights[3]
    assert_same_ranking(store.search(tenant="a", query_terms=query, query_text="", k=10), exact(documents, query, 10))
    assert store.purge(tenant="a") == 0 and store.purge(tenant="nobody") == 0
    assert {path.name: path.read_bytes() for path in store.path_for("b").iterdir()} == b_before


def test_purge_removes_a_deleted_documents_terms_from_every_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    store = make_store(tmp_path, merges=False)
    store.upsert(tenant="a", items=items(range(200), random_terms(rng, 200)))
    secret = SparseItem(777_777, {"secretterm": 2.7182817, "term1": 1.0})
    store.upsert(tenant="a", items=[secret])
    store.upsert(tenant="a", items=items(range(200, 300), random_terms(rng, 100)))
    store.upsert(tenant="a", items=[SparseItem(5, {"term2": 1.0})])  # a replacement: one more dead slot
    term, weight, label = (
        "secretterm".encode("utf-32-le"),
        np.float32(2.7182817).tobytes(),
        np.int64(777_777).tobytes(),
    )
    assert term in raw_bytes(store) and weight in raw_bytes(store)
    store.delete(tenant="a", labels=[777_777])
    assert term in raw_bytes(store) and label in raw_bytes(store)  # a delete only marks the slot dead
    assert store.purge(tenant="a") == 2
    raw = raw_bytes(store)
    assert term not in raw and weight not in raw and label not in raw
    assert all(segment.dead == 0 for segment in store.segments(tenant="a"))
    assert store.labels(tenant="a") == set(range(300)) == set(stored_labels(store))
    assert store.search(tenant="a", query_terms={"secretterm": 1.0}, query_text="", k=5) == []


def test_a_step_writes_only_its_own_segment_and_never_rewrites_older_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    store = make_store(tmp_path, merges=False)
    store.upsert(tenant="a", items=items(range(5000), random_terms(rng, 5000)))
    before = files(store)
    big = sum((store.path_for("a") / name).stat().st_size for name in before)
    store.upsert(tenant="a", items=items(range(5000, 5050), random_terms(rng, 50)))
    store.upsert(tenant="a", items=[SparseItem(10, {"fresh": 1.0})])  # replaces a document of the big segment
    after = files(store)
    unchanged = {name: identity for name, identity in before.items() if name != "commit.json"}
    assert all(after.get(name) == identity for name, identity in unchanged.items() if not name.endswith(".lock"))
    new = set(after) - set(before)
    written = sum((store.path_for("a") / name).stat().st_size for name in new)
    # The steps' own postings, terms and labels, and one live bitmap of 5000 bits: not the partition again.
    assert written < big / 20
    assert any(".live-" in name for name in new)
    assert store.count(tenant="a") == 5050 and len(store.segments(tenant="a")) == 3
    assert [hit.label for hit in store.search(tenant="a", query_terms={"fresh": 1.0}, query_text="", k=5)] == [10]
    assert 10 not in {hit.label for hit in store.search(tenant="a", query_terms={"term1": 1.0}, query_text="", k=5000)}


def test_a_reader_in_another_instance_opens_only_the_new_segment(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    writer, reader = make_store(tmp_path, merges=False), make_store(tmp_path, merges=False)
    writer.upsert(tenant="a", items=items(range(2000), random_terms(rng, 2000)))
    assert reader.count(tenant="a") == 2000
    big = reader._snapshot("a").segments[0]  # type: ignore[union-attr]
    writer.upsert(tenant="a", items=[SparseItem(99_999, {"fresh": 1.0})])
    writer.delete(tenant="a", labels=[7])
    assert reader.search(tenant="a", query_terms={"fresh": 1.0}, query_text="", k=1)[0].label == 99_999
    snapshot = reader._snapshot("a")
    assert snapshot is not None and snapshot.segments[0].postings is big.postings  # kept, not reloaded
    assert reader.labels(tenant="a") == (set(range(2000)) - {7}) | {99_999}


def test_searches_do_not_wait_for_a_writer_holding_the_partition(tmp_path: Path) -> None:
    store = make_store(tmp_path, merges=False)
    store.upsert(tenant="a", items=[SparseItem(1, {"x": 1.0}), SparseItem(2, {"y": 1.0})])
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._writing("a"):
            held.set()
            release.wait(10)

    writer = threading.Thread(target=hold)
    writer.start()
    assert held.wait(5)
    started = time.monotonic()
    assert store.search(tenant="a", query_terms={"x": 1.0}, query_text="", k=1)[0].label == 1
    assert make_store(tmp_path).search(tenant="a", query_terms={"y": 1.0}, query_text="", k=1)[0].label == 2
    assert time.monotonic() - started < 2
    release.set()
    writer.join()


def test_tiered_merges_keep_every_label_once_and_carry_deletes_made_while_merging(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    store = make_store(tmp_path, merges=False)
    weights = random_terms(rng, 3000)
    for start in range(0, 3000, 300):
        store.upsert(tenant="a", items=items(range(start, start + 300), weights[start : start + 300]))
    assert len(store.segments(tenant="a")) == impact_store.MERGE_FACTOR
    other = make_store(tmp_path, merges=False)

    def plan_then_delete(snapshot: object) -> list[str]:
        names = store._merge_plan(snapshot)  # type: ignore[arg-type]
        other.delete(tenant="a", labels=[7, 2500])  # committed after the merge took its snapshot
        return names

    assert store.merge(tenant="a", choose=plan_then_delete)[0] == 10
    (merged,) = store.segments(tenant="a")
    assert merged.slots == 3000 and merged.dead == 2
    live = set(range(3000)) - {7, 2500}
    assert store.labels(tenant="a") == live == make_store(tmp_path).labels(tenant="a")
    documents = {label: weights[label] for label in live}
    for query in [weights[7], weights[2500], *random_terms(rng, 3, width=10)]:
        assert_same_ranking(
            store.search(tenant="a", query_terms=query, query_text="", k=20), exact(documents, query, 20)
        )


def test_background_merges_bound_the_segment_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    store = make_store(tmp_path)
    for start in range(0, 40 * 20, 20):
        store.upsert(tenant="a", items=items(range(start, start + 20), random_terms(rng, 20, width=5)))
    deadline = time.monotonic() + 30
    while len(store.segments(tenant="a")) >= impact_store.MERGE_FACTOR and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(store.segments(tenant="a")) < impact_store.MERGE_FACTOR
    assert store.labels(tenant="a") == set(range(800)) and store.count(tenant="a") == 800


def test_equal_scores_in_different_segments_rank_the_lower_label_first(tmp_path: Path) -> None:
    store = make_store(tmp_path, merges=False)
    store.upsert(tenant="a", items=[SparseItem(label, {"x": 1.0}) for label in (9, 4, 6)])
    store.upsert(tenant="a", items=[SparseItem(label, {"x": 1.0}) for label in (8, 1, 5)])
    hits = store.search(tenant="a", query_terms={"x": 1.0}, query_text="", k=4)
    assert [hit.label for hit in hits] == [1, 4, 5, 6]


def test_a_partition_written_before_segments_is_converted_keeping_its_dead_slots(tmp_path: Path) -> None:
    vocabulary = np.asarray(["x", "y", "café"], dtype=np.str_)
    rows = [{0: 1.0}, {0: 2.0, 1: 1.0}, {2: 3.0}, {0: 4.0}]  # label 103 (the last row) is dead
    indptr = np.cumsum([0] + [len(row) for row in rows])
    folder = tmp_path / "sparse.test.auto.v1"
    folder.mkdir()
    header = np.frombuffer(b'{"format": 1, "namespace": "sparse.test.auto.v1", "tenant": "a"}', dtype=np.uint8)
    with open(folder / "a.impact.npz", "wb") as handle:
        np.savez(
            handle,
            header=header,
            data=np.asarray([w for row in rows for w in row.values()], dtype=np.float32),
            indices=np.asarray([c for row in rows for c in row], dtype=np.int32),
            indptr=indptr.astype(np.int64),
            labels=np.arange(100, 104),
            alive=np.asarray([True, True, True, False]),
            vocabulary=vocabulary,
        )
    (folder / "a.impact.lock").touch()
    store = make_store(tmp_path)
    assert store.tenants() == ["a"]
    assert store.labels(tenant="a") == {100, 101, 102}
    hits = store.search(tenant="a", query_terms={"x": 1.0}, query_text="", k=5)
    assert [(hit.label, hit.score) for hit in hits] == [(101, 2.0), (100, 1.0)]
    assert store.search(tenant="a", query_terms={"café": 1.0}, query_text="", k=5)[0].label == 102
    assert not (folder / "a.impact.npz").exists() and not (folder / "a.impact.lock").exists()
    assert store.segments(tenant="a")[0].dead == 1 and make_store(tmp_path).count(tenant="a") == 3


def _ingest_forever(path: str, journal: str) -> None:
    """Every document has the term "all", so one query finds every live one."""
    impact_store.MERGE_FACTOR = 3  # merges all the time, so kills land in them too
    rng = np.random.default_rng(11)

    def batch_of(start: int) -> list[SparseItem]:
        weights = random_terms(rng, 40, width=20)
        return [SparseItem(start + i, {**terms, "all": 1.0}) for i, terms in enumerate(weights)]

    ingest_forever(make_store(Path(path), merges=False), batch_of, journal)


def test_a_writer_killed_during_steps_and_merges_loses_nothing_accepted_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    kill_writers_and_check(
        tmp_path,
        _ingest_forever,
        lambda path: make_store(path, merges=False),
        lambda store, delay, k: store.search(tenant="a", query_terms={"all": 1.0}, query_text="", k=k + 10),
        lambda delay: SparseItem(10**9, {"all": 1.0}),
    )
