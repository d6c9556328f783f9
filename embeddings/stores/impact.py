"""The embedded sparse store: an impact index per (namespace, tenant), term-major postings in scipy CSC.

A document is a row of term weights (SPLADE expansions); the score of a document is the dot product of its weights
with the query's. The search reads only the postings (columns) of the query's terms: `index[:, query terms] @ weights`
is the classic term-at-a-time impact scoring, done by scipy in C.

Same contract as the FAISS store: tenant isolation by construction (one file per tenant), tombstones for replaced
and deleted documents with compaction past 25 %, and one atomic file per partition
(`<FAISS_DATA_DIR>/<namespace>/<tenant>.impact.npz`: weights, postings, the term vocabulary, labels and live mask),
shared with the FAISS store's file handling (embeddings.stores.files).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from django.conf import settings

from core.errors import BackendError
from embeddings.stores.base import SearchHit, SparseItem, SparseStore, SparseStoreConfig
from embeddings.stores.files import (
    FileIdentity,
    PartitionedFileStore,
    PartitionFiles,
    file_identity,
    read_header,
    tombstone,
)

logger = logging.getLogger("medkg.embeddings.stores")

FILE_SUFFIX = ".impact.npz"
FORMAT_VERSION = 1


@dataclass
class _Partition:
    """One tenant's impact index in memory: doc-major rows for writes, term-major postings built lazily for reads."""

    rows: sp.csr_matrix  # (slots, terms) float32
    labels: np.ndarray  # int64 label per slot
    alive: np.ndarray  # bool per slot
    vocabulary: list[str]  # column -> term
    column_of: dict[str, int]  # term -> column
    position_of: dict[int, int] = field(default_factory=dict)  # live label -> slot
    file_identity: FileIdentity | None = None
    postings: sp.csc_matrix | None = None  # term-major copy of `rows`, rebuilt after a write

    @property
    def tombstones(self) -> int:
        return int(self.labels.size - len(self.position_of))

    def term_major(self) -> sp.csc_matrix:
        if self.postings is None:
            self.postings = self.rows.tocsc()
        return self.postings


class ImpactStore(PartitionedFileStore, SparseStore):
    def __init__(self, config: SparseStoreConfig, data_dir: Path | None = None) -> None:
        super().__init__(config)
        self.files: PartitionFiles[_Partition] = PartitionFiles(
            data_dir=Path(data_dir or settings.FAISS_DATA_DIR),
            namespace=config.namespace,
            suffix=FILE_SUFFIX,
            load=self._load,
            empty=self._empty,
        )

    # Files

    @staticmethod
    def _empty() -> _Partition:
        return _Partition(
            rows=sp.csr_matrix((0, 0), dtype=np.float32),
            labels=np.empty(0, dtype=np.int64),
            alive=np.empty(0, dtype=bool),
            vocabulary=[],
            column_of={},
        )

    def _load(self, path: Path) -> _Partition:
        identity = file_identity(path)
        try:
            with np.load(path, allow_pickle=False) as stored:
                header = read_header(stored)
                vocabulary = [str(term) for term in stored["vocabulary"].tolist()]
                rows = sp.csr_matrix(
                    (stored["data"], stored["indices"], stored["indptr"]),
                    shape=(int(stored["labels"].size), len(vocabulary)),
                    dtype=np.float32,
                )
                labels = stored["labels"].astype(np.int64)
                alive = stored["alive"].astype(bool)
        except (OSError, ValueError, KeyError) as error:
            raise BackendError(
                f"Impact index file {path} cannot be read ({error}); rebuild it with "
                f"`manage.py rebuild_index --namespace {self.config.namespace}`.",
                details={"namespace": self.config.namespace, "file": str(path)},
            ) from error
        if header.get("format") != FORMAT_VERSION:
            raise BackendError(
                f"Impact index file {path} has format {header.get('format')}, expected {FORMAT_VERSION}."
            )
        return _Partition(
            rows=rows,
            labels=labels,
            alive=alive,
            vocabulary=vocabulary,
            column_of={term: column for column, term in enumerate(vocabulary)},
            position_of={int(label): slot for slot, label in enumerate(labels.tolist()) if alive[slot]},
            file_identity=identity,
        )

    def _persist(self, tenant: str, partition: _Partition) -> None:
        rows = partition.rows
        header = {"format": FORMAT_VERSION, "namespace": self.config.namespace, "tenant": tenant}
        arrays = {
            "data": rows.data.astype(np.float32),
            "indices": rows.indices.astype(np.int32),
            "indptr": rows.indptr.astype(np.int64),
            "labels": partition.labels,
            "alive": partition.alive,
            "vocabulary": np.asarray(partition.vocabulary, dtype=np.str_),
        }
        self.files.persist(tenant, partition, header, arrays)

    # Writes

    def upsert(self, *, tenant: str, items: Sequence[SparseItem]) -> int:
        latest = {item.label: item for item in items}  # the same label twice in one call: the last one wins
        if not latest:
            return 0
        for item in latest.values():
            self.check_terms(item.terms)
        with self.files.writing(tenant) as partition:
            for label in latest:
                tombstone(partition, label)
            self._append(partition, list(latest.values()))
            self._compact_if_needed(tenant, partition)
            self._persist(tenant, partition)
        return len(latest)

    def _append(self, partition: _Partition, items: list[SparseItem]) -> None:
        columns: list[int] = []
        weights: list[float] = []
        indptr = [0]
        for item in items:
            for term, weight in item.terms.items():
                column = partition.column_of.get(term)
                if column is None:
                    column = partition.column_of[term] = len(partition.vocabulary)
                    partition.vocabulary.append(term)
                columns.append(column)
                weights.append(weight)
            indptr.append(len(columns))
        width = len(partition.vocabulary)
        added = sp.csr_matrix(
            (np.asarray(weights, dtype=np.float32), np.asarray(columns, dtype=np.int32), np.asarray(indptr)),
            shape=(len(items), width),
        )
        existing = partition.rows
        if existing.shape[1] != width:
            existing = sp.csr_matrix(
                (existing.data, existing.indices, existing.indptr), shape=(existing.shape[0], width)
            )
        first_slot = existing.shape[0]
        partition.rows = sp.vstack([existing, added], format="csr", dtype=np.float32)
        labels = np.fromiter((item.label for item in items), dtype=np.int64, count=len(items))
        partition.labels = np.concatenate([partition.labels, labels])
        partition.alive = np.concatenate([partition.alive, np.ones(len(items), dtype=bool)])
        partition.position_of.update({int(label): first_slot + i for i, label in enumerate(labels.tolist())})
        partition.postings = None

    def _forget_derived(self, partition: _Partition) -> None:
        partition.postings = None

    def _compact_to(self, partition: _Partition, slots: np.ndarray) -> None:
        rows = partition.rows[slots]
        used = np.unique(rows.indices)  # terms only dead documents had leave the vocabulary too
        remap = np.full(len(partition.vocabulary), -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        partition.rows = sp.csr_matrix(
            (rows.data, remap[rows.indices].astype(np.int32), rows.indptr), shape=(slots.size, used.size)
        )
        partition.vocabulary = [partition.vocabulary[column] for column in used.tolist()]
        partition.column_of = {term: column for column, term in enumerate(partition.vocabulary)}

    # Reads

    def search(
        self,
        *,
        tenant: str,
        query_terms: dict[str, float],
        query_text: str,
        k: int,
        allowed_labels: Sequence[int] | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        self.check_terms(query_terms)
        with self.files.lock_for(tenant):  # postings are rebuilt lazily: one thread at a time per partition
            partition = self.files.current(tenant, create=False)
            if partition is None or not partition.position_of or k <= 0:
                return []
            known = [
                (partition.column_of[term], weight)
                for term, weight in query_terms.items()
                if term in partition.column_of
            ]
            if not known:
                return []
            columns = np.fromiter((column for column, _ in known), dtype=np.int64, count=len(known))
            weights = np.fromiter((weight for _, weight in known), dtype=np.float32, count=len(known))
            scores = np.asarray(partition.term_major()[:, columns] @ weights).ravel()
            if allowed_labels is not None:
                slots = np.fromiter(
                    (partition.position_of[label] for label in allowed_labels if label in partition.position_of),
                    dtype=np.int64,
                )
            else:
                slots = np.flatnonzero(partition.alive & (scores > 0))
            slots = slots[scores[slots] > 0]
            if slots.size > k:
                slots = slots[np.argpartition(-scores[slots], k - 1)[:k]]
            order = slots[np.lexsort((partition.labels[slots], -scores[slots]))]  # ties: the lower label first
            return [SearchHit(int(partition.labels[slot]), float(scores[slot])) for slot in order]

    def readiness(self) -> tuple[bool, str]:
        writable, reason = self.files.writable()
        return (True, "embedded impact index (scipy)") if writable else (False, reason)
