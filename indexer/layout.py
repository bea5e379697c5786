"""Where things live in an index directory.

Every file that readers depend on is written through :func:`dinoret.core.files.atomic_path`
(a temporary name, flushed to disk, renamed over the final name), so a crash leaves either
the old file or the new one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
