"""BM25 on SciFact: medkg's LuceneStore against Pyserini's own indexer and searcher, in one run.

    python bench/bm25_scifact.py [--dataset /work/shared/eval/scifact] [--chunk 1000] [--k1 0.9 --b 0.4]

1. The BEIR dataset (corpus.jsonl, queries.jsonl, qrels/test.tsv) through embeddings.retrieval_evaluation.beir_load:
   document text = title + " " + text, only the judged test queries.
2. medkg: embeddings.stores.lucene.LuceneStore (sparse.bm25.auto.v1's store) upserts the corpus for one tenant in
   --chunk documents a commit, then searches every query with k=100 (one query at a time, as the API does).
3. Baseline: Anserini's IndexCollection (what `python -m pyserini.index.lucene` runs: JsonCollection,
   DefaultLuceneDocumentGenerator) on the same texts, searched with Pyserini's LuceneSearcher (BM25, same k1/b).
4. nDCG@10 and Recall@100 of both with embeddings.retrieval_evaluation.retrieval_metrics, the number of queries
   whose top-100 scores differ, indexing seconds and ms/query p50/p95 with the store/baseline ratio; then the same after
   LuceneStore.optimize() merged the store's segments (one per --chunk commit) into one.
The issue's gate: nDCG@10 >= 0.66 for sparse.bm25.auto.v1 (Anserini's published BM25 flat: 0.679).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
NAMESPACE = "sparse.bm25.auto.v1"
GATE_NDCG_AT_10 = 0.66


def milliseconds(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("/work/shared/eval/scifact"))
    parser.add_argument("--chunk", type=int, default=1000, help="documents per upsert (one Lucene commit each)")
    parser.add_argument("--k1", type=float, default=None, help="default: config/embedding/pyserini.yaml")
    parser.add_argument("--b", type=float, default=None, help="default: config/embedding/pyserini.yaml")
    arguments = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bm25-scifact-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medkg.settings")
    os.environ["FAISS_DATA_DIR"] = str(work / "indexes")
    import django

    django.setup()
    from tqdm import tqdm

    from embeddings.retrieval_evaluation import beir_load, retrieval_metrics
    from embeddings.stores.base import SparseItem, SparseStoreConfig
    from embeddings.stores.lucene import LuceneStore
    from embeddings.stores.pyserini_runtime import anserini_run, pyserini_module

    dataset = beir_load(arguments.dataset)
    print(f"{dataset.name}: {len(dataset.corpus)} documents, {len(dataset.queries)} judged queries; work dir {work}")
    parameters = {name: value for name, value in (("k1", arguments.k1), ("b", arguments.b)) if value is not None}
    store = LuceneStore(
        SparseStoreConfig(namespace=NAMESPACE, backend="lucene", parameters_json=json.dumps(parameters)),
        work / "indexes",
    )
    external_ids = [document.id for document in dataset.corpus]  # label = position in the corpus

    # medkg's store
    started = time.perf_counter()
    with tqdm(total=len(dataset.corpus), desc="LuceneStore upsert", unit="doc") as bar:
        for first in range(0, len(dataset.corpus), arguments.chunk):
            chunk = dataset.corpus[first : first + arguments.chunk]
            items = [
                SparseItem(label=first + offset, terms={}, text=document.text) for offset, document in enumerate(chunk)
            ]
            bar.update(store.upsert(tenant="scifact", items=items))
    store_index_seconds = time.perf_counter() - started
    # Baseline: Pyserini's indexer and searcher on the same texts
    collection = work / "collection"
    collection.mkdir()
    with open(collection / "corpus.jsonl", "w", encoding="utf-8") as out:
        for document in dataset.corpus:
            out.write(json.dumps({"id": document.id, "contents": document.text}) + "\n")
    started = time.perf_counter()
    anserini_run(
        "io.anserini.index.IndexCollection",
        ["-collection", "JsonCollection", "-input", str(collection), "-index", str(work / "pyserini"),
         "-generator", "DefaultLuceneDocumentGenerator", "-threads", "1", "-storePositions"],
    )  # fmt: skip
    baseline_index_seconds = time.perf_counter() - started
    searcher = pyserini_module("pyserini.search.lucene").LuceneSearcher(str(work / "pyserini"))
    searcher.set_bm25(store.k1, store.b)

    def store_search(text: str) -> list[tuple[str, float]]:
        hits = store.search(tenant="scifact", query_terms={}, query_text=text, k=100)
        return [(external_ids[hit.label], hit.score) for hit in hits]

    def baseline_search(text: str) -> list[tuple[str, float]]:
        return [(hit.docid, hit.score) for hit in searcher.search(text, k=100)]

    def timed(label: str) -> tuple[dict[str, list[tuple[str, float]]], list[float], list[float]]:
        """Store and baseline interleaved, one query each, alternating which goes first: load hits both alike."""
        for text in tqdm(dataset.queries.values(), desc=f"warm-up {label} (not timed)", unit="query"):
            store_search(text), baseline_search(text)  # JIT and caches warm for both before any timing
        store_results: dict[str, list[tuple[str, float]]] = {}
        store_latency: list[float] = []
        baseline_latency: list[float] = []
        for number, (query_id, text) in enumerate(tqdm(dataset.queries.items(), desc=f"search {label}", unit="query")):
            for side in ("store", "baseline") if number % 2 == 0 else ("baseline", "store"):
                began = time.perf_counter()
                if side == "store":
                    store_results[query_id] = store_search(text)
                    store_latency.append(time.perf_counter() - began)
                else:
                    baseline_results[query_id] = baseline_search(text)
                    baseline_latency.append(time.perf_counter() - began)
        return store_results, store_latency, baseline_latency

    baseline_results: dict[str, list[tuple[str, float]]] = {}
    segments = sum(1 for name in os.listdir(store.path_for("scifact")) if name.endswith(".si"))
    store_results, store_latency, baseline_latency = timed(f"({segments} segments)")
    started = time.perf_counter()
    store.optimize(tenant="scifact")
    optimize_seconds = time.perf_counter() - started
    optimized_results, optimized_latency, baseline_latency_2 = timed("(optimized)")
    store_runs = {query: [docid for docid, _ in hits] for query, hits in store_results.items()}
    baseline_runs = {query: [docid for docid, _ in hits] for query, hits in baseline_results.items()}

    store_metrics = retrieval_metrics(store_runs, dataset.qrels)
    baseline_metrics = retrieval_metrics(baseline_runs, dataset.qrels)

    def differing(results: dict[str, list[tuple[str, float]]]) -> int:
        """Queries whose top-100 scores differ from the baseline's by more than 1e-4, position by position.

        Ties may order differently: Lucene breaks them by docid, and the store's docids are labels.
        """
        return sum(
            len(results[query]) != len(baseline_results[query])
            or any(abs(a[1] - b[1]) > 1e-4 for a, b in zip(results[query], baseline_results[query], strict=True))
            for query in dataset.queries
        )

    baseline_all = baseline_latency + baseline_latency_2
    baseline_p50 = milliseconds(baseline_all)[0]
    print()
    print(f"BM25 k1={store.k1} b={store.b}, {len(dataset.queries)} queries, k=100, upserts of {arguments.chunk}")
    print(f"{'':34}{'nDCG@10':>9}{'R@100':>8}{'index s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p50 ratio':>11}")
    rows = [
        (f"medkg LuceneStore, {segments} segments", store_metrics, store_index_seconds, store_latency),
        (
            "medkg LuceneStore, optimized",
            retrieval_metrics({q: [d for d, _ in hits] for q, hits in optimized_results.items()}, dataset.qrels),
            store_index_seconds + optimize_seconds,
            optimized_latency,
        ),
        ("Pyserini indexer + LuceneSearcher", baseline_metrics, baseline_index_seconds, baseline_all),
    ]
    for name, metrics, seconds, latency in rows:
        p50, p95 = milliseconds(latency)
        print(
            f"{name:34}{metrics['ndcg_at_10']:>9.4f}{metrics['recall_at_100']:>8.4f}{seconds:>9.1f}"
            f"{p50:>8.2f}{p95:>8.2f}{p50 / baseline_p50:>10.2f}x"
        )
    print("(baseline latency over both timed passes; its indexing runs in a separate JVM)")
    print(
        f"queries whose top-100 scores differ from Pyserini's by more than 1e-4: {differing(store_results)} "
        f"({segments} segments), {differing(optimized_results)} (optimized)"
    )
    verdict = "PASS" if store_metrics["ndcg_at_10"] >= GATE_NDCG_AT_10 else "FAIL"
    print(f"gate nDCG@10 >= {GATE_NDCG_AT_10}: {verdict} ({store_metrics['ndcg_at_10']:.4f})")


if __name__ == "__main__":
    main()
