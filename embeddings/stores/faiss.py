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
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import faiss
import numpy as np
from django.conf import settings

from core.errors import BackendError, DimensionMismatch, InvalidRequest
from core.logging import log_event
from embeddings.stores import segments as seg
from embeddings.stores.base import SearchHit, StoreConfig, StoredVector, StoreStats, VectorStore
from embeddings.stores.files import FileIdentity, file_identity, safe_component

logger = logging.getLogger("medkg.embeddings.stores")

DIRECTORY_SUFFIX = ".faiss"
LEGACY_SUFFIX = ".faiss.npz"  # one whole-partition file per tenant, before segments; converted on first open
FORMAT_VERSION = 2
EXACT_SEARCH_MAX_CANDIDATES = 2048  # below this many live candidates a brute-force pass is exact and as fast
MERGE_FACTOR = 10  # segments of one size class merged into one
MERGE_FLOOR = 256  # the smallest size class: an ingestion step
MAX_DEAD_FRACTION = 0.3  # a segment with more dead slots than this is rewritten on its own
RESCORE_FACTOR = 4  # compressed storage: candidates re-scored on the float32 vectors, per result asked
FILTER_EXACT_FRACTION = 0.1  # a filter passing fewer of a segment's slots than this is answered by an exact scan
BUILD_BATCH = 16_384
MERGE_THREADS = 1  # OpenMP threads of a background merge; explicit merges (merge_index, bootstrap) use them all
MERGE_NICENESS = 10  # vectors per faiss add() while building: large enough for its threads to share the work
STORAGE_FACTORY = {"float32": "Flat", "float16": "SQfp16", "sq8": "SQ8"}


def faiss_gpu_status() -> tuple[bool, str]:
    """Whether this faiss build can use a GPU here, and why not."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False, "faiss is the CPU build (install faiss-gpu from requirements-gpu.txt for GPU indexes)"
    count = faiss.get_num_gpus()
    if count == 0:
        return False, "faiss-gpu is installed but no CUDA device is visible"
    return True, f"{count} CUDA device(s)"


class _Segment:
    """One opened segment: its index (mapped), labels, float32 vectors (mapped) and the live mask of one commit.
    Immutable once published; a commit that kills slots makes a new _Segment sharing the mapped parts."""

    def __init__(
        self, entry: seg.SegmentEntry, index: Any, labels: np.ndarray, vectors: np.ndarray, live: np.ndarray | None
    ) -> None:
        self.entry = entry
        self.index = index
        self.labels = labels
        self.vectors = vectors
        self.live = live  # bool per slot, None: all alive
        self.bitmap = None if live is None else np.packbits(live, bitorder="little")
        self.columns: dict[str, tuple[list[str], np.ndarray]] = {}  # filterable metadata (segments.read_columns)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def alive_count(self) -> int:
        return self.entry.slots - self.entry.dead

    def live_mask(self) -> np.ndarray:
        return np.ones(self.entry.slots, dtype=bool) if self.live is None else self.live

    def live_labels(self) -> np.ndarray:
        return self.labels if self.live is None else self.labels[self.live]

    def slots_of(self, labels: np.ndarray) -> np.ndarray:
        """The live slots holding any of `labels` (sorted int64)."""
        if self._sorted is None:
            sorter = np.argsort(self.labels, kind="stable")
            self._sorted = (self.labels[sorter], sorter)
        slots = seg.lookup(self._sorted[0], self._sorted[1], labels)
        return slots if self.live is None else slots[self.live[slots]]

    def with_live(self, entry: seg.SegmentEntry, live: np.ndarray | None) -> _Segment:
        fresh = _Segment(entry, self.index, self.labels, self.vectors, live)
        fresh._sorted, fresh.columns = self._sorted, self.columns
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


@dataclass(eq=False)
class _Snapshot:
    """What one commit names, opened: searches run on it while writers publish the next. Never changed once
    published, except for the lazily built block below."""

    identity: FileIdentity | None
    commit: seg.Commit
    segments: tuple[_Segment, ...]
    _flat: tuple[np.ndarray, np.ndarray] | None = None

    def flat_block(self) -> tuple[np.ndarray, np.ndarray]:
        """The live vectors and labels of every flat (small) segment in one array: the steps written since the
        last merge are scored by one matrix product, not one call each. Built once per snapshot."""
        if self._flat is None:
            flats = [segment for segment in self.segments if segment.entry.kind == "flat" and segment.alive_count]
            dim = self.segments[0].vectors.shape[1] if self.segments else 0
            vectors = [np.asarray(segment.vectors[segment.live_mask()]) for segment in flats]
            labels = [segment.live_labels() for segment in flats]
            self._flat = (
                np.concatenate(vectors) if vectors else np.empty((0, dim), dtype=np.float32),
                np.concatenate(labels) if labels else np.empty(0, dtype=np.int64),
            )
        return self._flat

    def by_name(self) -> dict[str, _Segment]:
        return {segment.name: segment for segment in self.segments}


@dataclass
class _Built:
    """A segment written to disk under temporary names; the commit that names it renames them first."""

    entry: seg.SegmentEntry
    live: np.ndarray | None
    labels: np.ndarray
    staged: dict[str, str]  # temporary name -> final name

    def kill(self, slots: np.ndarray) -> None:
        """Deaths known before the commit (deletes made while a merge built it)."""
        live = np.ones(self.entry.slots, dtype=bool) if self.live is None else self.live.copy()
        live[slots] = False
        self.live = live
        self.entry = seg.SegmentEntry(
            self.entry.name, self.entry.slots, int(self.entry.slots - live.sum()), None, self.entry.kind
        )

    def discard(self, directory: Path) -> None:
        for temporary in self.staged:
            with contextlib.suppress(FileNotFoundError):
                (directory / temporary).unlink()


@dataclass
class _Partition:
    """Per tenant, per process: the published snapshot and the locks around changing it."""

    snapshot: _Snapshot | None = None
    refresh: threading.Lock = field(default_factory=threading.Lock)
    write: threading.Lock = field(default_factory=threading.Lock)
    merging: threading.Lock = field(default_factory=threading.Lock)


class FaissStore(VectorStore):
    background_merges = True  # tests and benches may turn merges after writes off and run them explicitly

    def __init__(self, config: StoreConfig, data_dir: Path | None = None) -> None:
        super().__init__(config)
        if config.storage not in STORAGE_FACTORY:
            raise BackendError(
                f"Namespace {config.namespace} asks for vector_storage {config.storage!r}; "
                f"known: {sorted(STORAGE_FACTORY)}.",
                details={"namespace": config.namespace, "vector_storage": config.storage},
            )
        self.directory = Path(data_dir or settings.FAISS_DATA_DIR) / safe_component(config.namespace, "namespace")
        self._partitions: dict[str, _Partition] = {}
        self._guard = threading.Lock()
        # Declared filterable keys: the store answers filters from its own columns, with no cap on matches.
        self.filters_natively = bool(config.filterable)

    # Layout

    def path_for(self, tenant: str) -> Path:
        """The tenant's partition folder."""
        return self.directory / f"{safe_component(tenant, 'tenant')}{DIRECTORY_SUFFIX}"

    def _legacy_path(self, tenant: str) -> Path:
        return self.directory / f"{safe_component(tenant, 'tenant')}{LEGACY_SUFFIX}"

    def _partition(self, tenant: str) -> _Partition:
        with self._guard:
            return self._partitions.setdefault(tenant, _Partition())

    def tenants(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        names = {path.name.removesuffix(DIRECTORY_SUFFIX) for path in self.directory.glob(f"*{DIRECTORY_SUFFIX}")}
        names |= {path.name.removesuffix(LEGACY_SUFFIX) for path in self.directory.glob(f"*{LEGACY_SUFFIX}")}
        return sorted(
            name
            for name in names
            if (self.path_for(name) / seg.COMMIT_FILE).exists() or self._legacy_path(name).exists()
        )

    # Reading a commit

    def _unreadable(self, tenant: str, error: Exception) -> BackendError:
        return BackendError(
            f"FAISS index {self.path_for(tenant)} cannot be read ({error}); rebuild it with "
            f"`manage.py rebuild_index --namespace {self.config.namespace}`.",
            details={"namespace": self.config.namespace, "file": str(self.path_for(tenant))},
        )

    def _open(self, tenant: str, previous: _Snapshot | None) -> _Snapshot | None:
        """The commit on disk now, reusing what `previous` already opened (a refresh maps only new files)."""
        directory = self.path_for(tenant)
        for _attempt in range(10):  # a merge may remove a file between reading the commit and opening it
            identity = file_identity(directory / seg.COMMIT_FILE)
            if identity is None:
                return None
            if previous is not None and previous.identity == identity:
                return previous
            try:
                commit = seg.read_commit(directory)
                if commit is None:
                    return None
                self._check_header(tenant, commit)
                known = previous.by_name() if previous is not None else {}
                opened = tuple(self._open_segment(directory, entry, known.get(entry.name)) for entry in commit.segments)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
                raise self._unreadable(tenant, error) from error
            return _Snapshot(identity=identity, commit=commit, segments=opened)
        raise self._unreadable(tenant, RuntimeError("the commit kept changing while it was opened"))

    def _check_header(self, tenant: str, commit: seg.Commit) -> None:
        dim = commit.header.get("dim")
        if dim != self.config.dim:
            raise DimensionMismatch(
                f"FAISS index {self.path_for(tenant)} holds {dim}-dimensional vectors but namespace "
                f"{self.config.namespace} is {self.config.dim}-dimensional; rebuild it.",
                details={"namespace": self.config.namespace, "expected": self.config.dim, "got": dim},
            )

    def _open_segment(self, directory: Path, entry: seg.SegmentEntry, known: _Segment | None) -> _Segment:
        if known is not None and known.entry == entry:
            return known
        live = None
        if entry.live:
            bits = np.load(directory / entry.live, allow_pickle=False)
            live = np.unpackbits(bits, count=entry.slots, bitorder="little").astype(bool)
        if known is not None:
            return known.with_live(entry, live)
        index = faiss.read_index(str(directory / f"{entry.name}.faiss"), faiss.IO_FLAG_MMAP_IFC)
        labels = np.load(directory / f"{entry.name}.labels.npy", allow_pickle=False)
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

    def _snapshot(self, tenant: str) -> _Snapshot | None:
        """The latest commit, opened. A reader never waits on a writer: while another thread refreshes, it searches
        the snapshot it has (one commit behind at most)."""
        partition = self._partition(tenant)
        current = partition.snapshot
        identity = file_identity(self.path_for(tenant) / seg.COMMIT_FILE)
        if current is not None and current.identity == identity:
            return current
        if identity is None and self._legacy_path(tenant).exists():
            with self._writing(tenant) as snapshot:
                return snapshot
        if not partition.refresh.acquire(blocking=current is None):
            return current
        try:
            partition.snapshot = self._open(tenant, partition.snapshot)
            return partition.snapshot
        finally:
            partition.refresh.release()

    # Writing a commit

    @contextlib.contextmanager
    def _writing(self, tenant: str) -> Iterator[_Snapshot | None]:
        """Exclusive write access to the tenant's partition across threads and processes, fresh from disk."""
        directory = self.path_for(tenant)
        directory.mkdir(parents=True, exist_ok=True)
        partition = self._partition(tenant)
        with partition.write, seg.flocked(directory / seg.WRITE_LOCK):
            with partition.refresh:
                partition.snapshot = self._open(tenant, partition.snapshot)
            if partition.snapshot is None and self._legacy_path(tenant).exists():
                partition.snapshot = self._convert_legacy(tenant)
            yield partition.snapshot

    def _commit(
        self,
        tenant: str,
        snapshot: _Snapshot | None,
        *,
        added: Sequence[_Built] = (),
        kills: dict[str, np.ndarray] | None = None,
        removed: Iterable[str] = (),
    ) -> _Snapshot:
        """Publish a commit: `snapshot`'s segments less `removed`, with the slots in `kills` dead, plus `added`.
        The caller holds `_writing(tenant)`."""
        directory = self.path_for(tenant)
        generation = (snapshot.commit.generation if snapshot else 0) + 1
        kills = kills or {}
        removed = set(removed)
        entries: list[seg.SegmentEntry] = []
        published: list[_Segment | _Built] = []
        for segment in snapshot.segments if snapshot else ():
            if segment.name in removed:
                continue
            slots = kills.get(segment.name)
            if slots is not None and slots.size:
                live = segment.live_mask().copy()
                live[slots] = False
                entry = self._write_live(directory, segment.entry, live, generation)
                published.append(segment.with_live(entry, live))
            else:
                entry = segment.entry
                published.append(segment)
            entries.append(entry)
        for built in added:
            for temporary, final in built.staged.items():
                (directory / temporary).rename(directory / final)
            entry = built.entry
            if built.live is not None:
                entry = self._write_live(directory, entry, built.live, generation)
            entries.append(entry)
        commit = seg.Commit(
            generation=generation,
            segments=tuple(entries),
            header={
                "format": FORMAT_VERSION,
                "namespace": self.config.namespace,
                "tenant": tenant,
                "dim": self.config.dim,
                "storage": self.config.storage,
                "hnsw_m": self.config.hnsw_m,
            },
        )
        seg.write_commit(directory, commit)
        partition = self._partition(tenant)
        with partition.refresh:
            opened = {segment.name: segment for segment in published if isinstance(segment, _Segment)}
            segments = tuple(
                opened[entry.name] if entry.name in opened else self._open_segment(directory, entry, None)
                for entry in commit.segments
            )
            partition.snapshot = _Snapshot(file_identity(directory / seg.COMMIT_FILE), commit, segments)
        seg.remove_unreferenced(directory, commit)
        return partition.snapshot

    def _write_live(
        self, directory: Path, entry: seg.SegmentEntry, live: np.ndarray, generation: int
    ) -> seg.SegmentEntry:
        name = f"{entry.name}.live-{generation}.npy"
        seg.write_array(directory, name, np.packbits(live, bitorder="little"))
        return seg.SegmentEntry(entry.name, entry.slots, int(entry.slots - live.sum()), name, entry.kind)

    def _kills(self, snapshot: _Snapshot | None, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Per segment, the live slots of `labels`: what a replacement or a delete kills."""
        if snapshot is None or labels.size == 0:
            return {}
        labels = np.unique(labels)
        found = {segment.name: segment.slots_of(labels) for segment in snapshot.segments if segment.alive_count}
        return {name: slots for name, slots in found.items() if slots.size}

    # Building segments

    def _builder(self) -> _SegmentBuilder:
        return _SegmentBuilder(self.config)

    # Writes

    def upsert(self, *, tenant: str, items: Sequence[StoredVector]) -> int:
        return self.bulk_load(tenant=tenant, chunks=[items])

    def bulk_load(
        self,
        *,
        tenant: str,
        chunks: Iterable[Sequence[StoredVector]],
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream every chunk into one new segment (built outside the write lock: readers and other writers go on),
        then commit it, killing the older copies of its labels. Durable when it returns."""
        directory = self.path_for(tenant)
        directory.mkdir(parents=True, exist_ok=True)
        builder = self._builder()
        for chunk in chunks:
            latest = {item.label: item for item in chunk}  # the same label twice in one call: the last one wins
            if not latest:
                continue
            vectors = self.check_vectors(np.stack([item.vector for item in latest.values()]))
            columns = {
                key: [
                    seg.metadata_token(item.metadata[key]) if key in item.metadata else seg.MISSING
                    for item in latest.values()
                ]
                for key in self.config.filterable
            }
            builder.add(vectors, np.fromiter(latest.keys(), dtype=np.int64, count=len(latest)), columns)
            if on_progress:
                on_progress(len(latest))
        if builder.count == 0:
            return 0
        built = builder.write(directory)
        try:
            with self._writing(tenant) as snapshot:
                self._commit(tenant, snapshot, added=[built], kills=self._kills(snapshot, built.labels))
        except BaseException:
            built.discard(directory)
            raise
        written = builder.count - builder.duplicates
        self._merge_soon(tenant)
        return written

    def delete(self, *, tenant: str, labels: Sequence[int]) -> int:
        if not labels or not self._exists(tenant):
            return 0
        with self._writing(tenant) as snapshot:
            kills = self._kills(snapshot, np.asarray(list(labels), dtype=np.int64))
            removed = sum(int(slots.size) for slots in kills.values())
            if removed:
                self._commit(tenant, snapshot, kills=kills)
        if removed:
            self._merge_soon(tenant)
        return removed

    def _exists(self, tenant: str) -> bool:
        return (self.path_for(tenant) / seg.COMMIT_FILE).exists() or self._legacy_path(tenant).exists()

    def drop(self, *, tenant: str | None = None) -> None:
        if tenant is None:
            with self._guard:
                self._partitions.clear()
            shutil.rmtree(self.directory, ignore_errors=True)
            return
        if self.path_for(tenant).exists():
            with self._writing(tenant):
                shutil.rmtree(self.path_for(tenant), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self._legacy_path(tenant).unlink()
        with self._guard:
            self._partitions.pop(tenant, None)

    # Merges

    def _merge_soon(self, tenant: str) -> None:
        """Start a background merge when the policy wants one and none runs for this partition in this process."""
        if not self.background_merges or not self._merge_plan(self._partition(tenant).snapshot):
            return
        partition = self._partition(tenant)
        if not partition.merging.acquire(blocking=False):
            return

        def run() -> None:
            _yield_to_searches()
            try:
                while self.merge(tenant=tenant, blocking=False)[0]:
                    pass
            except Exception as error:  # noqa: BLE001 - a failed background merge leaves the commit as it was
                log_event(
                    logger,
                    "segment_merge_failed",
                    level=logging.WARNING,
                    namespace=self.config.namespace,
                    tenant=tenant,
                    error=str(error),
                )
            finally:
                partition.merging.release()

        threading.Thread(target=run, name=f"merge-{tenant}", daemon=True).start()

    def _merge_plan(self, snapshot: _Snapshot | None) -> list[str]:
        if snapshot is None:
            return []
        return seg.plan_merge(
            snapshot.commit.segments, floor=MERGE_FLOOR, factor=MERGE_FACTOR, max_dead_fraction=MAX_DEAD_FRACTION
        )

    def merge(
        self,
        *,
        tenant: str,
        choose: Callable[[_Snapshot], list[str]] | None = None,
        blocking: bool = True,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[int, int]:
        """Run one merge of the segments `choose` names (default: what the tiered policy picks). The new segment is
        built from their live slots outside the write lock; the commit that swaps it in carries over the deletes
        made meanwhile. Returns (segments merged, dead entries that left the files); (0, 0) when there was
        nothing to do, or another process is merging and `blocking` is False."""
        directory = self.path_for(tenant)
        if not (directory / seg.COMMIT_FILE).exists():
            return 0, 0
        with seg.flocked(directory / seg.MERGE_LOCK, blocking=blocking) as locked:
            if not locked:
                return 0, 0
            snapshot = self._snapshot(tenant)
            if snapshot is None:
                return 0, 0
            chosen = set((choose or self._merge_plan)(snapshot))
            sources = [segment for segment in snapshot.segments if segment.name in chosen]
            if not sources:
                return 0, 0
            builder = self._builder()
            for segment in sources:
                live = np.flatnonzero(segment.live_mask())
                for start in range(0, live.size, BUILD_BATCH):
                    slots = live[start : start + BUILD_BATCH]
                    builder.add(
                        np.ascontiguousarray(segment.vectors[slots], dtype=np.float32),
                        segment.labels[slots],
                        {key: segment.tokens(key, slots) for key in self.config.filterable},
                    )
                    if on_progress:
                        on_progress(int(slots.size))
            built = builder.write(directory) if builder.count else None
            try:
                with self._writing(tenant) as current:
                    now = current.by_name() if current else {}
                    if any(segment.name not in now for segment in sources):
                        raise _Moot  # another writer removed a source (a drop): nothing to swap
                    # Deletes committed while the merge ran: the same labels die in the merged segment.
                    late = [segment.labels[segment.live_mask() & ~now[segment.name].live_mask()] for segment in sources]
                    late_labels = np.unique(np.concatenate(late))
                    if built is not None and late_labels.size:
                        slots = seg.lookup(*_sorted(built.labels), late_labels)
                        built.kill(slots)
                    self._commit(tenant, current, added=[built] if built else [], removed=[s.name for s in sources])
            except _Moot:
                if built is not None:
                    built.discard(directory)
                return 0, 0
            except BaseException:
                if built is not None:
                    built.discard(directory)
                raise
        dead = sum(segment.entry.dead for segment in sources)
        log_event(
            logger,
            "segments_merged",
            namespace=self.config.namespace,
            tenant=tenant,
            merged=len(sources),
            live=builder.count - builder.duplicates,
            removed=dead,
        )
        return len(sources), dead

    def optimize(self, *, tenant: str) -> None:
        """One segment with no dead slots: the best read shape (after a bootstrap or a rebuild)."""

        def everything(snapshot: _Snapshot) -> list[str]:
            if len(snapshot.segments) > 1 or any(segment.entry.dead for segment in snapshot.segments):
                return [segment.name for segment in snapshot.segments]
            return []

        self.merge(tenant=tenant, choose=everything)

    def purge(self, *, tenant: str) -> int:
        """Rewrite every segment holding dead slots (deleted or replaced entries), at once; returns how many
        entries left the files."""
        _merged, dead = self.merge(
            tenant=tenant, choose=lambda snapshot: [s.name for s in snapshot.segments if s.entry.dead]
        )
        return dead

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
        if not alive.all():
            built.kill(np.flatnonzero(~alive))
        snapshot = self._commit(tenant, None, added=[built])
        path.unlink()
        log_event(
            logger,
            "faiss_partition_converted",
            namespace=self.config.namespace,
            tenant=tenant,
            vectors=int(alive.sum()),
        )
        return snapshot

    # Reads

    def count(self, *, tenant: str) -> int:
        snapshot = self._snapshot(tenant)
        return sum(segment.alive_count for segment in snapshot.segments) if snapshot else 0

    def labels(self, *, tenant: str) -> set[int]:
        snapshot = self._snapshot(tenant)
        if snapshot is None or not snapshot.segments:
            return set()
        return set(np.concatenate([segment.live_labels() for segment in snapshot.segments]).tolist())

    def segments(self, *, tenant: str) -> list[seg.SegmentEntry]:
        """The segments of the tenant's current commit (operators, tests)."""
        snapshot = self._snapshot(tenant)
        return list(snapshot.commit.segments) if snapshot else []

    def stats(self) -> list[StoreStats]:
        result = []
        for tenant in self.tenants():
            snapshot = self._snapshot(tenant)
            if snapshot is None:
                continue
            size = sum(path.stat().st_size for path in self.path_for(tenant).iterdir() if path.is_file())
            result.append(
                StoreStats(
                    tenant=tenant,
                    vectors=sum(segment.alive_count for segment in snapshot.segments),
                    tombstones=sum(segment.entry.dead for segment in snapshot.segments),
                    bytes_on_disk=size,
                )
            )
        return result

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
        scores: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        unfiltered = allowed is None and wanted is None
        if unfiltered:
            vectors, flat_labels = snapshot.flat_block()
            if flat_labels.size:
                flat_scores = vectors @ query[0]
                best = np.argpartition(-flat_scores, k - 1)[:k] if flat_scores.size > k else slice(None)
                scores.append(flat_scores[best])
                labels.append(flat_labels[best])
        for segment in snapshot.segments:
            if not segment.alive_count or (unfiltered and segment.entry.kind == "flat"):
                continue
            found = self._search_segment(segment, query, k, allowed, wanted)
            if found is not None:
                scores.append(found[0])
                labels.append(found[1])
        if not scores:
            return []
        all_scores, all_labels = np.concatenate(scores), np.concatenate(labels)
        top = np.argsort(-all_scores, kind="stable")[:k]
        return [SearchHit(int(all_labels[i]), float(all_scores[i])) for i in top]

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


def _yield_to_searches() -> None:
    """A background merge builds on one OpenMP thread (the count is per calling thread) at a lower priority
    (Linux nices threads one by one): searches of the same process keep a core and win the scheduler."""
    faiss.omp_set_num_threads(MERGE_THREADS)
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MERGE_NICENESS)


class _Moot(Exception):
    """A merge whose sources another writer removed."""


def _stage(directory: Path, index: Any, kind: str, labels: np.ndarray, vectors: np.ndarray | None) -> _Built:
    """Write a segment's files under temporary names: no commit names it yet, no cleanup takes it."""
    name = _new_name()
    prefix = seg.temporary_prefix()
    staged = {f"{prefix}{name}.faiss": f"{name}.faiss", f"{prefix}{name}.labels.npy": f"{name}.labels.npy"}
    if vectors is not None:
        staged[f"{prefix}{name}.vectors.npy"] = f"{name}.vectors.npy"
        seg.write_array(directory, f"{prefix}{name}.vectors.npy", vectors)

    def write(handle: IO[bytes]) -> None:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))  # type: ignore[attr-defined]  # streamed

    seg.write_file(directory, f"{prefix}{name}.faiss", write)
    seg.write_array(directory, f"{prefix}{name}.labels.npy", labels)
    return _Built(seg.SegmentEntry(name, int(labels.size), 0, None, kind), None, labels, staged)


def _new_name() -> str:
    return f"s{uuid.uuid4().hex[:16]}"


def _sorted(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sorter = np.argsort(labels, kind="stable")
    return labels[sorter], sorter


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

    def write(self, directory: Path) -> _Built:
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
        if np.unique(labels).size != labels.size:  # the same label in two chunks: the last one lives
            _, last = np.unique(labels[::-1], return_index=True)
            keep = np.zeros(labels.size, dtype=bool)
            keep[labels.size - 1 - last] = True
            self.duplicates = int(labels.size - keep.sum())
            built.kill(np.flatnonzero(~keep))
        return built
