"""FAISS store: per (namespace, tenant) a folder of immutable segments, each a FAISS index, merged in the background.

Why per-tenant partitions: isolation holds by construction (tenant A's index has no vector of tenant B), a small
tenant gets exact answers however large k is, and a tenant's deletes never slow down another tenant's searches.

Why segments (embeddings.stores.segments): an ingestion step writes one new segment of its own size and a live
bitmap for each older segment it replaces entries in, never the whole partition; a search runs on the snapshot of
one commit (segments + live bitmaps), which no writer changes, so it takes no lock a writer holds; another process
picks up a commit by mapping only the new files. Small segments are flat (searched exactly); a segment above
EXACT_SEARCH_MAX_CANDIDATES is an HNSW graph. Tiered merges (MERGE_FACTOR segments of one size class into one)
run in a background thread after a write, or with `manage.py merge_index`; a merge builds outside the write lock
and commits in a moment, carrying over the deletes made while it ran. Deleted entries leave the files at the merge
of their segment, or at once with `purge_deleted`.

Storage (the namespace's `vector_storage` parameter): float32 (default) keeps the vectors in the HNSW graph's
flat storage; float16 and sq8 keep compressed codes in the graph and the float32 vectors in a `.vectors.npy` file
beside it, memory-mapped, to re-score the top RESCORE_FACTOR * k candidates exactly. Index files are memory-mapped
(faiss IO_FLAG_MMAP_IFC), so a process's resident memory is what its searches touch.

Files: `<FAISS_DATA_DIR>/<namespace>/<tenant>.faiss/`: commit.json, `<segment>.faiss`, `<segment>.labels.npy`,
`<segment>.live-<generation>.npy` (packed live bits), `<segment>.vectors.npy` (quantized storage only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Self

import faiss
import numpy as np
from django.conf import settings

from core.errors import BackendError, DimensionMismatch, InvalidRequest
from embeddings.stores import segments as seg
from embeddings.stores.base import SearchHit, StoreConfig, StoredVector, VectorStore

DIRECTORY_SUFFIX = ".faiss"
LEGACY_SUFFIX = ".faiss.npz"  # one whole-partition file per tenant, before segments; converted on first open
FORMAT_VERSION = 2
EXACT_SEARCH_MAX_CANDIDATES = 2048  # below this many live candidates a brute-force pass is exact and as fast
MERGE_FACTOR = 10  # segments of one size class merged into one
MERGE_FLOOR = 256  # the smallest size class: an ingestion step
MAX_DEAD_FRACTION = 0.3  # a segment with more dead slots than this is rewritten on its own
RESCORE_FACTOR = 4  # compressed storage: candidates re-scored on the float32 vectors, per result asked
FILTER_EXACT_FRACTION = 0.1  # a filter passing fewer of a segment's slots than this is answered by an exact scan
BUILD_BATCH = 16_384  # vectors per faiss add() while building: large enough for its threads to share the work
STORAGE_FACTORY = {"float32": "Flat", "float16": "SQfp16", "sq8": "SQ8"}


def faiss_gpu_status() -> tuple[bool, str]:
    """Whether this faiss build can use a GPU here, and why not."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False, "faiss is the CPU build (install faiss-gpu from requirements-gpu.txt for GPU indexes)"
    count = faiss.get_num_gpus()
    if count == 0:
        return False, "faiss-gpu is installed but no CUDA device is visible"
    return True, f"{count} CUDA device(s)"


class _Segment(seg.Segment):
    """One opened FAISS segment: its index (mapped), float32 vectors (mapped), metadata columns and the packed live
    bits the index's selector reads."""

    def __init__(
        self, entry: seg.SegmentEntry, index: Any, labels: np.ndarray, vectors: np.ndarray, live: np.ndarray | None
    ) -> None:
        super().__init__(entry, labels, live)
        self.index = index
        self.vectors = vectors
        self.bitmap = None if live is None else np.packbits(live, bitorder="little")
        self.columns: dict[str, tuple[list[str], np.ndarray]] = {}  # filterable metadata (segments.read_columns)

    def with_live(self, entry: seg.SegmentEntry, live: np.ndarray | None) -> Self:
        fresh = super().with_live(entry, live)
        fresh.bitmap = None if live is None else np.packbits(live, bitorder="little")
        return fresh

    def tokens(self, key: str, slots: np.ndarray) -> list[str]:
        """The metadata tokens of `slots` for `key` (a merge carries the columns over)."""
        column = self.columns.get(key)
        if column is None:
            return [seg.MISSING] * int(slots.size)
        values, codes = column
        return [values[code] for code in codes[slots].tolist()]

    def matching(self, filters: dict[str, list[str]]) -> np.ndarray:
        """Live slots whose metadata passes every filter (a key: any of its tokens)."""
        mask = self.live_mask().copy()
        for key, wanted in filters.items():
            column = self.columns.get(key)
            if column is None:
                raise BackendError(
                    f"Segment {self.name} has no column for metadata key {key!r} (it was declared filterable "
                    "after the segment was written); rebuild the index with `manage.py rebuild_index`.",
                    details={"segment": self.name, "filter": key},
                )
            mask &= seg.column_mask(column, wanted)
        return np.flatnonzero(mask)


_Snapshot = seg.Snapshot[_Segment]


def _stage(directory: Path, index: Any, kind: str, labels: np.ndarray, vectors: np.ndarray | None) -> seg.Built:
    """Write a segment's files under temporary names: no commit names it yet, no cleanup takes it."""

    def write_index(handle: IO[bytes]) -> None:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))  # type: ignore[attr-defined]  # streamed

    writers: dict[str, Callable[[IO[bytes]], object]] = {".faiss": write_index}
    if vectors is not None:
        writers[".vectors.npy"] = lambda handle: np.save(handle, vectors, allow_pickle=False)
    return seg.stage(directory, kind, labels, writers)


def _flat_vectors(index: Any) -> np.ndarray:
    """A zero-copy (mapped) view of a float32 flat storage's vectors: exact search and merges read them there."""
    flat = faiss.downcast_index(index.storage if hasattr(index, "storage") else index)
    count, dim = flat.ntotal, flat.d
    if count == 0:
        return np.empty((0, dim), dtype=np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), count * dim).reshape(count, dim)  # type: ignore[attr-defined]


class _SegmentBuilder:
    """Vectors streamed into one new segment: flat while small, an HNSW graph once past the exact-search size."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.count = 0
        self.duplicates = 0
        self._pending: list[np.ndarray] = []
        self._pending_count = 0
        self._labels: list[np.ndarray] = []
        self._index: Any = None
        self._raw: list[np.ndarray] = []  # float32 copies for compressed storage's `.vectors.npy`
        self._columns: dict[str, list[str]] = {key: [] for key in config.filterable}

    def add(self, vectors: np.ndarray, labels: np.ndarray, columns: dict[str, list[str]] | None = None) -> None:
        for key, tokens in self._columns.items():
            tokens.extend((columns or {}).get(key) or [seg.MISSING] * int(labels.size))
        self._labels.append(labels)
        self.count += labels.size
        self._pending.append(vectors)
        self._pending_count += labels.size
        if self.count > EXACT_SEARCH_MAX_CANDIDATES and self._pending_count >= BUILD_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = np.ascontiguousarray(np.concatenate(self._pending), dtype=np.float32)
        self._pending, self._pending_count = [], 0
        if self._index is None:
            storage = STORAGE_FACTORY[self.config.storage]
            self._index = faiss.index_factory(
                self.config.dim, f"HNSW{self.config.hnsw_m},{storage}", faiss.METRIC_INNER_PRODUCT
            )
            hnsw = faiss.downcast_index(self._index)
            hnsw.hnsw.efConstruction = self.config.ef_construction  # type: ignore[attr-defined]
            if not self._index.is_trained:
                self._index.train(batch)  # scalar quantizer ranges from the first batch
        if self.config.storage != "float32":
            self._raw.append(batch)
        self._index.add(batch)

    def write(self, directory: Path) -> seg.Built:
        """Write the segment's files (named by no commit yet) and return what the commit needs."""
        labels = np.concatenate(self._labels).astype(np.int64)
        if self._index is None and self.count <= EXACT_SEARCH_MAX_CANDIDATES:
            index = faiss.IndexFlatIP(self.config.dim)
            index.add(np.ascontiguousarray(np.concatenate(self._pending), dtype=np.float32))
            built = _stage(directory, index, "flat", labels, None)
        else:
            self._flush()
            vectors = np.concatenate(self._raw) if self._raw else None
            built = _stage(directory, self._index, "hnsw", labels, vectors)
        if self._columns:
            staged = f"{seg.temporary_prefix()}{built.entry.name}.meta.npz"
            seg.write_columns(directory, staged, self._columns)
            built.staged[staged] = f"{built.entry.name}.meta.npz"
        self.duplicates = built.kill_replaced_in_itself()
        return built


FLAT_BLOCK_MAX_BYTES = 16 << 20  # 384-dim: about 40 step segments; 4096-dim: fewer than four
MERGE_THREADS = 1  # OpenMP threads of a background merge; explicit merges (merge_index, bootstrap) use them all


def _flat_block(snapshot: seg.Snapshot[_Segment]) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The live vectors and labels of every flat (small) segment in one array, and the first such segment's
    name: the steps written since the last merge are scored by one matrix product, not one call each. Built once
    per snapshot (a snapshot never changes). Past FLAT_BLOCK_MAX_BYTES the copy would cost the search that
    builds it more than it saves (4096-dim steps are 4 MB each): no block, each flat segment is scored in place."""
    block = snapshot.cache.get("flat")
    if block is None:
        flats = [segment for segment in snapshot.segments if segment.entry.kind == "flat" and segment.alive_count]
        dim = flats[0].vectors.shape[1] if flats else 0
        if sum(segment.alive_count for segment in flats) * dim * 4 > FLAT_BLOCK_MAX_BYTES:
            flats = []
        block = (
            np.concatenate([np.asarray(s.vectors[s.live_mask()]) for s in flats])
            if flats
            else np.empty((0, dim), dtype=np.float32),
            np.concatenate([s.live_labels() for s in flats]) if flats else np.empty(0, dtype=np.int64),
            flats[0].name if flats else None,
        )
        snapshot.cache["flat"] = block
    return block  # type: ignore[no-any-return]


class FaissStore(seg.SegmentedStore[_Segment, _SegmentBuilder], VectorStore):
    directory_suffix = DIRECTORY_SUFFIX
    legacy_suffix = LEGACY_SUFFIX
    segment_suffixes = (".faiss", ".vectors.npy", ".meta.npz")
    index_title = "FAISS index"
    merge_batch = BUILD_BATCH

    def __init__(self, config: StoreConfig, data_dir: Path | None = None) -> None:
        VectorStore.__init__(self, config)
        if config.storage not in STORAGE_FACTORY:
            raise BackendError(
                f"Namespace {config.namespace} asks for vector_storage {config.storage!r}; "
                f"known: {sorted(STORAGE_FACTORY)}.",
                details={"namespace": config.namespace, "vector_storage": config.storage},
            )
        seg.SegmentedStore.__init__(self, Path(data_dir or settings.FAISS_DATA_DIR), config.namespace)
        # Declared filterable keys: the store answers filters from its own columns, with no cap on matches.
        self.filters_natively = bool(config.filterable)

    # Segments

    def _check_header(self, tenant: str, commit: seg.Commit) -> None:
        dim = commit.header.get("dim")
        if dim != self.config.dim:
            raise DimensionMismatch(
                f"FAISS index {self.path_for(tenant)} holds {dim}-dimensional vectors but namespace "
                f"{self.config.namespace} is {self.config.dim}-dimensional; rebuild it.",
                details={"namespace": self.config.namespace, "expected": self.config.dim, "got": dim},
            )

    def _header(self, tenant: str) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "namespace": self.config.namespace,
            "tenant": tenant,
            "dim": self.config.dim,
            "storage": self.config.storage,
            "hnsw_m": self.config.hnsw_m,
        }

    def _merge_policy(self) -> tuple[int, int, float]:
        return MERGE_FLOOR, MERGE_FACTOR, MAX_DEAD_FRACTION  # read at each merge: tests lower MERGE_FACTOR

    def _load_segment(self, directory: Path, entry: seg.SegmentEntry, live: np.ndarray | None) -> _Segment:
        index = faiss.read_index(str(directory / f"{entry.name}.faiss"), faiss.IO_FLAG_MMAP_IFC)
        labels = np.load(directory / f"{entry.name}{seg.LABELS_SUFFIX}", allow_pickle=False)
        vectors_file = directory / f"{entry.name}.vectors.npy"
        if vectors_file.exists():
            vectors = np.load(vectors_file, mmap_mode="r", allow_pickle=False)
        else:
            vectors = _flat_vectors(index)
        if index.d != self.config.dim or labels.size != entry.slots or vectors.shape != (entry.slots, index.d):
            raise ValueError(f"segment {entry.name} does not match its commit entry")
        if entry.kind == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = self.config.ef_search  # type: ignore[attr-defined]
        segment = _Segment(entry, index, labels, vectors, live)
        segment.columns = seg.read_columns(directory / f"{entry.name}.meta.npz")
        return segment

    def _builder(self) -> _SegmentBuilder:
        return _SegmentBuilder(self.config)

    def _feed(self, builder: _SegmentBuilder, segment: _Segment, slots: np.ndarray) -> None:
        builder.add(
            np.ascontiguousarray(segment.vectors[slots], dtype=np.float32),
            segment.labels[slots],
            {key: segment.tokens(key, slots) for key in self.config.filterable},
        )

    def _add_items(self, builder: _SegmentBuilder, items: list[StoredVector]) -> None:
        vectors = self.check_vectors(np.stack([item.vector for item in items]))
        columns = {
            key: [seg.metadata_token(item.metadata[key]) if key in item.metadata else seg.MISSING for item in items]
            for key in self.config.filterable
        }
        builder.add(vectors, np.fromiter((item.label for item in items), dtype=np.int64, count=len(items)), columns)

    def _convert_legacy(self, tenant: str) -> _Snapshot:
        """A partition written before segments (one `.faiss.npz` per tenant) becomes one segment, its graph kept."""
        path = self._legacy_path(tenant)
        try:
            with np.load(path, allow_pickle=False) as stored:
                index = faiss.deserialize_index(np.ascontiguousarray(stored["index"]))
                labels = stored["labels"].astype(np.int64)
                alive = stored["alive"].astype(bool)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise self._unreadable(tenant, error) from error
        if index.d != self.config.dim:
            raise DimensionMismatch(
                f"FAISS index {path} holds {index.d}-dimensional vectors but namespace {self.config.namespace} "
                f"is {self.config.dim}-dimensional; rebuild it.",
                details={"namespace": self.config.namespace, "expected": self.config.dim, "got": int(index.d)},
            )
        built = _stage(self.path_for(tenant), index, "hnsw", labels, None)
        return self._commit_converted(tenant, built, alive, event="faiss_partition_converted")

    # Reads

    def search(
        self,
        *,
        tenant: str,
        query: np.ndarray,
        k: int,
        allowed_labels: Sequence[int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        query = self.check_query(query)
        snapshot = self._snapshot(tenant)
        if snapshot is None or k <= 0:
            return []
        allowed = None if allowed_labels is None else np.unique(np.asarray(allowed_labels, dtype=np.int64))
        wanted = self._filter_tokens(filters) if filters else None
        if allowed is not None or wanted is not None:
            return seg.best_hits(
                snapshot.segments, lambda segment: self._search_segment(segment, query, k, allowed, wanted), k
            )
        vectors, labels, first = _flat_block(snapshot)

        def each(segment: _Segment) -> tuple[np.ndarray, np.ndarray] | None:
            if segment.entry.kind != "flat":
                return self._search_segment(segment, query, k, None, None)
            if first is None:
                return self._search_segment(segment, query, k, None, None)
            if segment.name != first:
                return None  # scored with the block
            scores = vectors @ query[0]
            best = np.argpartition(-scores, k - 1)[:k] if scores.size > k else np.arange(scores.size)
            return scores[best], labels[best]

        return seg.best_hits(snapshot.segments, each, k)

    def _yield_to_searches(self) -> None:
        super()._yield_to_searches()
        faiss.omp_set_num_threads(MERGE_THREADS)  # per calling thread: the merge builds on one core

    @contextlib.contextmanager
    def _narrow_builds(self) -> Iterator[None]:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(MERGE_THREADS)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)

    def _filter_tokens(self, filters: dict[str, Any]) -> dict[str, list[str]]:
        unknown = sorted(set(filters) - set(self.config.filterable))
        if unknown:
            raise InvalidRequest(
                f"Metadata key(s) {unknown} are not filterable in {self.config.namespace}; filterable: "
                f"{list(self.config.filterable)}.",
                details={"filter": unknown, "filterable": list(self.config.filterable)},
            )
        return {
            key: [seg.metadata_token(item) for item in (value if isinstance(value, list) else [value])]
            for key, value in filters.items()
        }

    def _search_segment(
        self,
        segment: _Segment,
        query: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        wanted: dict[str, list[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        if allowed is not None or wanted is not None:
            slots = segment.slots_of(allowed) if allowed is not None else None
            if wanted is not None:
                matching = segment.matching(wanted)
                slots = matching if slots is None else np.intersect1d(slots, matching, assume_unique=True)
            assert slots is not None
            if slots.size == 0:
                return None
            if slots.size <= EXACT_SEARCH_MAX_CANDIDATES or segment.entry.kind != "hnsw":
                return self._exact(segment, query, k, slots)
            mask = np.zeros(segment.entry.slots, dtype=bool)
            mask[slots] = True
            bitmap = np.packbits(mask, bitorder="little")
            if slots.size <= FILTER_EXACT_FRACTION * segment.entry.slots:
                # Few of the graph's nodes pass: a graph walk would starve; a scan of the passing ones is exact.
                return self._scan(segment, query, k, slots, bitmap)
            boost = segment.entry.slots / slots.size  # the walk visits this many nodes per passing one
            return self._hnsw(segment, query, k, bitmap, ef=int(min(1024, self.config.ef_search * boost)))
        if segment.entry.kind != "hnsw" or segment.alive_count <= EXACT_SEARCH_MAX_CANDIDATES:
            live = np.flatnonzero(segment.live) if segment.live is not None else None
            return self._exact(segment, query, k, live)
        return self._hnsw(segment, query, k, segment.bitmap)

    def _exact(
        self, segment: _Segment, query: np.ndarray, k: int, slots: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        vectors = segment.vectors if slots is None else segment.vectors[slots]
        scores = np.asarray(vectors @ query[0], dtype=np.float32)
        best = np.argpartition(-scores, k - 1)[:k] if scores.size > k else np.arange(scores.size)
        chosen = best if slots is None else slots[best]
        return scores[best], segment.labels[chosen]

    def _scan(
        self, segment: _Segment, query: np.ndarray, k: int, slots: np.ndarray, bitmap: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact over `slots`: float32 graphs scan their own flat storage with the bitmap (no copy of the
        vectors); compressed ones gather the passing float32 vectors from the mapped file."""
        if self.config.storage != "float32":
            return self._exact(segment, query, k, slots)
        flat = faiss.downcast_index(segment.index.storage)  # type: ignore[attr-defined]
        params = faiss.SearchParameters()
        params.sel = faiss.IDSelectorBitmap(segment.entry.slots, faiss.swig_ptr(bitmap))
        scores, found = flat.search(query, min(k, int(slots.size)), params=params)
        keep = found[0] >= 0
        return scores[0][keep], segment.labels[found[0][keep]]

    def _hnsw(
        self, segment: _Segment, query: np.ndarray, k: int, bitmap: np.ndarray | None, ef: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        rescore = self.config.storage != "float32"
        wanted = min(segment.entry.slots, k * RESCORE_FACTOR if rescore else k)
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.config.ef_search, wanted, ef)
        if bitmap is not None:
            params.sel = faiss.IDSelectorBitmap(segment.entry.slots, faiss.swig_ptr(bitmap))
        scores, slots = segment.index.search(query, wanted, params=params)
        found = slots[0][slots[0] >= 0]
        if rescore and found.size:
            return self._exact(segment, query, k, np.sort(found))
        return scores[0][: found.size], segment.labels[found]

    def readiness(self) -> tuple[bool, str]:
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return False, f"FAISS_DATA_DIR is not writable: {error}"
        gpu, reason = faiss_gpu_status()
        return True, f"faiss {faiss.__version__}, {'GPU' if gpu else 'CPU'} ({reason})"
