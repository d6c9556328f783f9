"""FAISS HNSW store: one index file per (namespace, tenant), tombstones for deletes, compaction when they pile up.

Why per-tenant indexes: isolation holds by construction (tenant A's index has no vector of tenant B), a small
tenant gets exact answers however large k is, and a tenant's deletes never slow down another tenant's searches.
Why tombstones: HNSW cannot remove a vector in place. A replaced or deleted label's slot is marked dead and
filtered inside the search with an IDSelectorBitmap; when dead slots pass a fraction of the index, the partition is
rebuilt from its live vectors.

Files: `<FAISS_DATA_DIR>/<namespace>/<tenant>.faiss.npz` holds the serialized index, the label of every slot and the
live mask in one file, written atomically (embeddings.stores.files: temporary file, fsync, rename; an flock between
writer processes; readers reload a replaced file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from django.conf import settings

from core.errors import BackendError, DimensionMismatch
from embeddings.stores.base import SearchHit, StoreConfig, StoredVector, VectorStore
from embeddings.stores.files import (
    FileIdentity,
    PartitionedFileStore,
    PartitionFiles,
    file_identity,
    read_header,
    tombstone,
)

logger = logging.getLogger("medkg.embeddings.stores")

FILE_SUFFIX = ".faiss.npz"
FORMAT_VERSION = 1
EXACT_SEARCH_MAX_CANDIDATES = 2048  # below this many live candidates a brute-force pass is exact and as fast


def faiss_gpu_status() -> tuple[bool, str]:
    """Whether this faiss build can use a GPU here, and why not."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False, "faiss is the CPU build (install faiss-gpu from requirements-gpu.txt for GPU indexes)"
    count = faiss.get_num_gpus()
    if count == 0:
        return False, "faiss-gpu is installed but no CUDA device is visible"
    return True, f"{count} CUDA device(s)"


@dataclass
class _Partition:
    """The in-memory copy of one tenant's index file."""

    index: Any  # faiss.IndexHNSWFlat
    labels: np.ndarray  # int64 label per slot
    alive: np.ndarray  # bool per slot
    position_of: dict[int, int] = field(default_factory=dict)  # live label -> slot
    file_identity: FileIdentity | None = None  # of the file it was loaded from
    bitmap: np.ndarray | None = None  # packed live mask, rebuilt lazily after writes

    @property
    def tombstones(self) -> int:
        return int(self.labels.size - len(self.position_of))

    def live_bitmap(self) -> np.ndarray:
        if self.bitmap is None:
            self.bitmap = np.packbits(self.alive, bitorder="little")
        return self.bitmap


class FaissStore(PartitionedFileStore, VectorStore):
    def __init__(self, config: StoreConfig, data_dir: Path | None = None) -> None:
        super().__init__(config)
        self.files: PartitionFiles[_Partition] = PartitionFiles(
            data_dir=Path(data_dir or settings.FAISS_DATA_DIR),
            namespace=config.namespace,
            suffix=FILE_SUFFIX,
            load=self._load,
            empty=self._empty,
        )
        self.directory = self.files.directory

    def _empty(self) -> _Partition:
        index = faiss.IndexHNSWFlat(self.config.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.ef_construction
        index.hnsw.efSearch = self.config.ef_search
        return _Partition(index=index, labels=np.empty(0, dtype=np.int64), alive=np.empty(0, dtype=bool))

    def _load(self, path: Path) -> _Partition:
        identity = file_identity(path)
        try:
            with np.load(path, allow_pickle=False) as stored:
                header = read_header(stored)
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
        header = {
            "format": FORMAT_VERSION,
            "namespace": self.config.namespace,
            "tenant": tenant,
            "dim": self.config.dim,
            "hnsw_m": self.config.hnsw_m,
            "ef_construction": self.config.ef_construction,
        }
        arrays = {
            "index": faiss.serialize_index(partition.index),
            "labels": partition.labels,
            "alive": partition.alive,
        }
        self.files.persist(tenant, partition, header, arrays)

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
        with self.files.writing(tenant) as partition:
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
            tombstone(partition, label)
        first_slot = partition.index.ntotal
        partition.index.add(vectors)
        partition.labels = np.concatenate([partition.labels, labels])
        partition.alive = np.concatenate([partition.alive, np.ones(labels.size, dtype=bool)])
        partition.position_of.update({label: first_slot + i for i, label in enumerate(labels.tolist())})
        partition.bitmap = None
        return int(labels.size)

    def _forget_derived(self, partition: _Partition) -> None:
        partition.bitmap = None

    def _compact_to(self, partition: _Partition, slots: np.ndarray) -> None:
        vectors = partition.index.reconstruct_batch(slots) if slots.size else np.empty((0, self.config.dim))
        fresh = self._empty()
        if slots.size:
            fresh.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        partition.index = fresh.index

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
        # An HNSW graph must not be searched while a thread of this process adds to it.
        with self.files.lock_for(tenant):
            return self._search_locked(tenant, query, k, allowed_labels)

    def _search_locked(
        self, tenant: str, query: np.ndarray, k: int, allowed_labels: Sequence[int] | None
    ) -> list[SearchHit]:
        partition = self.files.current(tenant, create=False)
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

    def readiness(self) -> tuple[bool, str]:
        writable, reason = self.files.writable()
        if not writable:
            return False, reason
        gpu, reason = faiss_gpu_status()
        return True, f"faiss {faiss.__version__}, {'GPU' if gpu else 'CPU'} ({reason})"
