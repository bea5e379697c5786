"""Where things live in an index directory, and the one way files are written there.

Every file that readers depend on is written to a temporary name, flushed to disk and
renamed over its final name, so a crash leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TMP_SUFFIX = ".tmp"
DEFAULT_INDEX_DIR = ".dinoret"
INDEX_DIR_ENV = "DINORET_INDEX"


def default_index_dir() -> str:
    """The index directory when none is named: ``$DINORET_INDEX``, else ``./.dinoret``."""
    return os.environ.get(INDEX_DIR_ENV) or DEFAULT_INDEX_DIR


@dataclass(frozen=True)
class IndexPaths:
    root: Path

    @classmethod
    def of(cls, root: str | os.PathLike) -> "IndexPaths":
        return cls(Path(os.path.abspath(root)))

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.db"

    @property
    def meta(self) -> Path:
        return self.root / "meta.lmdb"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def vectors(self) -> Path:
        return self.root / "vectors"

    @property
    def lock(self) -> Path:
        return self.root / "index.lock"

    def exists(self) -> bool:
        return self.catalog.is_file() and self.meta.is_dir()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it is fsynced and renamed to ``path``."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def disk_usage(root: Path) -> int:
    """Bytes used by the files under ``root`` (what the user would delete)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                pass
    return total
