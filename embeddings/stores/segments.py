"""Segmented partitions: immutable segment files, per-segment live bitmaps and a commit point that names them.

The shape is Lucene's. A write adds a new segment of its own size and, where it replaces or deletes entries of
older segments, a new live bitmap for each of them (a bit per slot: 125 KB per million entries); then it renames a
small commit point into place. Nothing already written is rewritten, so a step costs its own size whatever the
partition holds. Readers open the commit point, map the segments it names, and keep what they already had:
picking up a commit opens only the new files. Merges rebuild a few segments into one in the background and commit
the result the same way. SegmentedStore is that orchestration for any kind of segment; a store (FAISS, impact)
says how to write, open, merge-feed and search one of its segments.

Crash safety: every file is written under a temporary name, fsynced and renamed; the commit point is renamed last
and the directory fsynced. A crash before that rename leaves only files no commit names, removed by the next
writer. The database holds every accepted vector (the write-ahead log), so an index is a materialized view of it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Protocol, Self, TypeVar

import numpy as np

from core.errors import BackendError
from core.logging import log_event
from embeddings import metrics
from embeddings.stores.base import SearchHit, StoreStats
from embeddings.stores.files import FileIdentity, file_identity, safe_component

logger = logging.getLogger("medkg.embeddings.stores")

COMMIT_FILE = "commit.json"
WRITE_LOCK = "write.lock"
MERGE_LOCK = "merge.lock"
TEMPORARY_PREFIX = ".tmp-"


@dataclass(frozen=True)
class SegmentEntry:
    """One segment as a commit names it."""

    name: str
    slots: int  # entries written, dead ones included
    dead: int
    live: str | None  # the live bitmap file; None while every slot is alive
    kind: str  # how the store searches it: FAISS "flat" (exactly) or "hnsw"; impact "csr"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "slots": self.slots, "dead": self.dead, "live": self.live, "kind": self.kind}


@dataclass(frozen=True)
class Commit:
    generation: int
    segments: tuple[SegmentEntry, ...]
    header: dict[str, Any]

    def files(self, suffixes: Sequence[str]) -> set[str]:
        """Every file this commit needs, besides itself: each segment's `<name><suffix>` and its live bitmap."""
        names: set[str] = set()
        for entry in self.segments:
            names.update(f"{entry.name}{suffix}" for suffix in suffixes)
            if entry.live:
                names.add(entry.live)
        return names


def read_commit(directory: Path) -> Commit | None:
    """The directory's commit point, None when it has none; ValueError when it cannot be parsed."""
    try:
        data = json.loads((directory / COMMIT_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"commit point unreadable: {error}") from error
    return Commit(
        generation=int(data["generation"]),
        segments=tuple(SegmentEntry(**entry) for entry in data["segments"]),
        header=dict(data.get("header", {})),
    )


def temporary_prefix() -> str:
    """Temporary names carry the writer's pid: a crashed writer's leftovers are told from a live one's."""
    return f"{TEMPORARY_PREFIX}{os.getpid()}-"


def write_file(directory: Path, name: str, write: Callable[[IO[bytes]], object]) -> None:
    """Write `name` atomically: a temporary file in the same folder, fsynced, renamed over."""
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=temporary_prefix(), suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, directory / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_array(directory: Path, name: str, array: np.ndarray) -> None:
    write_file(directory, name, lambda handle: np.save(handle, array, allow_pickle=False))


def sync_directory(directory: Path) -> None:
    """fsync the folder itself, so the renames in it survive a crash."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_commit(directory: Path, commit: Commit) -> None:
    """Make `commit` the partition's state: its files are written already; this rename is the moment it counts."""
    sync_directory(directory)  # the segment files' renames before the commit point's
    body = {
        "generation": commit.generation,
        "segments": [entry.as_json() for entry in commit.segments],
        "header": commit.header,
    }
    write_file(directory, COMMIT_FILE, lambda handle: handle.write(json.dumps(body, indent=1).encode()))
    sync_directory(directory)


def _writer_alive(name: str) -> bool:
    pid = name[len(TEMPORARY_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_unreferenced(directory: Path, commit: Commit, suffixes: Sequence[str]) -> list[str]:
    """Delete files no commit names (a merged segment's, a crashed write's); returns their names. Temporary files
    of a live process are its write or merge in progress and stay. A reader that still maps an unlinked file keeps
    it until it lets go (POSIX), so this never breaks a search."""
    needed = commit.files(suffixes) | {COMMIT_FILE, WRITE_LOCK, MERGE_LOCK}
    removed = []
    for path in directory.iterdir():
        if path.name in needed or (path.name.startswith(TEMPORARY_PREFIX) and _writer_alive(path.name)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    return removed


@contextlib.contextmanager
def flocked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` (across processes); yields False when not blocking and someone else holds it."""
    import fcntl

    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tier(live: int, *, floor: int, factor: int) -> int:
    """A segment's size class: segments of one tier are within `factor` of each other (Lucene's tiered policy)."""
    return int(math.log(max(live, floor) / floor, factor))


def plan_merge(segments: Sequence[SegmentEntry], *, floor: int, factor: int, max_dead_fraction: float) -> list[str]:
    """The next merge the tiered policy wants: `factor` segments of one tier (the smallest tier first), or a
    segment whose dead slots passed `max_dead_fraction` (rewritten alone). Empty when the partition is in shape."""
    for entry in segments:
        if entry.dead and entry.dead >= max_dead_fraction * entry.slots:
            return [entry.name]
    by_tier: dict[int, list[SegmentEntry]] = {}
    for entry in segments:
        by_tier.setdefault(tier(entry.slots - entry.dead, floor=floor, factor=factor), []).append(entry)
    for level in sorted(by_tier):
        members = sorted(by_tier[level], key=lambda entry: entry.slots - entry.dead)
        if len(members) >= factor:
            return [entry.name for entry in members[:factor]]
    return []


def lookup(sorted_labels: np.ndarray, sorter: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Slots whose label is in `labels` (every occurrence), from a segment's labels sorted once."""
    left = np.searchsorted(sorted_labels, labels, side="left")
    right = np.searchsorted(sorted_labels, labels, side="right")
    counts = right - left
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.repeat(left, counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return sorter[starts + offsets].astype(np.int64)


# Metadata columns: per segment and filterable key, the distinct values (as JSON tokens) and a code per slot, so
# that a filter becomes a bitmap in one vectorized pass, at any selectivity, without asking the database.

MISSING = ""  # the token of a slot whose metadata lacks the key (no JSON text is empty)


def metadata_token(value: Any) -> str:
    """A metadata value as the column keeps it: JSON equality, as the database's filter compares (1.0 == 1)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def write_columns(directory: Path, name: str, columns: dict[str, list[str]]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for position, (key, tokens) in enumerate(sorted(columns.items())):
        values, codes = np.unique(np.asarray(tokens, dtype=object).astype(str), return_inverse=True)
        arrays[f"key_{position}"] = np.frombuffer(key.encode(), dtype=np.uint8)
        arrays[f"values_{position}"] = np.frombuffer(json.dumps(values.tolist()).encode(), dtype=np.uint8)
        arrays[f"codes_{position}"] = codes.astype(np.int32)
    write_file(directory, name, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]


def read_columns(path: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """key -> (distinct tokens, code per slot); {} when the segment has no column file."""
    try:
        stored = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return {}
    with stored:
        columns = {}
        for position in range(len(stored.files) // 3):
            key = bytes(stored[f"key_{position}"]).decode()
            values = json.loads(bytes(stored[f"values_{position}"]).decode())
            columns[key] = (values, stored[f"codes_{position}"])
        return columns


def column_mask(column: tuple[list[str], np.ndarray], wanted: Sequence[str]) -> np.ndarray:
    """The slots whose value is any of `wanted` tokens."""
    values, codes = column
    position = {value: code for code, value in enumerate(values)}
    matching = [position[token] for token in wanted if token in position]
    if not matching:
        return np.zeros(codes.size, dtype=bool)
    return np.isin(codes, np.asarray(matching, dtype=codes.dtype))


# The store-independent orchestration: a store subclasses SegmentedStore with its own Segment and builder.


class Segment:
    """One opened segment: its labels and the live mask of one commit, plus what the store maps (index, postings).
    Immutable once published; a commit that kills slots makes a new one sharing the mapped parts (with_live)."""

    def __init__(self, entry: SegmentEntry, labels: np.ndarray, live: np.ndarray | None) -> None:
        self.entry = entry
        self.labels = labels
        self.live = live  # bool per slot, None: all alive
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
            self._sorted = sort_labels(self.labels)
        slots = lookup(self._sorted[0], self._sorted[1], labels)
        return slots if self.live is None else slots[self.live[slots]]

    def with_live(self, entry: SegmentEntry, live: np.ndarray | None) -> Self:
        fresh = copy.copy(self)  # shares the immutable files' arrays and what was derived from them
        fresh.entry, fresh.live = entry, live
        return fresh


S = TypeVar("S", bound=Segment)


def sort_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sorter = np.argsort(labels, kind="stable")
    return labels[sorter], sorter


@dataclass(frozen=True)
class Snapshot(Generic[S]):
    """What one commit names, opened: searches run on it while writers publish the next."""

    identity: FileIdentity | None
    commit: Commit
    segments: tuple[S, ...]
    cache: dict[str, Any] = field(default_factory=dict, compare=False)  # what a store derives once per snapshot

    def by_name(self) -> dict[str, S]:
        return {segment.name: segment for segment in self.segments}


@dataclass
class Built:
    """A segment written to disk under temporary names; the commit that names it renames them first."""

    entry: SegmentEntry
    live: np.ndarray | None
    labels: np.ndarray
    staged: dict[str, str]  # temporary name -> final name

    def kill(self, slots: np.ndarray) -> None:
        """Deaths known before the commit (deletes made while a merge built it)."""
        live = np.ones(self.entry.slots, dtype=bool) if self.live is None else self.live.copy()
        live[slots] = False
        self.live = live
        self.entry = SegmentEntry(
            self.entry.name, self.entry.slots, int(self.entry.slots - live.sum()), None, self.entry.kind
        )

    def kill_replaced_in_itself(self) -> int:
        """The same label in two chunks of one build: the last one lives. Returns how many died."""
        labels = self.labels
        if np.unique(labels).size == labels.size:
            return 0
        _, last = np.unique(labels[::-1], return_index=True)
        keep = np.zeros(labels.size, dtype=bool)
        keep[labels.size - 1 - last] = True
        self.kill(np.flatnonzero(~keep))
        return int(labels.size - keep.sum())

    def discard(self, directory: Path) -> None:
        for temporary in self.staged:
            with contextlib.suppress(FileNotFoundError):
                (directory / temporary).unlink()


def stage(directory: Path, kind: str, labels: np.ndarray, writers: dict[str, Callable[[IO[bytes]], object]]) -> Built:
    """Write a new segment's labels and its `<name><suffix>` files (one writer each) under temporary names: no
    commit names them yet and no cleanup takes them while this process lives."""
    name = f"s{uuid.uuid4().hex[:16]}"
    prefix = temporary_prefix()
    staged = {}
    for suffix, write in writers.items():
        write_file(directory, f"{prefix}{name}{suffix}", write)
        staged[f"{prefix}{name}{suffix}"] = f"{name}{suffix}"
    write_array(directory, f"{prefix}{name}{LABELS_SUFFIX}", labels)
    staged[f"{prefix}{name}{LABELS_SUFFIX}"] = f"{name}{LABELS_SUFFIX}"
    return Built(SegmentEntry(name, int(labels.size), 0, None, kind), None, labels, staged)


LABELS_SUFFIX = ".labels.npy"


class SegmentBuilder(Protocol):
    """Entries streamed into one new segment (an ingestion step or a merge)."""

    count: int  # entries added
    duplicates: int  # of them, killed by a later copy in the same build

    def write(self, directory: Path) -> Built: ...


B = TypeVar("B", bound=SegmentBuilder)


@dataclass
class Partition(Generic[S]):
    """Per tenant, per process: the published snapshot and the locks around changing it."""

    snapshot: Snapshot[S] | None = None
    refresh: threading.Lock = field(default_factory=threading.Lock)
    write: threading.Lock = field(default_factory=threading.Lock)
    merging: threading.Lock = field(default_factory=threading.Lock)


class _Moot(Exception):
    """A merge whose sources another writer removed."""


class SegmentedStore(ABC, Generic[S, B]):
    """Per (namespace, tenant) a folder of immutable segments named by a commit point: writes of their own size,
    lock-free snapshot readers, tiered background merges, purge and optimize. The store (a subclass, mixed with its
    IndexStore interface) says how a segment is opened, built, fed from an older one and searched."""

    config: Any  # the store's StoreConfig or SparseStoreConfig
    directory_suffix: str  # `<tenant><suffix>/` is the partition folder
    legacy_suffix: str  # `<tenant><suffix>`: a one-file partition from before segments, converted on first open
    segment_suffixes: tuple[str, ...]  # the files of a segment besides its labels (and live bitmaps)
    index_title: str  # how errors name the index ("FAISS index")
    merge_batch = 16_384  # entries a merge feeds its builder at a time
    background_merges = True  # tests and benches may turn merges after writes off and run them explicitly

    def __init__(self, data_dir: Path, namespace: str) -> None:
        self.directory = data_dir / safe_component(namespace, "namespace")
        self._partitions: dict[str, Partition[S]] = {}
        self._guard = threading.Lock()

    # What a store says

    @abstractmethod
    def _load_segment(self, directory: Path, entry: SegmentEntry, live: np.ndarray | None) -> S:
        """Open a segment not opened before (ValueError when its files do not match `entry`)."""

    @abstractmethod
    def _builder(self) -> B: ...

    @abstractmethod
    def _add_items(self, builder: B, items: list[Any]) -> None:
        """Check one chunk of upserted items (vectors, term weights) and add them to `builder`; labels unique."""

    @abstractmethod
    def _feed(self, builder: B, segment: S, slots: np.ndarray) -> None:
        """Add `segment`'s entries at `slots` (live ones, in order) to `builder`: how a merge copies them."""

    @abstractmethod
    def _header(self, tenant: str) -> dict[str, Any]:
        """What the commit point records about the partition (format, namespace, dimension ...)."""

    @abstractmethod
    def _merge_policy(self) -> tuple[int, int, float]:
        """(floor, factor, max dead fraction) for plan_merge."""

    @abstractmethod
    def _convert_legacy(self, tenant: str) -> Snapshot[S]:
        """Turn the one-file partition at `_legacy_path(tenant)` into a committed segment; under `_writing`."""

    def _check_header(self, tenant: str, commit: Commit) -> None:
        """Refuse a commit this store cannot search (another dimension ...)."""

    # Layout

    def path_for(self, tenant: str) -> Path:
        """The tenant's partition folder."""
        return self.directory / f"{safe_component(tenant, 'tenant')}{self.directory_suffix}"

    def _legacy_path(self, tenant: str) -> Path:
        return self.directory / f"{safe_component(tenant, 'tenant')}{self.legacy_suffix}"

    def _partition(self, tenant: str) -> Partition[S]:
        with self._guard:
            return self._partitions.setdefault(tenant, Partition())

    def _suffixes(self) -> tuple[str, ...]:
        return (LABELS_SUFFIX, *self.segment_suffixes)

    def tenants(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        names = {
            path.name.removesuffix(self.directory_suffix) for path in self.directory.glob(f"*{self.directory_suffix}")
        }
        names |= {path.name.removesuffix(self.legacy_suffix) for path in self.directory.glob(f"*{self.legacy_suffix}")}
        return sorted(name for name in names if self._exists(name))

    def _exists(self, tenant: str) -> bool:
        return (self.path_for(tenant) / COMMIT_FILE).exists() or self._legacy_path(tenant).exists()

    def _commit_converted(self, tenant: str, built: Built, alive: np.ndarray, *, event: str) -> Snapshot[S]:
        """Commit the segment a legacy file became, its dead slots still dead, then remove the file."""
        if not alive.all():
            built.kill(np.flatnonzero(~alive))
        snapshot = self._commit(tenant, None, added=[built])
        self._legacy_path(tenant).unlink()
        log_event(logger, event, namespace=self.config.namespace, tenant=tenant, vectors=int(alive.sum()))
        return snapshot

    # Reading a commit

    def _unreadable(self, tenant: str, error: Exception) -> BackendError:
        return BackendError(
            f"{self.index_title} {self.path_for(tenant)} cannot be read ({error}); rebuild it with "
            f"`manage.py rebuild_index --namespace {self.config.namespace}`.",
            details={"namespace": self.config.namespace, "file": str(self.path_for(tenant))},
        )

    def _open(self, tenant: str, previous: Snapshot[S] | None) -> Snapshot[S] | None:
        """The commit on disk now, reusing what `previous` already opened (a refresh maps only new files)."""
        directory = self.path_for(tenant)
        for _attempt in range(10):  # a merge may remove a file between reading the commit and opening it
            identity = file_identity(directory / COMMIT_FILE)
            if identity is None:
                return None
            if previous is not None and previous.identity == identity:
                return previous
            try:
                commit = read_commit(directory)
                if commit is None:
                    return None
                self._check_header(tenant, commit)
                known = previous.by_name() if previous is not None else {}
                opened = tuple(self._open_segment(directory, entry, known.get(entry.name)) for entry in commit.segments)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
                raise self._unreadable(tenant, error) from error
            return Snapshot(identity=identity, commit=commit, segments=opened)
        raise self._unreadable(tenant, RuntimeError("the commit kept changing while it was opened"))

    def _open_segment(self, directory: Path, entry: SegmentEntry, known: S | None) -> S:
        if known is not None and known.entry == entry:
            return known
        live = None
        if entry.live:
            bits = np.load(directory / entry.live, allow_pickle=False)
            live = np.unpackbits(bits, count=entry.slots, bitorder="little").astype(bool)
        if known is not None:
            return known.with_live(entry, live)
        return self._load_segment(directory, entry, live)

    def _snapshot(self, tenant: str) -> Snapshot[S] | None:
        """The latest commit, opened. A reader never waits on a writer: while another thread refreshes, it searches
        the snapshot it has (one commit behind at most)."""
        partition = self._partition(tenant)
        current = partition.snapshot
        identity = file_identity(self.path_for(tenant) / COMMIT_FILE)
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
    def _writing(self, tenant: str) -> Iterator[Snapshot[S] | None]:
        """Exclusive write access to the tenant's partition across threads and processes, fresh from disk."""
        directory = self.path_for(tenant)
        directory.mkdir(parents=True, exist_ok=True)
        partition = self._partition(tenant)
        with partition.write, flocked(directory / WRITE_LOCK):
            with partition.refresh:
                partition.snapshot = self._open(tenant, partition.snapshot)
            if partition.snapshot is None and self._legacy_path(tenant).exists():
                partition.snapshot = self._convert_legacy(tenant)
            yield partition.snapshot

    def _commit(
        self,
        tenant: str,
        snapshot: Snapshot[S] | None,
        *,
        added: Sequence[Built] = (),
        kills: dict[str, np.ndarray] | None = None,
        removed: Iterable[str] = (),
    ) -> Snapshot[S]:
        """Publish a commit: `snapshot`'s segments less `removed`, with the slots in `kills` dead, plus `added`.
        The caller holds `_writing(tenant)`."""
        directory = self.path_for(tenant)
        generation = (snapshot.commit.generation if snapshot else 0) + 1
        kills = kills or {}
        removed = set(removed)
        entries: list[SegmentEntry] = []
        published: dict[str, S] = {}
        for segment in snapshot.segments if snapshot else ():
            if segment.name in removed:
                continue
            slots = kills.get(segment.name)
            if slots is not None and slots.size:
                live = segment.live_mask().copy()
                live[slots] = False
                entry = _write_live(directory, segment.entry, live, generation)
                published[entry.name] = segment.with_live(entry, live)
            else:
                entry = segment.entry
                published[entry.name] = segment
            entries.append(entry)
        for built in added:
            for temporary, final in built.staged.items():
                (directory / temporary).rename(directory / final)
            entry = built.entry
            if built.live is not None:
                entry = _write_live(directory, entry, built.live, generation)
            entries.append(entry)
        commit = Commit(generation=generation, segments=tuple(entries), header=self._header(tenant))
        write_commit(directory, commit)
        partition = self._partition(tenant)
        with partition.refresh:
            segments = tuple(
                published[entry.name] if entry.name in published else self._open_segment(directory, entry, None)
                for entry in commit.segments
            )
            partition.snapshot = Snapshot(file_identity(directory / COMMIT_FILE), commit, segments)
        remove_unreferenced(directory, commit, self._suffixes())
        return partition.snapshot

    def _kills(self, snapshot: Snapshot[S] | None, labels: np.ndarray) -> dict[str, np.ndarray]:
        """Per segment, the live slots of `labels`: what a replacement or a delete kills."""
        if snapshot is None or labels.size == 0:
            return {}
        labels = np.unique(labels)
        found = {segment.name: segment.slots_of(labels) for segment in snapshot.segments if segment.alive_count}
        return {name: slots for name, slots in found.items() if slots.size}

    # Writes

    def upsert(self, *, tenant: str, items: Sequence[Any]) -> int:
        return self.bulk_load(tenant=tenant, chunks=[items])

    def bulk_load(
        self,
        *,
        tenant: str,
        chunks: Iterable[Sequence[Any]],
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream every chunk into one new segment (built outside the write lock: readers and other writers go on),
        then commit it, killing the older copies of its labels. Every chunk is checked before anything is written.
        Durable when it returns."""
        builder = self._builder()
        for chunk in chunks:
            latest = list({item.label: item for item in chunk}.values())  # the same label twice: the last one wins
            if not latest:
                continue
            self._add_items(builder, latest)
            if on_progress:
                on_progress(len(latest))
        return self._add_segment(tenant, builder)

    def _add_segment(self, tenant: str, builder: B) -> int:
        """Write what `builder` holds as a new segment (outside the write lock: readers and other writers go on),
        then commit it, killing the older copies of its labels. Returns how many entries it holds alive."""
        if builder.count == 0:
            return 0
        directory = self.path_for(tenant)
        directory.mkdir(parents=True, exist_ok=True)
        built = builder.write(directory)
        try:
            with self._writing(tenant) as snapshot:
                self._commit(tenant, snapshot, added=[built], kills=self._kills(snapshot, built.labels))
        except BaseException:
            built.discard(directory)
            raise
        self._merge_soon(tenant)
        return builder.count - builder.duplicates

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

    def _yield_to_searches(self) -> None:
        """A background merge runs at a lower priority (Linux nices threads one by one): searches of the same
        process win the scheduler. Stores whose builds are multi-threaded also narrow them here."""
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MERGE_NICENESS)

    @contextlib.contextmanager
    def _narrow_builds(self) -> Iterator[None]:
        """A merge the writer runs itself (a stall) builds as a background one does, without taking every core
        from the searches; stores with multi-threaded builds narrow them here, for this thread, and restore."""
        yield

    def _merge_soon(self, tenant: str) -> None:
        """Start a background merge when the policy wants one and none runs for this partition in this process.
        When merges fell behind (STALL_SEGMENTS segments and the policy still wants one), the writer merges
        itself before it returns: writes slow down instead of every search paying for one more segment (Lucene's
        merge scheduler stalls indexing threads the same way)."""
        partition = self._partition(tenant)
        while (
            partition.snapshot is not None
            and len(partition.snapshot.segments) >= STALL_SEGMENTS
            and self._merge_plan(partition.snapshot)
            and not _EXITING.is_set()
        ):
            metrics.INDEX_WRITE_STALLS.labels(namespace=self.config.namespace, store=self.config.backend).inc()
            with self._narrow_builds():
                merged = self.merge(tenant=tenant)[0]
            if not merged:
                break
        if not self.background_merges or not self._merge_plan(partition.snapshot):
            return
        if not partition.merging.acquire(blocking=False):
            return

        def run() -> None:
            self._yield_to_searches()
            try:
                while not _EXITING.is_set() and self.merge(tenant=tenant, blocking=False)[0]:
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

        # Not a daemon: at exit, Python would stop a daemon thread inside faiss or scipy C++ code, which aborts
        # the process ("terminate called without an active exception"). _EXITING makes it stop within a batch.
        threading.Thread(target=run, name=f"merge-{tenant}", daemon=False).start()

    def _merge_plan(self, snapshot: Snapshot[S] | None) -> list[str]:
        if snapshot is None:
            return []
        floor, factor, max_dead_fraction = self._merge_policy()
        return plan_merge(snapshot.commit.segments, floor=floor, factor=factor, max_dead_fraction=max_dead_fraction)

    def merge(
        self,
        *,
        tenant: str,
        choose: Callable[[Snapshot[S]], list[str]] | None = None,
        blocking: bool = True,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[int, int]:
        """Run one merge of the segments `choose` names (default: what the tiered policy picks). The new segment is
        built from their live slots outside the write lock; the commit that swaps it in carries over the deletes
        made meanwhile. Returns (segments merged, dead entries that left the files); (0, 0) when there was
        nothing to do, or another process is merging and `blocking` is False."""
        directory = self.path_for(tenant)
        if not (directory / COMMIT_FILE).exists():
            return 0, 0
        with flocked(directory / MERGE_LOCK, blocking=blocking) as locked:
            if not locked:
                return 0, 0
            snapshot = self._snapshot(tenant)
            if snapshot is None:
                return 0, 0
            chosen = set((choose or self._merge_plan)(snapshot))
            sources = [segment for segment in snapshot.segments if segment.name in chosen]
            if not sources:
                return 0, 0
            started = time.perf_counter()
            builder = self._builder()
            for segment in sources:
                live = np.flatnonzero(segment.live_mask())
                for start in range(0, live.size, self.merge_batch):
                    if _EXITING.is_set():
                        return 0, 0  # the process is exiting: the next writer or merge starts this one again
                    slots = live[start : start + self.merge_batch]
                    self._feed(builder, segment, slots)
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
                        built.kill(lookup(*sort_labels(built.labels), late_labels))
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
        labels = {"namespace": self.config.namespace, "store": self.config.backend}
        metrics.INDEX_MERGES.labels(**labels).inc()
        metrics.INDEX_MERGE_SECONDS.labels(**labels).observe(time.perf_counter() - started)
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

        def everything(snapshot: Snapshot[S]) -> list[str]:
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

    # Reads

    def count(self, *, tenant: str) -> int:
        snapshot = self._snapshot(tenant)
        return sum(segment.alive_count for segment in snapshot.segments) if snapshot else 0

    def labels(self, *, tenant: str) -> set[int]:
        snapshot = self._snapshot(tenant)
        if snapshot is None or not snapshot.segments:
            return set()
        return set(np.concatenate([segment.live_labels() for segment in snapshot.segments]).tolist())

    def segments(self, *, tenant: str) -> list[SegmentEntry]:
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


MERGE_NICENESS = 10
STALL_SEGMENTS = 25  # unmerged segments at which a writer merges before returning (the tiered shape needs fewer)
_EXITING = threading.Event()
threading._register_atexit(_EXITING.set)  # type: ignore[attr-defined]  # runs before non-daemon threads are joined


def best_hits(
    segments: Sequence[S],
    search: Callable[[S], tuple[np.ndarray, np.ndarray] | None],
    k: int,
    *,
    ties_by_label: bool = False,
) -> list[SearchHit]:
    """The k best of what `search` finds (scores, labels) in each segment with live entries, best first; equal
    scores in the order found, or the lower label first."""
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for segment in segments:
        found = search(segment) if segment.alive_count else None
        if found is not None:
            scores.append(found[0])
            labels.append(found[1])
    if not scores:
        return []
    all_scores, all_labels = np.concatenate(scores), np.concatenate(labels)
    order = np.lexsort((all_labels, -all_scores)) if ties_by_label else np.argsort(-all_scores, kind="stable")
    top = order[:k]
    return [SearchHit(int(all_labels[i]), float(all_scores[i])) for i in top]


def _write_live(directory: Path, entry: SegmentEntry, live: np.ndarray, generation: int) -> SegmentEntry:
    name = f"{entry.name}.live-{generation}.npy"
    write_array(directory, name, np.packbits(live, bitorder="little"))
    return SegmentEntry(entry.name, entry.slots, int(entry.slots - live.sum()), name, entry.kind)
