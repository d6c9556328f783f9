"""What the embedded stores (FAISS, impact index, Lucene) share about files: safe path components, file identity and
the data folder's readiness.

A tenant or namespace name becomes a path component only through safe_component, so no name can escape the data
folder; a reader notices that a file was replaced by its identity (inode, size, mtime).
"""

from __future__ import annotations

import os
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


def data_dir_writable(data_dir: Path) -> tuple[bool, str]:
    """Whether the stores' data folder (FAISS_DATA_DIR) exists or can be made, and can be written; for readiness."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return False, f"FAISS_DATA_DIR is not writable: {error}"
    if not os.access(data_dir, os.W_OK):
        return False, f"FAISS_DATA_DIR {data_dir} is not writable"
    return True, ""
