"""File naming shared by the embedded stores (FAISS, impact index, Lucene): safe path components and file identity.

A tenant or namespace name becomes a path component only through safe_component, so no name can escape the data
folder; a reader notices that a file was replaced by its identity (inode, size, mtime).
"""

from __future__ import annotations

import re
from pathlib import Path

from core.errors import BackendError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

FileIdentity = tuple[int, int, int]  # (inode, size, mtime_ns)


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
