"""Sparse search on SciFact SPLADE vectors: medkg's embedded impact index against Pyserini's impact search, one run.

    python bench/sparse_search.py [--dataset /work/shared/eval/scifact] [--k 10] [--rounds 3] [--limit N]

1. SPLADE-tiny (sparse.splade_tiny.30522.v1's provider, pyserini.yaml's expansion limits) encodes the SciFact corpus
   (title + " " + text, document side) and the 300 judged queries (query side). The document weights are cached in
   bench/.cache/ (git-ignored), keyed by model and limits: encoding 5,183 abstracts takes minutes on a CPU.
2. The same weights go into both indexes:
   - medkg: embeddings.stores.impact.ImpactStore (scipy term-major postings, float32 weights), one tenant;
   - Pyserini: a Lucene impact index built by Anserini's IndexCollection (JsonVectorCollection, -impact), weights
     quantised to integers (x pyserini.yaml's impact.quantization_scale), searched by LuceneImpactSearcher
     (embeddings.stores.lucene_impact).
3. Every query is searched by both, one query at a time as a request does, alternating which goes first, --rounds
   times. Reported: ms/query p50 and p95 of each, the ratio medkg / Pyserini, nDCG@10 of both (same vectors: the
   difference is Pyserini's quantisation), and how many top-k lists agree.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
NAMESPACE = "sparse.splade_tiny.30522.v1"
DATASETS = [REPO_ROOT.parent / "shared" / "eval" / "scifact", Path("/work/shared/eval/scifact")]


def milliseconds(samples: list[float]) -> tuple[float, float]:
    values = np.asarray(samples) * 1000.0
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=next((p for p in DATASETS if p.exists()), DATASETS[0]))
    parser.add_argument("--k", type=int, default=10, help="hits per query")
    parser.add_argument("--rounds", type=int, default=3, help="times every query is searched by each side")
    parser.add_argument("--limit", type=int, default=0, help="only the first N documents (0: all)")
    arguments = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sparse-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medkg.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["FAISS_DATA_DIR"] = str(work / "indexes")
    os.environ["MEDKG_VAR_DIR"] = str(work / "var")
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.conf import settings
    from tqdm import tqdm

    from embeddings.providers.base import ProviderConfig
    from embeddings.providers.splade import SpladeProvider
    from embeddings.retrieval_evaluation import beir_load, retrieval_metrics
    from embeddings.stores.base import SparseItem, SparseStoreConfig
    from embeddings.stores.impact import ImpactStore
    from namespaces.config import load_namespace_spec, pyserini_config
    from namespaces.models import Namespace

    spec = load_namespace_spec(settings.MEDKG_CONFIG_DIR / "embedding" / "namespaces" / f"{NAMESPACE}.yaml")
    namespace = Namespace(**spec.model_dump(exclude={"allowed_tenants"}))
    provider = SpladeProvider(ProviderConfig.from_namespace(namespace))
    dataset = beir_load(arguments.dataset)
    corpus = dataset.corpus[: arguments.limit] if arguments.limit else dataset.corpus
    print(f"{dataset.name}: {len(corpus)} documents, {len(dataset.queries)} queries; {NAMESPACE}")

    # 1. SPLADE weights, the documents' cached.
    limits = pyserini_config().expansion.model_dump_json()
    key = hashlib.sha256(
        f"{namespace.model_version}|{limits}|{namespace.max_tokens}|{len(corpus)}".encode()
    ).hexdigest()
    cache = REPO_ROOT / "bench" / ".cache" / f"{dataset.name}-splade-{key[:12]}.json.gz"
    if cache.exists():
        documents = json.loads(gzip.decompress(cache.read_bytes()))
        print(f"document weights from {cache.relative_to(REPO_ROOT)}")
    else:
        documents = {}
        with tqdm(total=len(corpus), desc="encode documents", unit="doc") as bar:
            for start in range(0, len(corpus), 64):
                chunk = corpus[start : start + 64]
                for document, terms in zip(chunk, provider.encode([d.text for d in chunk], query=False), strict=True):
                    documents[document.id] = terms
                bar.update(len(chunk))
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(gzip.compress(json.dumps(documents).encode()))
    query_ids = list(dataset.queries)
    queries = dict(zip(query_ids, provider.encode([dataset.queries[q] for q in query_ids], query=True), strict=True))
    terms_per_document = np.mean([len(terms) for terms in documents.values()])
    print(f"terms per document: {terms_per_document:.0f}; per query: {np.mean([len(q) for q in queries.values()]):.0f}")

    # 2. Both indexes from the same weights.
    from embeddings.stores.lucene_impact import PyseriniImpactSearcher, impact_index_build  # starts no JVM yet

    ids = list(documents)
    store = ImpactStore(SparseStoreConfig(namespace=NAMESPACE, backend="impact"), work / "indexes")
    started = time.perf_counter()
    store.upsert(tenant="bench", items=[SparseItem(label=i, terms=documents[d]) for i, d in enumerate(ids)])
    medkg_build = time.perf_counter() - started
    started = time.perf_counter()
    impact_index_build(documents=((d, documents[d]) for d in ids), index_dir=work / "pyserini-impact")
    pyserini_build = time.perf_counter() - started
    searcher = PyseriniImpactSearcher(work / "pyserini-impact")
    print(f"index build: medkg {medkg_build:.1f} s, Pyserini (Anserini IndexCollection) {pyserini_build:.1f} s")

    def medkg_search(query: dict[str, float]) -> list[str]:
        return [ids[hit.label] for hit in store.search(tenant="bench", query_terms=query, query_text="", k=arguments.k)]

    def pyserini_search(query: dict[str, float]) -> list[str]:
        return [docid for docid, _ in searcher.search(query, arguments.k)]

    for query in list(queries.values())[:20]:  # warm-up: postings, JIT, caches
        medkg_search(query), pyserini_search(query)

    # 3. Alternating timings.
    times: dict[str, list[float]] = {"medkg": [], "pyserini": []}
    runs: dict[str, dict[str, list[str]]] = {"medkg": {}, "pyserini": {}}
    sides = {"medkg": medkg_search, "pyserini": pyserini_search}
    total = arguments.rounds * len(queries)
    with tqdm(total=total, desc="search", unit="query") as bar:
        for round_number in range(arguments.rounds):
            for position, (query_id, query) in enumerate(queries.items()):
                order = ["medkg", "pyserini"] if (position + round_number) % 2 == 0 else ["pyserini", "medkg"]
                for side in order:
                    clock = time.perf_counter()
                    ranked = sides[side](query)
                    times[side].append(time.perf_counter() - clock)
                    runs[side][query_id] = ranked
                bar.update()
    searcher.close()

    qrels = {q: r for q, r in dataset.qrels.items() if not arguments.limit or any(d in documents for d in r)}
    quality = {side: retrieval_metrics(runs[side], qrels)["ndcg_at_10"] for side in runs}
    agree = sum(runs["medkg"][q] == runs["pyserini"][q] for q in queries)
    medkg_p50, medkg_p95 = milliseconds(times["medkg"])
    pyserini_p50, pyserini_p95 = milliseconds(times["pyserini"])
    print()
    print(f"{'':10} {'p50 ms':>8} {'p95 ms':>8} {'nDCG@10':>8}")
    print(f"{'medkg':10} {medkg_p50:8.3f} {medkg_p95:8.3f} {quality['medkg']:8.4f}")
    print(f"{'Pyserini':10} {pyserini_p50:8.3f} {pyserini_p95:8.3f} {quality['pyserini']:8.4f}")
    print(f"medkg / Pyserini: p50 {medkg_p50 / pyserini_p50:.2f}, p95 {medkg_p95 / pyserini_p95:.2f}")
    print(f"identical top-{arguments.k} lists: {agree} of {len(queries)} (the rest differ by Pyserini's quantisation)")


if __name__ == "__main__":
    main()
