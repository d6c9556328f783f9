"""The embedded sparse store: per (namespace, tenant) a folder of immutable segments of term-major postings (scipy).

A document is a row of term weights (SPLADE expansions); the score of a document is the dot product of its weights
with the query's. A search reads only the postings (columns) of the query's terms in each segment:
`postings[:, query terms] @ weights` is the classic term-at-a-time impact scoring, done by scipy in C; the top k of
each segment are merged (equal scores: the lower label first).

Same contract and machinery as the FAISS store (embeddings.stores.segments): tenant isolation by construction (one
folder per tenant); an ingestion step writes one new segment of its own size, with its own vocabulary, plus a live
bitmap for each older segment it replaces or deletes documents in; searches run on one commit's snapshot without a
writer's lock; tiered background merges rewrite small segments into larger ones and drop dead documents (and the
terms only they had); `purge_deleted` does that at once.

Files: `<FAISS_DATA_DIR>/<namespace>/<tenant>.impact/`: commit.json, `<segment>.labels.npy`, `<segment>.rows.npz`
(the CSR rows: data, indices, indptr, and the segment's terms), `<segment>.live-<generation>.npy` (packed live bits).
A partition of one `<tenant>.impact.npz` file (before segments) is converted on first open, its dead slots kept dead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.sparse as sp
from django.conf import settings

from core.errors import BackendError
from embeddings.stores import segments as seg
from embeddings.stores.base import SearchHit, SparseItem, SparseStore, SparseStoreConfig
from embeddings.stores.files import data_dir_writable

DIRECTORY_SUFFIX = ".impact"
LEGACY_SUFFIX = ".impact.npz"  # one whole-partition file per tenant, before segments; converted on first open
ROWS_SUFFIX = ".rows.npz"
FORMAT_VERSION = 2
SEGMENT_KIND = "csr"
MERGE_FACTOR = 10  # segments of one size class merged into one
MERGE_FLOOR = 256  # the smallest size class: an ingestion step
MAX_DEAD_FRACTION = 0.3  # a segment with more dead slots than this is rewritten on its own


class _Segment(seg.Segment):
    """One opened segment: its documents' rows over its own vocabulary, and their term-major postings."""

    def __init__(
        self,
        entry: seg.SegmentEntry,
        labels: np.ndarray,
        rows: sp.csr_matrix,
        vocabulary: np.ndarray,
        live: np.ndarray | None,
    ) -> None:
        super().__init__(entry, labels, live)
        self.rows = rows  # (slots, terms) float32: what a merge copies
        self.vocabulary = vocabulary  # column -> term
        self.column_of = {term: column for column, term in enumerate(vocabulary.tolist())}
        self.postings = rows.tocsc()  # built once: the segment never changes, a new live mask shares it

    def scores(self, query_terms: dict[str, float]) -> np.ndarray | None:
        """The dot product of every slot with the query (dead ones too); None when no query term is here."""
        known = [(self.column_of[term], weight) for term, weight in query_terms.items() if term in self.column_of]
        if not known:
            return None
        columns = np.fromiter((column for column, _ in known), dtype=np.int64, count=len(known))
        weights = np.fromiter((weight for _, weight in known), dtype=np.float32, count=len(known))
        return np.asarray(self.postings[:, columns] @ weights).ravel()

    def top(
        self, query_terms: dict[str, float], k: int, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(scores, labels) of the live slots that can be among the k best: every one scoring at least the k-th,
        so the ties the merge across segments orders by label are all there."""
        scores = self.scores(query_terms)
        if scores is None:
            return None
        slots = self.slots_of(allowed) if allowed is not None else np.flatnonzero(self.live_mask())
        slots = slots[scores[slots] > 0]
        if slots.size > k:
            kth = np.partition(scores[slots], slots.size - k)[slots.size - k]
            slots = slots[scores[slots] >= kth]
        return scores[slots], self.labels[slots]


class _SegmentBuilder:
    """Documents streamed into one new segment, over a vocabulary of only the terms they have."""

    def __init__(self) -> None:
        self.count = 0
        self.duplicates = 0
        self._column_of: dict[str, int] = {}  # insertion order is column order
        self._data: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def _columns(self, terms: Iterable[str]) -> np.ndarray:
        column_of = self._column_of
        return np.fromiter((column_of.setdefault(term, len(column_of)) for term in terms), dtype=np.int32)

    def _append(self, data: np.ndarray, indices: np.ndarray, lengths: np.ndarray, labels: np.ndarray) -> None:
        self._data.append(data.astype(np.float32, copy=False))
        self._indices.append(indices.astype(np.int32, copy=False))
        self._lengths.append(lengths.astype(np.int64, copy=False))
        self._labels.append(labels.astype(np.int64, copy=False))
        self.count += int(labels.size)

    def add_items(self, items: Sequence[SparseItem]) -> None:
        data = np.fromiter((weight for item in items for weight in item.terms.values()), dtype=np.float32)
        indices = self._columns(term for item in items for term in item.terms)
        lengths = np.fromiter((len(item.terms) for item in items), dtype=np.int64, count=len(items))
        labels = np.fromiter((item.label for item in items), dtype=np.int64, count=len(items))
        self._append(data, indices, lengths, labels)

    def add_rows(self, rows: sp.csr_matrix, vocabulary: np.ndarray, labels: np.ndarray) -> None:
        """Rows of another segment: only the terms they use join the vocabulary (a dead document's leave)."""
        used = np.unique(rows.indices)
        remap = np.zeros(rows.shape[1], dtype=np.int32)
        remap[used] = self._columns(vocabulary[used].tolist())
        self._append(rows.data, remap[rows.indices], np.diff(rows.indptr), labels)

    def write(self, directory: Path) -> seg.Built:
        """Write the segment's files (named by no commit yet) and return what the commit needs."""
        lengths = np.concatenate(self._lengths)
        indptr = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)])
        vocabulary = np.asarray(list(self._column_of), dtype=np.str_)
        labels = np.concatenate(self._labels)
        built = _stage(directory, np.concatenate(self._data), np.concatenate(self._indices), indptr, vocabulary, labels)
        self.duplicates = built.kill_replaced_in_itself()
        return built


def _stage(
    directory: Path,
    data: np.ndarray,
    indices: np.ndarray,
    indptr: np.ndarray,
    vocabulary: np.ndarray,
    labels: np.ndarray,
) -> seg.Built:
    arrays = {"data": data, "indices": indices, "indptr": indptr, "terms": vocabulary}

    def write(handle: IO[bytes]) -> None:
        np.savez(handle, **arrays)  # type: ignore[arg-type]

    return seg.stage(directory, SEGMENT_KIND, labels, {ROWS_SUFFIX: write})


class ImpactStore(seg.SegmentedStore[_Segment, _SegmentBuilder], SparseStore):
    directory_suffix = DIRECTORY_SUFFIX
    legacy_suffix = LEGACY_SUFFIX
    segment_suffixes = (ROWS_SUFFIX,)
    index_title = "Impact index"

    def __init__(self, config: SparseStoreConfig, data_dir: Path | None = None) -> None:
        SparseStore.__init__(self, config)
        seg.SegmentedStore.__init__(self, Path(data_dir or settings.FAISS_DATA_DIR), config.namespace)

    # Segments

    def _check_header(self, tenant: str, commit: seg.Commit) -> None:
        if commit.header.get("format") != FORMAT_VERSION:
            raise BackendError(
                f"Impact index {self.path_for(tenant)} has format {commit.header.get('format')}, expected "
                f"{FORMAT_VERSION}; rebuild it with `manage.py rebuild_index --namespace {self.config.namespace}`.",
                details={"namespace": self.config.namespace, "file": str(self.path_for(tenant))},
            )

    def _header(self, tenant: str) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, "namespace": self.config.namespace, "tenant": tenant}

    def _merge_policy(self) -> tuple[int, int, float]:
        return MERGE_FLOOR, MERGE_FACTOR, MAX_DEAD_FRACTION

    def _load_segment(self, directory: Path, entry: seg.SegmentEntry, live: np.ndarray | None) -> _Segment:
        labels = np.load(directory / f"{entry.name}{seg.LABELS_SUFFIX}", allow_pickle=False)
        with np.load(directory / f"{entry.name}{ROWS_SUFFIX}", allow_pickle=False) as stored:
            data, indices, indptr, vocabulary = stored["data"], stored["indices"], stored["indptr"], stored["terms"]
        if labels.size != entry.slots or indptr.size != entry.slots + 1:
            raise ValueError(f"segment {entry.name} does not match its commit entry")
        rows = sp.csr_matrix((data, indices, indptr), shape=(entry.slots, vocabulary.size), dtype=np.float32)
        return _Segment(entry, labels.astype(np.int64, copy=False), rows, vocabulary, live)

    def _builder(self) -> _SegmentBuilder:
        return _SegmentBuilder()

    def _add_items(self, builder: _SegmentBuilder, items: list[SparseItem]) -> None:
        for item in items:
            self.check_terms(item.terms)
        builder.add_items(items)

    def _feed(self, builder: _SegmentBuilder, segment: _Segment, slots: np.ndarray) -> None:
        builder.add_rows(segment.rows[slots], segment.vocabulary, segment.labels[slots])

    def _convert_legacy(self, tenant: str) -> seg.Snapshot[_Segment]:
        """A partition written before segments (one `.impact.npz` per tenant) becomes one segment."""
        path = self._legacy_path(tenant)
        try:
            with np.load(path, allow_pickle=False) as stored:
                data = stored["data"].astype(np.float32)
                indices = stored["indices"].astype(np.int32)
                indptr = stored["indptr"].astype(np.int64)
                vocabulary = stored["vocabulary"].astype(np.str_)
                labels = stored["labels"].astype(np.int64)
                alive = stored["alive"].astype(bool)
        except (OSError, ValueError, KeyError) as error:
            raise self._unreadable(tenant, error) from error
        built = _stage(self.path_for(tenant), data, indices, indptr, vocabulary, labels)
        snapshot = self._commit_converted(tenant, built, alive, event="impact_partition_converted")
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(".lock").unlink()  # the old layout's flock file
        return snapshot

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
        snapshot = self._snapshot(tenant)
        if snapshot is None or k <= 0:
            return []
        allowed = None if allowed_labels is None else np.unique(np.asarray(list(allowed_labels), dtype=np.int64))
        return seg.best_hits(
            snapshot.segments, lambda segment: segment.top(query_terms, k, allowed), k, ties_by_label=True
        )

    def readiness(self) -> tuple[bool, str]:
        writable, reason = data_dir_writable(self.directory.parent)
        return (True, "embedded impact index (scipy)") if writable else (False, reason)
