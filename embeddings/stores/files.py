"""One file per (namespace, tenant) partition, shared by the embedded stores (FAISS, impact index).

A partition file is written to a temporary name, fsynced and renamed (and the directory fsynced), so a reader or a
crashed writer never sees half an update. Writers in different processes (web, Celery workers) serialise on an flock
beside the file; a reader notices a newer file by its identity (inode, size, mtime) and reloads it.
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
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from core.errors import BackendError
from core.logging import log_event
from embeddings.stores.base import StoreStats

logger = logging.getLogger("medkg.embeddings.stores")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

FileIdentity = tuple[int, int, int]  # (inode, size, mtime_ns)


COMPACT_MIN_TOMBSTONES = 256
COMPACT_TOMBSTONE_FRACTION = 0.25


class Partition(Protocol):
    file_identity: FileIdentity | None
    labels: np.ndarray  # int64 label per slot
    alive: np.ndarray  # bool per slot
    position_of: dict[int, int]  # live label -> slot

    @property
    def tombstones(self) -> int: ...


P = TypeVar("P", bound=Partition)


def safe_component(name: str, what: str) -> str:
    """`name` as one path component, or BackendError: a tenant or namespace can never escape the data folder."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise BackendError(f"{what} {name!r} cannot name an index file.", details={what: name})
    return name


def file_identity(path: Path) -> FileIdentity | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class PartitionFiles(Generic[P]):
    """The partitions of one namespace: `<data_dir>/<namespace>/<tenant><suffix>`, cached in memory per process."""

    def __init__(
        self,
        *,
        data_dir: Path,
        namespace: str,
        suffix: str,
        load: Callable[[Path], P],
        empty: Callable[[], P],
    ) -> None:
        self.directory = Path(data_dir) / safe_component(namespace, "namespace")
        self.suffix = suffix
        self._load = load
        self._empty = empty
        self._partitions: dict[str, P] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._guard = threading.Lock()

    def path_for(self, tenant: str) -> Path:
        return self.directory / f"{safe_component(tenant, 'tenant')}{self.suffix}"

    def lock_for(self, tenant: str) -> threading.RLock:
        """The in-process lock of a partition: searches and writes of this process's threads take turns."""
        with self._guard:
            return self._locks.setdefault(tenant, threading.RLock())

    def exists(self, tenant: str) -> bool:
        return file_identity(self.path_for(tenant)) is not None

    def size(self, tenant: str) -> int:
        identity = file_identity(self.path_for(tenant))
        return identity[1] if identity else 0

    @contextlib.contextmanager
    def writing(self, tenant: str) -> Iterator[P]:
        """Exclusive write access to the tenant's partition across threads and processes, fresh from disk."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.lock_for(tenant), open(self.path_for(tenant).with_suffix(".lock"), "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield self.current(tenant, create=True)  # type: ignore[misc]
            except BaseException:
                self._partitions.pop(tenant, None)  # a half-applied change must not outlive the failed write
                raise
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def current(self, tenant: str, *, create: bool) -> P | None:
        """The partition as on disk now: cached when unchanged, reloaded when another process replaced the file."""
        path = self.path_for(tenant)
        identity = file_identity(path)
        partition = self._partitions.get(tenant)
        if partition is not None and partition.file_identity == identity:
            return partition
        with self.lock_for(tenant):
            partition = self._partitions.get(tenant)
            if partition is not None and partition.file_identity == identity:
                return partition
            partition = self._load(path) if identity is not None else (self._empty() if create else None)
            if partition is not None:
                self._partitions[tenant] = partition
            else:
                self._partitions.pop(tenant, None)
            return partition

    def persist(self, tenant: str, partition: P, header: dict[str, Any], arrays: dict[str, Any]) -> None:
        """Write the partition's arrays (and a JSON header) atomically; the caller holds `writing(tenant)`."""
        path = self.path_for(tenant)
        descriptor, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{tenant}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(handle, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
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
        partition.file_identity = file_identity(path)

    def remove(self, tenant: str | None) -> None:
        """Delete one tenant's partition (under its write lock), or the whole namespace folder."""
        if tenant is None:
            with self._guard:
                self._partitions.clear()
            shutil.rmtree(self.directory, ignore_errors=True)
            return
        with self.writing(tenant):
            with contextlib.suppress(FileNotFoundError):
                self.path_for(tenant).unlink()
            self._partitions.pop(tenant, None)

    def tenants(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(path.name.removesuffix(self.suffix) for path in self.directory.glob(f"*{self.suffix}"))

    def writable(self) -> tuple[bool, str]:
        """Whether the data folder can be written, for readiness."""
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return False, f"FAISS_DATA_DIR is not writable: {error}"
        if not os.access(self.directory.parent, os.W_OK):
            return False, f"FAISS_DATA_DIR {self.directory.parent} is not writable"
        return True, ""


def read_header(stored: Any) -> dict[str, Any]:
    return json.loads(bytes(stored["header"]).decode())  # type: ignore[no-any-return]


class PartitionedFileStore(ABC):
    """What every file-partitioned store does the same way (mixed into FaissStore and ImpactStore): the reads, and
    deletes as tombstones with compaction once they pile up. The store says how to persist a partition, how to
    rebuild its index from the live slots, and which derived state (bitmap, postings) a change invalidates."""

    files: PartitionFiles[Any]
    config: Any  # the store's StoreConfig or SparseStoreConfig

    @abstractmethod
    def _persist(self, tenant: str, partition: Any) -> None: ...

    @abstractmethod
    def _compact_to(self, partition: Any, slots: np.ndarray) -> None:
        """Rebuild the partition's index (vectors, rows) from `slots`, in order; labels are renumbered after."""

    @abstractmethod
    def _forget_derived(self, partition: Any) -> None:
        """Drop what is rebuilt lazily from the partition (live bitmap, term-major postings) after a change."""

    def delete(self, *, tenant: str, labels: Sequence[int]) -> int:
        if not labels or not self.files.exists(tenant):
            return 0
        with self.files.writing(tenant) as partition:
            removed = sum(tombstone(partition, int(label)) for label in labels)
            if removed:
                self._forget_derived(partition)
                self._compact_if_needed(tenant, partition)
                self._persist(tenant, partition)
        return removed

    def path_for(self, tenant: str) -> Path:
        return self.files.path_for(tenant)

    def purge(self, *, tenant: str) -> int:
        """Rewrite the tenant's partition without its dead slots, whatever their number; returns how many left."""
        if not self.files.exists(tenant):
            return 0
        with self.files.writing(tenant) as partition:
            dead = int(partition.tombstones)
            if dead:
                self._compact(tenant, partition)
                self._persist(tenant, partition)
        return dead

    def _compact_if_needed(self, tenant: str, partition: Any) -> None:
        if compaction_due(partition):
            self._compact(tenant, partition)

    def _compact(self, tenant: str, partition: Any) -> None:
        dead = partition.tombstones
        slots = np.flatnonzero(partition.alive)
        self._compact_to(partition, slots)
        keep_slots(partition, slots)
        self._forget_derived(partition)
        log_event(
            logger,
            "partition_compacted",
            store=type(self).__name__,
            namespace=self.config.namespace,
            tenant=tenant,
            removed=dead,
        )

    def count(self, *, tenant: str) -> int:
        partition = self.files.current(tenant, create=False)
        return len(partition.position_of) if partition else 0

    def labels(self, *, tenant: str) -> set[int]:
        partition = self.files.current(tenant, create=False)
        return set(partition.position_of) if partition else set()

    def drop(self, *, tenant: str | None = None) -> None:
        self.files.remove(tenant)

    def tenants(self) -> list[str]:
        return self.files.tenants()

    def stats(self) -> list[StoreStats]:
        result = []
        for tenant in self.tenants():
            partition = self.files.current(tenant, create=False)
            if partition is not None:
                result.append(
                    StoreStats(
                        tenant=tenant,
                        vectors=len(partition.position_of),
                        tombstones=partition.tombstones,
                        bytes_on_disk=self.files.size(tenant),
                    )
                )
        return result


# Tombstones: a replaced or deleted label's slot is marked dead; past a fraction of the partition, the live slots
# are copied into a fresh one (the store rebuilds its own index from them).


def tombstone(partition: Partition, label: int) -> bool:
    slot = partition.position_of.pop(label, None)
    if slot is None:
        return False
    partition.alive[slot] = False
    return True


def compaction_due(partition: Partition) -> bool:
    dead = int(partition.labels.size - len(partition.position_of))
    return dead >= COMPACT_MIN_TOMBSTONES and dead >= COMPACT_TOMBSTONE_FRACTION * partition.labels.size


def keep_slots(partition: Partition, slots: np.ndarray) -> None:
    """After compaction: only `slots` remain, renumbered from 0 in order."""
    partition.labels = partition.labels[slots]
    partition.alive = np.ones(slots.size, dtype=bool)
    partition.position_of = {int(label): slot for slot, label in enumerate(partition.labels.tolist())}
