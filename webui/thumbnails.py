"""Thumbnails of indexed images, made on first request and cached on disk.

The cache lives in ``<index>/thumbs/``; a file is named from the record's content hash and
the size, so a file that changed (and was re-indexed) gets a new thumbnail and identical
files share one. A file that changed on disk since it was indexed is shown as it is now but
not cached under the old hash.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from dinoret.webui.imaging import open_rgb, to_jpeg


def cache_name(content_hash: str, size: int) -> str:
    # Hashed again so that nothing from the catalog ends up in a file name unchecked.
    return f"{hashlib.sha256(content_hash.encode()).hexdigest()[:32]}-{size}.jpg"


def _unchanged(path: Path, size: int, mtime: float) -> bool:
    st = path.stat()
    return st.st_size == size and abs(st.st_mtime - mtime) < 1e-3


def thumbnail(cache_dir: Path | None, record, size: int, max_pixels: int) -> Path | bytes:
    """The JPEG thumbnail of ``record`` (an index Record) fitting ``size`` x ``size``:
    a cached file's path, or the bytes when it cannot be cached.

    Raises FileNotFoundError if the file is gone, ``BadImage`` if it no longer decodes.
    """
    cached = cache_dir / cache_name(record.content_hash, size) if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return cached
    src = Path(record.path)
    data = to_jpeg(open_rgb(src, max_pixels, draft=size), size)
    if cached is None or not _unchanged(src, record.size, record.mtime):
        return data
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Written under a unique name and renamed: concurrent requests never see half a file.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".jpg")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, cached)
    except OSError:  # a read-only index directory: serve without caching
        return data
    return cached
