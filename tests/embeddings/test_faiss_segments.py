"""The segmented FAISS store: writes of their own size, snapshot readers, merges, storage types, crashes.

Real faiss indexes on disk and random unit vectors (no model needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from embeddings.stores import faiss as faiss_store
from embeddings.stores import segments as seg
from embeddings.stores.base import StoreConfig, StoredVector
from embeddings.stores.faiss import FaissStore
from tests.embeddings.segment_crashes import ingest_forever, kill_writers_and_check
from tests.embeddings.test_faiss_store import items, unit

DIM = 16


def make_store(path: Path, *, merges: bool = False, dim: int = DIM, **overrides: object) -> FaissStore:
    config = StoreConfig(namespace="single_vector.test.16.v1", dim=dim, backend="faiss", **overrides)  # type: ignore[arg-type]
    store = FaissStore(config, path)
    store.background_merges = merges
    return store


def files(store: FaissStore, tenant: str = "a") -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.path_for(tenant).iterdir()}


def test_a_step_writes_only_its_own_segment_and_never_rewrites_older_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=items(range(5000), unit(rng, 5000)))
    before = files(store)
    big = sum((store.path_for("a") / name).stat().st_size for name in before)
    store.upsert(tenant="a", items=items(range(5000, 5256), unit(rng, 256)))
    after = files(store)
    unchanged = {name: identity for name, identity in before.items() if name != "commit.json"}
    assert all(after.get(name) == identity for name, identity in unchanged.items() if not name.endswith(".lock"))
    new = set(after) - set(before)
    written = sum((store.path_for("a") / name).stat().st_size for name in new)
    assert written < 256 * DIM * 4 * 2 + 4096 < big  # about the step's own vectors and labels
    assert store.count(tenant="a") == 5256 and len(store.segments(tenant="a")) == 2


def test_a_replacement_kills_the_old_copy_with_a_live_bitmap_not_a_rewrite(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = make_store(tmp_path)
    vectors = unit(rng, 3000)
    store.upsert(tenant="a", items=items(range(3000), vectors))
    (first,) = store.segments(tenant="a")
    replacement = unit(rng, 1)[0]
    store.upsert(tenant="a", items=[StoredVector(10, replacement)])
    old, new = store.segments(tenant="a")
    assert old.name == first.name and old.dead == 1 and old.live is not None and new.slots == 1
    hits = store.search(tenant="a", query=replacement, k=3000)
    assert [hit.label for hit in hits].count(10) == 1 and hits[0].label == 10
    assert store.count(tenant="a") == 3000


def test_a_reader_in_another_instance_opens_only_the_new_segment(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    writer, reader = make_store(tmp_path), make_store(tmp_path)
    writer.upsert(tenant="a", items=items(range(4000), unit(rng, 4000)))
    assert reader.count(tenant="a") == 4000
    big = reader._snapshot("a").segments[0]  # type: ignore[union-attr]
    vector = unit(rng, 1)[0]
    writer.upsert(tenant="a", items=[StoredVector(99_999, vector)])
    assert reader.search(tenant="a", query=vector, k=1)[0].label == 99_999
    snapshot = reader._snapshot("a")
    assert snapshot is not None and snapshot.segments[0] is big  # kept, not reloaded


def test_searches_do_not_wait_for_a_writer_holding_the_partition(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    store = make_store(tmp_path)
    vectors = unit(rng, 3000)
    store.upsert(tenant="a", items=items(range(3000), vectors))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._writing("a"):
            held.set()
            release.wait(10)

    writer = threading.Thread(target=hold)
    writer.start()
    assert held.wait(5)
    started = time.monotonic()
    assert store.search(tenant="a", query=vectors[5], k=1)[0].label == 5
    assert make_store(tmp_path).search(tenant="a", query=vectors[6], k=1)[0].label == 6  # a fresh reader too
    assert time.monotonic() - started < 2
    release.set()
    writer.join()


def test_tiered_merges_keep_every_label_once_and_carry_deletes_made_while_merging(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store = make_store(tmp_path)
    vectors = unit(rng, 3000)
    for start in range(0, 3000, 300):
        store.upsert(tenant="a", items=items(range(start, start + 300), vectors[start : start + 300]))
    assert len(store.segments(tenant="a")) == 10
    other = make_store(tmp_path)

    def plan_then_delete(snapshot: object) -> list[str]:
        names = store._merge_plan(snapshot)  # type: ignore[arg-type]
        other.delete(tenant="a", labels=[7, 2500])  # committed after the merge took its snapshot
        return names

    assert store.merge(tenant="a", choose=plan_then_delete)[0] == 10
    (merged,) = store.segments(tenant="a")
    assert merged.kind == "hnsw" and merged.slots == 3000 and merged.dead == 2
    live = set(range(3000)) - {7, 2500}
    assert store.labels(tenant="a") == live == make_store(tmp_path).labels(tenant="a")
    hits = store.search(tenant="a", query=vectors[7], k=50)
    assert 7 not in {hit.label for hit in hits} and len({hit.label for hit in hits}) == 50


def test_background_merges_bound_the_segment_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    store = make_store(tmp_path, merges=True)
    for start in range(0, 40 * 100, 100):
        store.upsert(tenant="a", items=items(range(start, start + 100), unit(rng, 100)))
    deadline = time.monotonic() + 30
    while len(store.segments(tenant="a")) >= faiss_store.MERGE_FACTOR and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(store.segments(tenant="a")) < faiss_store.MERGE_FACTOR
    assert store.labels(tenant="a") == set(range(4000)) and store.count(tenant="a") == 4000


def test_purge_and_optimize_leave_one_segment_without_dead_slots(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    store = make_store(tmp_path)
    vectors = unit(rng, 600)
    store.upsert(tenant="a", items=items(range(500), vectors[:500]))
    store.upsert(tenant="a", items=items(range(490, 600), vectors[490:600]))  # replaces 490..499
    store.delete(tenant="a", labels=[1, 2, 3])
    assert store.purge(tenant="a") == 13
    assert all(segment.dead == 0 for segment in store.segments(tenant="a"))
    raw = b"".join(path.read_bytes() for path in store.path_for("a").iterdir())
    assert vectors[1].tobytes() not in raw and vectors[495].tobytes() in raw
    store.optimize(tenant="a")
    (segment,) = store.segments(tenant="a")
    assert segment.slots == 597 and store.purge(tenant="a") == 0


@pytest.mark.parametrize("storage", ["float32", "float16", "sq8"])
def test_each_storage_type_finds_the_exact_neighbours(tmp_path: Path, storage: str) -> None:
    rng = np.random.default_rng(8)
    count = 6000
    vectors = unit(rng, count, 32)
    store = make_store(tmp_path, dim=32, storage=storage, ef_search=96)
    store.bulk_load(
        tenant="a", chunks=[items(range(s, s + 1000), vectors[s : s + 1000]) for s in range(0, count, 1000)]
    )
    (segment,) = store.segments(tenant="a")
    assert segment.kind == "hnsw"
    assert (store.path_for("a") / f"{segment.name}.vectors.npy").exists() == (storage != "float32")
    recall = 0.0
    for query in unit(rng, 30, 32):
        exact = set(np.argsort(-(vectors @ query))[:10].tolist())
        hits = store.search(tenant="a", query=query, k=10)
        recall += len(exact & {hit.label for hit in hits}) / 10
        assert hits[0].score == pytest.approx(float(vectors[hits[0].label] @ query), abs=1e-5)  # re-scored exactly
    assert recall / 30 >= 0.95


def test_a_partition_written_before_segments_is_converted_keeping_its_deletes(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    vectors = unit(rng, 20)
    index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    alive = np.ones(20, dtype=bool)
    alive[3] = False
    folder = tmp_path / "single_vector.test.16.v1"
    folder.mkdir()
    header = np.frombuffer(b'{"format": 1, "dim": 16}', dtype=np.uint8)
    with open(folder / "a.faiss.npz", "wb") as handle:
        np.savez(handle, header=header, index=faiss.serialize_index(index), labels=np.arange(100, 120), alive=alive)
    store = make_store(tmp_path)
    assert store.tenants() == ["a"]
    assert store.labels(tenant="a") == set(range(100, 120)) - {103}
    assert store.search(tenant="a", query=vectors[5], k=1)[0].label == 105
    assert not (folder / "a.faiss.npz").exists() and store.segments(tenant="a")[0].dead == 1


def _ingest_forever(path: str, journal: str) -> None:
    faiss_store.MERGE_FACTOR = 3  # merges all the time, so kills land in them too
    rng = np.random.default_rng(11)
    ingest_forever(make_store(Path(path)), lambda start: items(range(start, start + 40), unit(rng, 40)), journal)


def test_a_writer_killed_during_steps_and_merges_loses_nothing_accepted_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    def probe(delay: float) -> np.ndarray:
        return unit(np.random.default_rng(int(delay * 10)), 1)[0]

    kill_writers_and_check(
        tmp_path,
        _ingest_forever,
        make_store,
        lambda store, delay, k: store.search(tenant="a", query=probe(delay), k=k),
        lambda delay: StoredVector(10**9, probe(delay)),
    )


def test_the_namespace_config_knows_exactly_the_storage_types_the_store_has() -> None:
    from core.errors import ConfigError
    from namespaces.config import VECTOR_STORAGES, NamespaceSpec

    assert set(VECTOR_STORAGES) == set(faiss_store.STORAGE_FACTORY)
    spec = {"name": "single_vector.x.16.v1", "kind": "single_vector", "provider": "p", "model_id": "m", "dim": 16}
    NamespaceSpec(**spec, max_tokens=8, parameters={"vector_storage": "sq8"})
    with pytest.raises((ValueError, ConfigError), match="vector_storage"):
        NamespaceSpec(**spec, max_tokens=8, parameters={"vector_storage": "int4"})


def test_declared_metadata_filters_run_inside_the_store_at_any_selectivity(tmp_path: Path) -> None:
    from core.errors import InvalidRequest

    rng = np.random.default_rng(12)
    count = 12_000
    vectors = unit(rng, count, 32)
    sources = np.where(np.arange(count) % 1000 == 0, "rare", np.where(np.arange(count) % 2 == 0, "pubmed", "trials"))
    years = 2000 + np.arange(count) % 20
    store = make_store(tmp_path, dim=32, filterable=("source", "year"), ef_search=64)
    assert store.filters_natively
    stored = [
        StoredVector(label, vectors[label], metadata={"source": str(sources[label]), "year": int(years[label])})
        for label in range(count)
    ]
    store.bulk_load(tenant="a", chunks=[stored[:6000], stored[6000:11_000]])
    store.upsert(tenant="a", items=stored[11_000:])  # a second, flat segment
    cases = {
        "0.1 %": ({"source": "rare"}, sources == "rare"),
        "5 %": ({"source": "pubmed", "year": [2000, 2002.0]}, (sources == "pubmed") & np.isin(years, [2000, 2002])),
        "50 %": ({"source": "pubmed"}, sources == "pubmed"),
        "any of": ({"source": ["trials", "rare"]}, sources != "pubmed"),
    }
    for name, (filters, passing) in cases.items():
        labels = np.flatnonzero(passing)
        recall = 0.0
        for query in unit(rng, 20, 32):
            exact = set(labels[np.argsort(-(vectors[labels] @ query))[:10]].tolist())
            hits = store.search(tenant="a", query=query, k=10, filters=filters)
            assert {hit.label for hit in hits} <= set(labels.tolist()), name
            recall += len(exact & {hit.label for hit in hits}) / min(10, labels.size)
        assert recall / 20 >= 0.95, name
    assert store.search(tenant="a", query=vectors[0], k=5, filters={"source": "nowhere"}) == []
    with pytest.raises(InvalidRequest, match="not filterable"):
        store.search(tenant="a", query=vectors[0], k=5, filters={"author": "x"})
    store.optimize(tenant="a")  # the merge carries the columns over
    hits = store.search(tenant="a", query=vectors[3000], k=3, filters={"source": "rare"})
    assert hits[0].label == 3000 and {hit.label for hit in hits} <= set(range(0, count, 1000))


def test_a_writer_merges_itself_when_merges_fall_behind_and_it_is_counted(tmp_path: Path) -> None:
    from tests.conftest import counter_value

    rng = np.random.default_rng(13)
    store = make_store(tmp_path)  # no background merges: they "fell behind" for good
    labels = {"namespace": "single_vector.test.16.v1", "store": "faiss"}
    stalls = counter_value("embedding_index_write_stalls_total", **labels)
    merges = counter_value("embedding_index_merges_total", **labels)
    for start in range(0, 40 * 50, 50):
        store.upsert(tenant="a", items=items(range(start, start + 50), unit(rng, 50)))
        assert len(store.segments(tenant="a")) <= seg.STALL_SEGMENTS
    assert counter_value("embedding_index_write_stalls_total", **labels) > stalls
    assert counter_value("embedding_index_merges_total", **labels) > merges
    assert store.labels(tenant="a") == set(range(2000)) and store.count(tenant="a") == 2000
