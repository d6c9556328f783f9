"""How the embedded FAISS store's costs grow with what a tenant already holds: 10k -> 100k -> 1M vectors.

    python bench/index_scaling.py [--sizes 10000 100000 1000000] [--dim 384] [--storage float32 float16 sq8]
    python bench/index_scaling.py --smoke          # seconds: the suite runs this (tests/bench/test_index_scaling.py)

At each size, one tenant is bootstrapped with `bulk_load` (then `optimize`: one merged segment), and beside it a
raw faiss IndexHNSWFlat of the same vectors is built in the same process, the baseline of every ratio:
- bootstrap: the store's bulk_load + optimize against raw faiss building the same index (index_factory + add);
- step: one ingestion step (upsert of 256 new vectors, durable) against raw faiss `add` of the same 256 vectors,
  and the bytes the step wrote to disk;
- refresh: a second process holding the store open picks up a step (time of its next call, which maps the new
  files) after each of the steps;
- search p50/p95/p99 on the merged store, on raw faiss (same efSearch), and with the steps' unmerged segments;
- search p99 and max while a writer thread ingests continuously (steps of 256, background merges on);
- recall@10 against exact search (IndexFlatIP) on the live vectors;
- filtered search (allowed labels) at selectivities 0.1 %, 1 %, 10 %, 50 %: p95 and recall@10 against exact
  filtered search;
- RSS of the process and bytes on disk of the partition.
Vectors are synthetic, shaped like sentence embeddings (bench/vector_search.py). Goals printed at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "medkg.settings")

from bench.vector_search import embedding_like_vectors, percentiles  # noqa: E402

STEP = 256
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
NAMESPACE = "single_vector.bench.0.v1"


@dataclass
class Row:
    size: int
    storage: str
    figures: dict[str, Any] = field(default_factory=dict)


def make_store(directory: Path, dim: int, storage: str, ef_search: int) -> Any:
    from embeddings.stores.base import StoreConfig
    from embeddings.stores.faiss import FaissStore

    config = StoreConfig(
        namespace=NAMESPACE, dim=dim, backend="faiss", ef_search=ef_search, storage=storage, filterable=("bucket",)
    )
    return FaissStore(config, directory)


def stored(labels: np.ndarray, vectors: np.ndarray) -> list[Any]:
    from embeddings.stores.base import StoredVector

    return [
        StoredVector(int(label), vector, metadata={"bucket": bucket_of(int(label))})
        for label, vector in zip(labels, vectors, strict=True)
    ]


def bucket_of(label: int) -> int:
    """A filterable metadata value, 0..999, scattered over the labels: bucket < 1000 s selects a fraction s."""
    return label * 7919 % 1000


def _refresh_child(directory: str, dim: int, storage: str, ef_search: int, pipe: Any) -> None:
    store = make_store(Path(directory), dim, storage, ef_search)
    store.count(tenant="t")  # opened, as a serving process holds it
    pipe.send("ready")
    while (message := pipe.recv())[0] == "step":
        started = time.perf_counter()
        count = store.count(tenant="t")  # maps only the new segment and live bitmaps
        pipe.send((time.perf_counter() - started, count))
    for query in message[1]:  # then serve searches, and say what that costs in resident memory
        store.search(tenant="t", query=query, k=10)
    pipe.send(vm_rss_mb())


def vm_rss_mb() -> float:
    """Resident memory now: mapped index pages count once they are touched."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ingest_child(
    directory: str, dim: int, storage: str, ef_search: int, vectors: np.ndarray, first: int, stop: Any, done: Any
) -> None:
    """A writer process, as a Celery worker is beside gunicorn: steps of 256 until told to stop (background
    merges on)."""
    store = make_store(Path(directory), dim, storage, ef_search)
    for offset in range(0, vectors.shape[0] - STEP + 1, STEP):
        if stop.is_set():
            break
        labels = np.arange(first + offset, first + offset + STEP)
        store.upsert(tenant="t", items=stored(labels, vectors[offset : offset + STEP]))
        done.value += 1


def timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def latencies(store: Any, queries: np.ndarray, k: int = 10, **kwargs: Any) -> tuple[list[float], list[list[int]]]:
    samples, found = [], []
    for query in queries:
        started = time.perf_counter()
        hits = store.search(tenant="t", query=query, k=k, **kwargs)
        samples.append(time.perf_counter() - started)
        found.append([hit.label for hit in hits])
    return samples, found


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))


def exact_top(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int = 10) -> list[list[int]]:
    """Brute force, in batches of queries (a million vectors times 500 queries would not fit at once)."""
    result: list[list[int]] = []
    for start in range(0, queries.shape[0], 25):
        scores = queries[start : start + 25] @ vectors.T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        for row, candidates in zip(scores, top, strict=True):
            ordered = candidates[np.argsort(-row[candidates])]
            result.append(labels[ordered].tolist())
    return result


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def disk_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.iterdir() if file.is_file())


def measure(size: int, dim: int, storage: str, args: argparse.Namespace, root: Path) -> Row:
    import faiss

    row = Row(size, storage)
    figures = row.figures
    vectors = embedding_like_vectors(size, dim, seed=1)
    labels = np.arange(size, dtype=np.int64)
    queries = embedding_like_vectors(args.queries, dim, seed=2)
    extra = embedding_like_vectors(STEP * (args.steps + args.busy_steps), dim, seed=3)

    # Raw faiss: the same HNSW built in this process, the baseline.
    raw = faiss.index_factory(dim, "HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
    raw.hnsw.efConstruction = 200
    figures["raw build s"] = timed(lambda: raw.add(vectors))
    raw.hnsw.efSearch = args.ef_search

    directory = root / f"{storage}-{size}"
    store = make_store(directory, dim, storage, args.ef_search)
    store.background_merges = False
    chunk = 10_000
    bootstrap = timed(
        lambda: store.bulk_load(
            tenant="t",
            chunks=(stored(labels[s : s + chunk], vectors[s : s + chunk]) for s in range(0, size, chunk)),
        )
    )
    bootstrap += timed(lambda: store.optimize(tenant="t"))
    figures["bootstrap s"] = bootstrap
    figures["bootstrap / raw"] = bootstrap / figures["raw build s"]
    partition = store.path_for("t")
    index_bytes = sum(file.stat().st_size for file in partition.glob("*.faiss"))
    rescoring_bytes = sum(file.stat().st_size for file in partition.glob("*.vectors.npy"))
    figures["index bytes/vector (graph + codes)"] = index_bytes / size
    figures["re-scoring bytes/vector (mapped)"] = rescoring_bytes / size

    # Merged state: one segment.
    raw_samples = [timed(lambda q=q: raw.search(q[None, :], 10)) for q in queries]
    store_samples, found = latencies(store, queries)
    truth = exact_top(vectors, labels, queries)
    figures["raw p95 ms"] = percentiles(raw_samples)[1]
    figures["merged p50/p95/p99 ms"] = percentiles(store_samples)
    figures["merged p95 / raw"] = percentiles(store_samples)[1] / max(1e-9, figures["raw p95 ms"])
    figures["recall@10"] = recall(found, truth)

    # Filtered search on a declared metadata key (the store's own column), against exact filtered search.
    buckets = labels * 7919 % 1000
    filtered = {}
    for selectivity in SELECTIVITIES:
        wanted = list(range(int(1000 * selectivity)))
        passing = np.flatnonzero(buckets < len(wanted))
        samples, found = latencies(store, queries[: args.filter_queries], filters={"bucket": wanted})
        exact = exact_top(vectors[passing], labels[passing], queries[: args.filter_queries])
        filtered[f"{selectivity:.1%}"] = (percentiles(samples)[1], recall(found, exact))
    figures["filtered p95 ms, recall"] = filtered
    # The same selectivities as label lists (filters resolved by the database: the undeclared-key path).
    rng = np.random.default_rng(4)
    filtered = {}
    for selectivity in SELECTIVITIES:
        allowed = np.sort(rng.choice(size, max(10, int(size * selectivity)), replace=False))
        samples, found = latencies(store, queries[: args.filter_queries], allowed_labels=allowed.tolist())
        exact = exact_top(vectors[allowed], labels[allowed], queries[: args.filter_queries])
        filtered[f"{selectivity:.1%}"] = (percentiles(samples)[1], recall(found, exact))
    figures["allowed-labels p95 ms, recall"] = filtered

    # Ingestion steps: each an upsert of 256 new vectors, against raw faiss add of the same ones.
    context = multiprocessing.get_context("spawn")
    parent, child_end = context.Pipe()
    child = context.Process(target=_refresh_child, args=(str(directory), dim, storage, args.ef_search, child_end))
    child.start()
    assert parent.recv() == "ready"
    step_times, raw_times, written, refresh = [], [], [], []
    next_label = size
    for step in range(args.steps):
        batch = extra[step * STEP : (step + 1) * STEP]
        before = {file.name for file in partition.iterdir()}
        step_labels = np.arange(next_label, next_label + STEP)
        next_label += STEP
        step_times.append(timed(lambda b=batch, sl=step_labels: store.upsert(tenant="t", items=stored(sl, b))))
        raw_times.append(timed(lambda b=batch: raw.add(b)))
        written.append(
            sum((partition / name).stat().st_size for name in {f.name for f in partition.iterdir()} - before)
        )
        parent.send(("step", None))
        seconds, count = parent.recv()
        assert count == store.count(tenant="t"), "the second process saw another commit"
        refresh.append(seconds)
    parent.send(("search", queries))
    figures["serving process RSS MB"] = parent.recv()
    child.join(30)
    figures["step s (median)"] = float(np.median(step_times))
    figures["raw add s (median)"] = float(np.median(raw_times))
    figures["step / raw add"] = figures["step s (median)"] / figures["raw add s (median)"]
    figures["written per step KB"] = float(np.median(written)) / 1024
    figures["refresh ms (median, max)"] = (float(np.median(refresh)) * 1000, float(np.max(refresh)) * 1000)

    # Unmerged: the steps' segments sit beside the merged one.
    unmerged, _ = latencies(store, queries)
    figures["segments unmerged"] = len(store.segments(tenant="t"))
    figures["unmerged p95 / raw"] = percentiles(unmerged)[1] / max(1e-9, figures["raw p95 ms"])

    # While a writer ingests continuously: a thread of this process (the embedded mode) and another process (a
    # Celery worker beside the web server); background merges on in the writer.
    idle = percentiles(store_samples)[2]
    figures["p99 idle ms"] = idle
    store.background_merges = True
    stop = threading.Event()
    steps_done = [0]
    busy_vectors = extra[args.steps * STEP :]

    def ingest() -> None:
        label = next_label
        for offset in range(0, busy_vectors.shape[0] - STEP + 1, STEP):
            if stop.is_set():
                break
            store.upsert(tenant="t", items=stored(np.arange(label, label + STEP), busy_vectors[offset : offset + STEP]))
            label += STEP
            steps_done[0] += 1

    writer = threading.Thread(target=ingest)
    writer.start()
    busy, _ = latencies(store, np.concatenate([queries] * args.busy_rounds))
    stop.set()
    writer.join()
    figures["in-process writer: p99, max ms"] = (percentiles(busy)[2], max(busy) * 1000)
    figures["in-process writer: steps"] = steps_done[0]
    store.background_merges = False

    process_stop, process_done = context.Event(), context.Value("i", 0)
    first = next_label + busy_vectors.shape[0]
    other = context.Process(
        target=_ingest_child,
        args=(str(directory), dim, storage, args.ef_search, busy_vectors, first, process_stop, process_done),
    )
    other.start()
    while process_done.value < 2:  # it is writing
        time.sleep(0.01)
    busy, _ = latencies(store, np.concatenate([queries] * args.busy_rounds))
    process_stop.set()
    other.join(120)
    figures["p99 while ingesting ms"] = percentiles(busy)[2]
    figures["max while ingesting ms"] = max(busy) * 1000
    figures["writer-process steps"] = process_done.value
    figures["RSS MB (peak)"] = rss_mb()
    figures["disk MB"] = disk_bytes(partition) / 1e6
    figures["bytes/vector on disk"] = disk_bytes(partition) / store.count(tenant="t")
    store.drop()
    return row


def goals(rows: list[Row]) -> list[str]:
    lines = []
    for storage in sorted({row.storage for row in rows}):
        mine = sorted((row for row in rows if row.storage == storage), key=lambda row: row.size)
        small, large = mine[0].figures, mine[-1].figures
        growth = large["step s (median)"] / small["step s (median)"]
        lines.append(
            f"[{storage}] step cost {mine[-1].size:,} / {mine[0].size:,}: {growth:.2f}x (goal <= 1.5x) "
            f"{'met' if growth <= 1.5 else 'MISSED'}"
        )
        for row in mine:
            f = row.figures
            bound = max(3 * f["p99 idle ms"], 20.0)
            lines.append(
                f"[{storage} {row.size:,}] p99 while ingesting {f['p99 while ingesting ms']:.1f} ms (goal <= "
                f"{bound:.1f}) {'met' if f['p99 while ingesting ms'] <= bound else 'MISSED'}; refresh max "
                f"{f['refresh ms (median, max)'][1]:.1f} ms (goal <= 50) "
                f"{'met' if f['refresh ms (median, max)'][1] <= 50 else 'MISSED'}; filtered recall min "
                f"{min(r for _, r in f['filtered p95 ms, recall'].values()):.3f} (goal >= 0.95); merged p95/raw "
                f"{f['merged p95 / raw']:.2f} (goal <= 2); unmerged p95/raw {f['unmerged p95 / raw']:.2f} "
                f"(goal <= 3); bootstrap/raw {f['bootstrap / raw']:.2f} (goal <= 1.3)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--storage", nargs="+", default=["float32", "float16", "sq8"])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--filter-queries", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--busy-rounds", type=int, default=2)
    parser.add_argument("--busy-steps", type=int, default=400, help="steps of 256 the busy writers may write")
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.dim, args.storage = [3000, 6000], 64, ["float32", "sq8"]
        args.queries, args.filter_queries, args.steps, args.busy_rounds, args.busy_steps = 60, 20, 4, 1, 40
    import django

    django.setup()
    rows = []
    with tempfile.TemporaryDirectory(prefix="index-scaling-") as root:
        for storage in args.storage:
            for size in args.sizes:
                row = measure(size, args.dim, storage, args, Path(root))
                rows.append(row)
                print(f"\n== {storage}, {size:,} vectors of {args.dim} dims ==", flush=True)
                for name, value in row.figures.items():
                    print(f"  {name:32} {format_value(value)}", flush=True)
    print("\nGoals:")
    for line in goals(rows):
        print("  " + line)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {format_value(v)}" for k, v in value.items())
    return str(value)


if __name__ == "__main__":
    main()
