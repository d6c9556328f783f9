"""FAISS HNSW store: one index file per (namespace, tenant), tombstones for deletes, compaction when they pile up.

Why per-tenant indexes: isolation holds by construction (tenant A's index has no vector of tenant B), a small
tenant gets exact answers however large k is, and a tenant's deletes never slow down another tenant's searches.
Why tombstones: HNSW cannot remove a vector in place. A replaced or deleted label's slot is marked dead and
filtered inside the search with an IDSelectorBitmap; when dead slots pass a fraction of the index, the partition is
rebuilt from its live vectors.

Files: `<FAISS_DATA_DIR>/<namespace>/<tenant>.faiss.npz` holds the serialized index, the label of every slot and the
live mask in one file, written to a temporary name, fsynced and renamed, so a reader or a crashed writer never sees
half of an update. Writers in different processes (web, Celery workers) serialise on an flock beside the file; a
reader notices a newer file by its inode and reloads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from django.conf import settings

from embeddings.stores.base import SearchHit, StoreConfig, StoredVector, StoreStats, VectorStore
from medkg.errors import BackendError, DimensionMismatch
from medkg.logging import log_event

logger = logging.getLogger("medkg.embeddings.stores")

FILE_SUFFIX = ".faiss.npz"
FORMAT_VERSION = 1
EXACT_SEARCH_MAX_CANDIDATES = 2048  # below this many live candidates a brute-force pass is exact and as fast
COMPACT_MIN_TOMBSTONES = 256
COMPACT_TOMBSTONE_FRACTION = 0.25
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def faiss_gpu_status() -> tuple[bool, str]:
    """Whether this faiss build can use a GPU here, and why not."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False, "faiss is the CPU build (install faiss-gpu from requirements-gpu.txt for GPU indexes)"
    count = faiss.get_num_gpus()
    if count == 0:
        return False, "faiss-gpu is installed but no CUDA device is visible"
    return True, f"{count} CUDA device(s)"


def _safe_component(name: str, what: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise BackendError(f"{what} {name!r} cannot name an index file.", details={what: name})
    return name


@dataclass
class _Partition:
    """The in-memory copy of one tenant's index file."""

    index: Any  # faiss.IndexHNSWFlat
    labels: np.ndarray  # int64 label per slot
    alive: np.ndarray  # bool per slot
    position_of: dict[int, int] = field(default_factory=dict)  # live label -> slot
    file_identity: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) of the file it was loaded from
    bitmap: np.ndarray | None = None  # packed live mask, rebuilt lazily after writes

    @property
    def tombstones(self) -> int:
        return int(self.labels.size - len(self.position_of))

    def live_bitmap(self) -> np.ndarray:
        if self.bitmap is None:
            self.bitmap = np.packbits(self.alive, bitorder="little")
        return self.bitmap


class FaissStore(VectorStore):
    def __init__(self, config: StoreConfig, data_dir: Path | None = None) -> None:
        super().__init__(config)
        self.directory = Path(data_dir or settings.FAISS_DATA_DIR) / _safe_component(config.namespace, "namespace")
        self._partitions: dict[str, _Partition] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    # Files and locks

    def path_for(self, tenant: str) -> Path:
        return self.directory / f"{_safe_component(tenant, 'tenant')}{FILE_SUFFIX}"

    def _lock_for(self, tenant: str) -> threading.RLock:
        with self._guard:
            return self._locks.setdefault(tenant, threading.RLock())

    @contextlib.contextmanager
    def _writing(self, tenant: str) -> Iterator[_Partition]:
        """Exclusive write access to the tenant's partition across threads and processes, fresh from disk."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock_for(tenant), open(self.path_for(tenant).with_suffix(".lock"), "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield self._current(tenant, create=True)  # type: ignore[misc]
            except BaseException:
                self._partitions.pop(tenant, None)  # a half-applied change must not outlive the failed write
                raise
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _identity(self, path: Path) -> tuple[int, int, int] | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _current(self, tenant: str, *, create: bool) -> _Partition | None:
        """The partition as on disk now: cached when unchanged, reloaded when another process replaced the file."""
        path = self.path_for(tenant)
        identity = self._identity(path)
        partition = self._partitions.get(tenant)
        if partition is not None and partition.file_identity == identity:
            return partition
        with self._lock_for(tenant):
            partition = self._partitions.get(tenant)
            if partition is not None and partition.file_identity == identity:
                return partition
            partition = self._load(path) if identity is not None else (self._empty() if create else None)
            if partition is not None:
                self._partitions[tenant] = partition
            else:
                self._partitions.pop(tenant, None)
            return partition

    def _empty(self) -> _Partition:
        index = faiss.IndexHNSWFlat(self.config.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.ef_construction
        index.hnsw.efSearch = self.config.ef_search
        return _Partition(index=index, labels=np.empty(0, dtype=np.int64), alive=np.empty(0, dtype=bool))

    def _load(self, path: Path) -> _Partition:
        identity = self._identity(path)
        try:
            with np.load(path, allow_pickle=False) as stored:
                header = json.loads(bytes(stored["header"]).decode())
                index = faiss.deserialize_index(np.ascontiguousarray(stored["index"]))
                labels = stored["labels"].astype(np.int64)
                alive = stored["alive"].astype(bool)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise BackendError(
                f"FAISS index file {path} cannot be read ({error}); rebuild it with "
                f"`manage.py rebuild_index --namespace {self.config.namespace}`.",
                details={"namespace": self.config.namespace, "file": str(path)},
            ) from error
        if index.d != self.config.dim or header.get("dim") != self.config.dim:
            raise DimensionMismatch(
                f"FAISS index {path} holds {index.d}-dimensional vectors but namespace {self.config.namespace} "
                f"is {self.config.dim}-dimensional; rebuild it.",
                details={"namespace": self.config.namespace, "expected": self.config.dim, "got": int(index.d)},
            )
        index.hnsw.efSearch = self.config.ef_search  # type: ignore[attr-defined]
        position_of = {int(label): slot for slot, label in enumerate(labels.tolist()) if alive[slot]}
        return _Partition(index=index, labels=labels, alive=alive, position_of=position_of, file_identity=identity)

    def _persist(self, tenant: str, partition: _Partition) -> None:
        path = self.path_for(tenant)
        header = {
            "format": FORMAT_VERSION,
            "namespace": self.config.namespace,
            "tenant": tenant,
            "dim": self.config.dim,
            "hnsw_m": self.config.hnsw_m,
            "ef_construction": self.config.ef_construction,
        }
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{tenant}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(
                    handle,
                    header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                    index=faiss.serialize_index(partition.index),
                    labels=partition.labels,
                    alive=partition.alive,
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        partition.file_identity = self._identity(path)

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
        """Add every chunk under one lock and write the file once at the end."""
        written = 0
        with self._writing(tenant) as partition:
            for chunk in chunks:
                count = self._add(partition, chunk)
                written += count
                if on_progress:
                    on_progress(count)
            if written:
                self._compact_if_needed(tenant, partition)
                self._persist(tenant, partition)
        return written

    def _add(self, partition: _Partition, items: Sequence[StoredVector]) -> int:
        latest = {item.label: item for item in items}  # the same label twice in one call: the last one wins
        if not latest:
            return 0
        vectors = self.check_vectors(np.stack([item.vector for item in latest.values()]))
        labels = np.fromiter(latest.keys(), dtype=np.int64, count=len(latest))
        for label in labels.tolist():
            self._kill(partition, label)
        first_slot = partition.index.ntotal
        partition.index.add(vectors)
        partition.labels = np.concatenate([partition.labels, labels])
        partition.alive = np.concatenate([partition.alive, np.ones(labels.size, dtype=bool)])
        partition.position_of.update({label: first_slot + i for i, label in enumerate(labels.tolist())})
        partition.bitmap = None
        return int(labels.size)

    def delete(self, *, tenant: str, labels: Sequence[int]) -> int:
        if not labels or self._identity(self.path_for(tenant)) is None:
            return 0
        with self._writing(tenant) as partition:
            removed = sum(self._kill(partition, int(label)) for label in labels)
            if removed:
                partition.bitmap = None
                self._compact_if_needed(tenant, partition)
                self._persist(tenant, partition)
        return removed

    def _kill(self, partition: _Partition, label: int) -> bool:
        slot = partition.position_of.pop(label, None)
        if slot is None:
            return False
        partition.alive[slot] = False
        return True

    def _compact_if_needed(self, tenant: str, partition: _Partition) -> None:
        dead = partition.tombstones
        if dead < COMPACT_MIN_TOMBSTONES or dead < COMPACT_TOMBSTONE_FRACTION * partition.labels.size:
            return
        slots = np.flatnonzero(partition.alive)
        vectors = partition.index.reconstruct_batch(slots) if slots.size else np.empty((0, self.config.dim))
        fresh = self._empty()
        if slots.size:
            fresh.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        partition.index = fresh.index
        partition.labels = partition.labels[slots]
        partition.alive = np.ones(slots.size, dtype=bool)
        partition.position_of = {int(label): slot for slot, label in enumerate(partition.labels.tolist())}
        partition.bitmap = None
        log_event(logger, "faiss_compacted", namespace=self.config.namespace, tenant=tenant, removed=dead)

    def drop(self, *, tenant: str | None = None) -> None:
        if tenant is None:
            with self._guard:
                self._partitions.clear()
            shutil.rmtree(self.directory, ignore_errors=True)
            return
        with self._writing(tenant):
            with contextlib.suppress(FileNotFoundError):
                self.path_for(tenant).unlink()
            self._partitions.pop(tenant, None)

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
        with self._lock_for(tenant):  # an HNSW graph must not be searched while a thread of this process adds to it
            return self._search_locked(tenant, query, k, allowed_labels)

    def _search_locked(
        self, tenant: str, query: np.ndarray, k: int, allowed_labels: Sequence[int] | None
    ) -> list[SearchHit]:
        partition = self._current(tenant, create=False)
        if partition is None or not partition.position_of or k <= 0:
            return []
        if allowed_labels is not None:
            slots = [partition.position_of[label] for label in allowed_labels if label in partition.position_of]
            candidates = np.asarray(slots, dtype=np.int64)
        elif len(partition.position_of) <= EXACT_SEARCH_MAX_CANDIDATES:
            candidates = np.flatnonzero(partition.alive)
        else:
            return self._hnsw_search(
                partition, query, k, bitmap=partition.live_bitmap() if partition.tombstones else None
            )
        if candidates.size <= EXACT_SEARCH_MAX_CANDIDATES:
            return self._exact_search(partition, query, k, candidates)
        mask = np.zeros(partition.labels.size, dtype=bool)
        mask[candidates] = True
        return self._hnsw_search(partition, query, k, bitmap=np.packbits(mask, bitorder="little"))

    def _exact_search(self, partition: _Partition, query: np.ndarray, k: int, slots: np.ndarray) -> list[SearchHit]:
        if slots.size == 0:
            return []
        scores = partition.index.reconstruct_batch(slots) @ query[0]
        top = np.argsort(-scores, kind="stable")[:k]
        return [SearchHit(int(partition.labels[slots[i]]), float(scores[i])) for i in top]

    def _hnsw_search(
        self, partition: _Partition, query: np.ndarray, k: int, bitmap: np.ndarray | None
    ) -> list[SearchHit]:
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        params.efSearch = max(self.config.ef_search, k)
        if bitmap is not None:
            params.sel = faiss.IDSelectorBitmap(partition.labels.size, faiss.swig_ptr(bitmap))
        scores, slots = partition.index.search(query, k, params=params)
        return [
            SearchHit(int(partition.labels[slot]), float(score))
            for score, slot in zip(scores[0].tolist(), slots[0].tolist(), strict=True)
            if slot >= 0
        ]

    def count(self, *, tenant: str) -> int:
        partition = self._current(tenant, create=False)
        return len(partition.position_of) if partition else 0

    def labels(self, *, tenant: str) -> set[int]:
        partition = self._current(tenant, create=False)
        return set(partition.position_of) if partition else set()

    def tenants(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(path.name.removesuffix(FILE_SUFFIX) for path in self.directory.glob(f"*{FILE_SUFFIX}"))

    def stats(self) -> list[StoreStats]:
        result = []
        for tenant in self.tenants():
            partition = self._current(tenant, create=False)
            if partition is None:
                continue
            size = self._identity(self.path_for(tenant))
            result.append(
                StoreStats(
                    tenant=tenant,
                    vectors=len(partition.position_of),
                    tombstones=partition.tombstones,
                    bytes_on_disk=size[1] if size else 0,
                )
            )
        return result

    def readiness(self) -> tuple[bool, str]:
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return False, f"FAISS_DATA_DIR is not writable: {error}"
        if not os.access(self.directory.parent, os.W_OK):
            return False, f"FAISS_DATA_DIR {self.directory.parent} is not writable"
        gpu, reason = faiss_gpu_status()
        return True, f"faiss {faiss.__version__}, {'GPU' if gpu else 'CPU'} ({reason})"
