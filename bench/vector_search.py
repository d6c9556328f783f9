"""Vector search: the store layer against raw faiss on the same vectors, in one run, plus the API path.

    python bench/vector_search.py [--vectors 100000] [--queries 2000] [--ef-search 32 64]

1. 100k x 384 unit vectors shaped like sentence embeddings (clusters on a low-dimensional manifold).
2. Raw faiss: IndexHNSWFlat(M=32, efConstruction=200), inner product; p50/p95/p99 per query at each efSearch.
3. The FAISS store (embeddings.stores.faiss.FaissStore) holding the same vectors for one tenant, loaded from its
   file the way a server process loads it; same queries, same efSearch.
4. recall@10 of both against exact search (IndexFlatIP).
5. The API: POST /v1/namespaces/{ns}/search through Django's test client on SQLite with the real MiniLM model
   (query embedding + database + store), p50/p95/p99, against the raw model's embedding time for one query.
Ratios are printed against the baselines measured in the same run, so a busy machine does not lie.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    values = np.asarray(samples) * 1000.0
    return tuple(float(np.percentile(values, q)) for q in (50, 95, 99))  # type: ignore[return-value]


def embedding_like_vectors(count: int, dim: int, seed: int, latent: int = 48, clusters: int = 2000) -> np.ndarray:
    """Unit vectors with the shape of sentence embeddings: clusters on a low-dimensional manifold, embedded in `dim`.

    Isotropic random vectors in 384 dimensions have no neighbourhood structure (every point is about equally far),
    so no graph index reaches a useful recall on them; real embeddings have an intrinsic dimension of a few dozen.
    """
    rng = np.random.default_rng(seed)
    structure = np.random.default_rng(12345)  # the same manifold for corpus and queries
    basis, _ = np.linalg.qr(structure.standard_normal((dim, latent)).astype(np.float32))
    centres = structure.standard_normal((clusters, latent)).astype(np.float32)
    points = centres[rng.integers(0, clusters, count)] + 0.7 * rng.standard_normal((count, latent)).astype(np.float32)
    vectors = points @ basis.T + 0.02 * rng.standard_normal((count, dim)).astype(np.float32)
    return np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t[:10])) / 10 for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--api-queries", type=int, default=200)
    parser.add_argument("--skip-api", action="store_true")
    arguments = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medkg-bench-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medkg.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MEDKG_VAR_DIR"] = str(work / "var")
    os.environ["FAISS_DATA_DIR"] = str(work / "faiss")
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("OPENSEARCH_URL", None)
    import django

    django.setup()
    import faiss
    from tqdm import tqdm

    from embeddings.stores.base import StoreConfig, StoredVector
    from embeddings.stores.faiss import FaissStore

    faiss.omp_set_num_threads(1)  # one query at a time, as a request thread runs it
    print(f"faiss {faiss.__version__}; {arguments.vectors} x {arguments.dim} vectors, {arguments.queries} queries")
    vectors = embedding_like_vectors(arguments.vectors, arguments.dim, seed=0)
    queries = embedding_like_vectors(arguments.queries, arguments.dim, seed=1)

    exact = faiss.IndexFlatIP(arguments.dim)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)

    started = time.perf_counter()
    raw = faiss.IndexHNSWFlat(arguments.dim, 32, faiss.METRIC_INNER_PRODUCT)
    raw.hnsw.efConstruction = 200
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    raw.add(vectors)
    print(f"raw HNSW build: {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    labels = np.arange(1, arguments.vectors + 1)  # Document ids start at 1
    writer = FaissStore(StoreConfig(namespace="bench.vectors", dim=arguments.dim, backend="faiss"), work / "faiss")
    chunks = (
        [StoredVector(int(labels[i]), vectors[i]) for i in range(start, min(start + 5000, arguments.vectors))]
        for start in range(0, arguments.vectors, 5000)
    )
    with tqdm(total=arguments.vectors, desc="store bulk_load", unit="vec") as bar:
        writer.bulk_load(tenant="bench", chunks=chunks, on_progress=bar.update)
    print(f"store build + persist: {time.perf_counter() - started:.1f} s")
    faiss.omp_set_num_threads(1)

    for ef_search in arguments.ef_search:
        store = FaissStore(
            StoreConfig(namespace="bench.vectors", dim=arguments.dim, backend="faiss", ef_search=ef_search),
            work / "faiss",
        )
        store.count(tenant="bench")  # load the file, as a server process does on its first search
        raw.hnsw.efSearch = ef_search
        raw_times, store_times = [], []
        raw_found = np.empty((len(queries), 10), dtype=np.int64)
        store_found = np.empty((len(queries), 10), dtype=np.int64)
        for i, query in enumerate(queries):  # interleaved: both see the same machine state
            one = query.reshape(1, -1)
            t0 = time.perf_counter()
            _, found = raw.search(one, 10)
            t1 = time.perf_counter()
            hits = store.search(tenant="bench", query=query, k=10)
            t2 = time.perf_counter()
            raw_times.append(t1 - t0)
            store_times.append(t2 - t1)
            raw_found[i] = found[0]
            store_found[i] = [hit.label - 1 for hit in hits]
        raw_p = percentiles(raw_times)
        store_p = percentiles(store_times)
        print(f"\nefSearch {ef_search}")
        print(
            f"  raw faiss   p50 {raw_p[0]:.3f} ms  p95 {raw_p[1]:.3f} ms  p99 {raw_p[2]:.3f} ms  "
            f"recall@10 {recall_at_10(raw_found, truth):.4f}"
        )
        print(
            f"  store layer p50 {store_p[0]:.3f} ms  p95 {store_p[1]:.3f} ms  p99 {store_p[2]:.3f} ms  "
            f"recall@10 {recall_at_10(store_found, truth):.4f}"
        )
        print(f"  store p95 / raw p95 = {store_p[1] / raw_p[1]:.2f}  (goal <= 2.00)")

    if not arguments.skip_api:
        api_bench(work, vectors, arguments.api_queries)


def api_bench(work: Path, vectors: np.ndarray, count: int) -> None:
    """POST /v1/namespaces/{ns}/search end to end (query embedding included) on a 100k-document tenant."""
    import json

    from django.core.management import call_command
    from django.test import Client

    from embeddings.models import Document
    from embeddings.services import embeddings_compute
    from namespaces.models import Namespace
    from namespaces.services import tenant_create, token_issue

    call_command("migrate", verbosity=0)
    call_command("sync_namespaces", verbosity=0)
    namespace = Namespace.objects.get(name="single_vector.minilm.384.v1")
    tenant, _ = tenant_create(slug="bench")
    # The rows the store's labels point at (the store itself was filled above under the same tenant slug).
    Document.objects.bulk_create(
        [
            Document(
                id=i + 1,
                namespace=namespace,
                tenant=tenant,
                external_id=f"doc-{i}",
                text="-",
                text_hash="-",
                version=1,
                indexed_version=1,
            )
            for i in range(len(vectors))
        ],
        batch_size=5000,
    )
    import shutil

    source = work / "faiss" / "bench.vectors" / "bench.faiss.npz"
    target = work / "faiss" / namespace.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target / "bench.faiss.npz")
    token = token_issue(tenant=tenant, scopes=["embed:read"], ttl=timedelta(hours=1))
    client = Client()
    texts = [f"effect of drug {i} on blood pressure in elderly patients" for i in range(count)]
    embeddings_compute(namespace=namespace, texts=texts[:2])  # load the model
    path = f"/v1/namespaces/{namespace.name}/search"
    model_times, api_times = [], []
    for text in texts:
        t0 = time.perf_counter()
        embeddings_compute(namespace=namespace, texts=[text], normalize=True)
        t1 = time.perf_counter()
        response = client.post(
            path,
            json.dumps({"tenant_id": "bench", "query": text, "k": 10}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {token}",
        )
        t2 = time.perf_counter()
        if response.status_code != 200 or len(response.json()["hits"]) != 10:
            raise SystemExit(f"search failed: {response.status_code} {response.content[:300]!r}")
        model_times.append(t1 - t0)
        api_times.append(t2 - t1)
    model_p, api_p = percentiles(model_times), percentiles(api_times)
    print(f"\nAPI search ({len(vectors)} documents in the tenant, k=10, SQLite, {count} queries)")
    print(f"  query embedding alone p50 {model_p[0]:.2f} ms  p95 {model_p[1]:.2f} ms  p99 {model_p[2]:.2f} ms")
    print(
        f"  API search            p50 {api_p[0]:.2f} ms  p95 {api_p[1]:.2f} ms  p99 {api_p[2]:.2f} ms"
        "  (goal p95 <= 25 ms)"
    )
    print(f"  API p95 / embedding p95 = {api_p[1] / model_p[1]:.2f}")


if __name__ == "__main__":
    main()
