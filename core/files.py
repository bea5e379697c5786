"""Files: the one way dinoret replaces a file (write a temporary file beside it, then
rename), and the sha256 of a file.

A reader (or a crash) sees the old file or the new one, never a torn one. Temporary
names end with :data:`TMP_SUFFIX` and carry a random part, so concurrent writers of the
same file (two web requests making one thumbnail) never share one, and a writer that
finds leftovers of a crash can delete them by suffix.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (weights files are identified by it, moved files checked with it)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_path(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for the caller to write; when the block ends
    without an error it replaces ``path``, else it is deleted.

    ``durable``: flush the file and the folder to disk first, so the new file survives a
    power cut once this returns (index files, checkpoints); caches can skip it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        yield tmp
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` (str is written as UTF-8) through :func:`atomic_path`."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
