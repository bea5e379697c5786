"""Images as the web UI shows them: which files a browser displays as they are, and JPEG renditions.

Decoding itself is the indexer's (:mod:`dinoret.indexer.decode`): uploads and thumbnails are
decoded by the same code, with the same format list and checks, as the indexed files, so
every file that could be indexed can be shown.
"""
from __future__ import annotations

import io
import os

from PIL import Image

from dinoret.indexer.decode import sniff_file

# Sniffed formats a browser displays as they are; the others (TIFF, PNM) are shown as a JPEG rendition.
BROWSER_FORMATS = frozenset({"jpeg", "png", "gif", "bmp", "webp"})


def image_format(path: str | os.PathLike) -> str | None:
    """The format of the file at ``path`` from its first bytes (``"jpeg"``, ``"pnm"``, ...; see
    ``dinoret.indexer.decode.sniff_format``), or None if it is gone or not an image."""
    try:
        return sniff_file(path)
    except OSError:
        return None


def to_jpeg(img: Image.Image, size: int, quality: int = 85) -> bytes:
    """``img`` shrunk to fit ``size`` x ``size`` (never enlarged), as JPEG bytes."""
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
