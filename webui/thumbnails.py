"""Thumbnails of indexed images, made on first request and cached on disk.

The cache lives in ``<index>/thumbs/``; a file is named from the record's content hash and
the size, so a file that changed (and was re-indexed) gets a new thumbnail and identical
files share one. A file that changed on disk since it was indexed is shown as it is now but
not cached under the old hash.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from dinoret.core.files import atomic_write
from dinoret.indexer.decode import open_image
from dinoret.webui.imaging import to_jpeg


def cache_name(content_hash: str, size: int) -> str:
    # Hashed again so that nothing from the catalog ends up in a file name unchecked.
    return f"{hashlib.sha256(content_hash.encode()).hexdigest()[:32]}-{size}.jpg"


def _unchanged(path: Path, size: int, mtime: float) -> bool:
    try:
        st = path.stat()
    except OSError:  # gone since it was decoded
        return False
    return st.st_size == size and abs(st.st_mtime - mtime) < 1e-3


def thumbnail(cache_dir: Path | None, record, size: int, max_pixels: int) -> Path | bytes:
    """The JPEG thumbnail of ``record`` (an index Record) fitting ``size`` x ``size``:
    a cached file's path, or the bytes when it cannot be cached.

    Raises ``SkipFile`` (from the indexer's decoder) if the file is gone or no longer decodes.
    """
    cached = cache_dir / cache_name(record.content_hash, size) if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return cached
    src = Path(record.path)
    data = to_jpeg(open_image(src, draft_size=size, max_pixels=max_pixels).image, size)
    if cached is None or not _unchanged(src, record.size, record.mtime):
        return data
    try:
        # A cache: concurrent requests never see half a file, but a power cut may lose it.
        atomic_write(cached, data, durable=False)
    except OSError:  # a read-only index directory: serve without caching
        return data
    return cached
