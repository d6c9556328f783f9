"""Segmented partitions: immutable segment files, per-segment live bitmaps and a commit point that names them.

The shape is Lucene's. A write adds a new segment of its own size and, where it replaces or deletes entries of
older segments, a new live bitmap for each of them (a bit per slot: 125 KB per million entries); then it renames a
small commit point into place. Nothing already written is rewritten, so a step costs its own size whatever the
partition holds. Readers open the commit point, map the segments it names, and keep what they already had:
picking up a commit opens only the new files. Merges (embeddings.stores.faiss) rebuild a few segments into one in
the background and commit the result the same way.

Crash safety: every file is written under a temporary name, fsynced and renamed; the commit point is renamed last
and the directory fsynced. A crash before that rename leaves only files no commit names, removed by the next
writer. The database holds every accepted vector (the write-ahead log), so an index is a materialized view of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

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
    kind: str  # "flat" (searched exactly) or "hnsw"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "slots": self.slots, "dead": self.dead, "live": self.live, "kind": self.kind}


@dataclass(frozen=True)
class Commit:
    generation: int
    segments: tuple[SegmentEntry, ...]
    header: dict[str, Any]

    def files(self) -> set[str]:
        """Every file this commit needs, besides itself."""
        names: set[str] = set()
        for entry in self.segments:
            names.update(segment_files(entry.name))
            if entry.live:
                names.add(entry.live)
        return names


def segment_files(name: str) -> tuple[str, ...]:
    return (f"{name}.faiss", f"{name}.labels.npy", f"{name}.vectors.npy", f"{name}.meta.npz")


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


def remove_unreferenced(directory: Path, commit: Commit) -> list[str]:
    """Delete files no commit names (a merged segment's, a crashed write's); returns their names. Temporary files
    of a live process are its write or merge in progress and stay. A reader that still maps an unlinked file keeps
    it until it lets go (POSIX), so this never breaks a search."""
    needed = commit.files() | {COMMIT_FILE, WRITE_LOCK, MERGE_LOCK}
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
