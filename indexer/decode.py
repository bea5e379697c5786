"""Reading one image file safely: every failure becomes a :class:`SkipFile` with a short reason.

The one decoder of dinoret: the indexer, queries, dedup reports and the web UI (uploads
and thumbnails) all decode here, so a file that can be indexed can also be shown, and an
upload is decoded exactly as an indexed file would be. Only the formats discovery sniffs
are ever opened (PIL plugins such as EPS would run external programs).
"""
from __future__ import annotations

import errno
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error  # PIL raises it for some malformed headers
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

# PIL's own default; a larger image is treated as a decompression bomb and skipped.
DEFAULT_MAX_PIXELS = 89_478_485

_MAGIC: list[tuple[bytes, str]] = [
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
]
# Each sniffed format by the name of the PIL plugin that decodes it (PPM reads all of netpbm).
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF", "webp": "WEBP", "pnm": "PPM"}
MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "bmp": "image/bmp", "tiff": "image/tiff",
              "webp": "image/webp", "pnm": "image/x-portable-anymap"}
HEAD_BYTES = 16  # what sniff_format needs


def sniff_format(head: bytes) -> str | None:
    """Image format from the first 16 bytes of a file, or None: content decides, not the name."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n":
        return "pnm"  # netpbm: PBM/PGM/PPM
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    return None


def sniff_file(path: str | os.PathLike) -> str | None:
    """The image format of the file at ``path`` from its first bytes, or None; OSError if unreadable."""
    with open(path, "rb") as f:
        return sniff_format(f.read(HEAD_BYTES))


class SkipFile(Exception):
    """A file that is not indexed; ``reason`` is short and stable (it is counted and shown),
    ``detail`` says more where that helps a person (``str(e)`` shows both)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    image: Image.Image  # RGB, EXIF orientation applied, possibly reduced by JPEG draft
    width: int  # of the full image, after orientation
    height: int


VANISHED = "file vanished"  # found by the walk, gone when read


def _reason_for_oserror(e: OSError, path: Path | None) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOENT:
        return "broken symlink" if path is not None and path.is_symlink() else VANISHED
    if e.errno == errno.ELOOP:
        return "symlink loop"
    msg = str(e).lower()
    if "truncated" in msg:
        return "truncated image"
    return f"unreadable: {str(e).splitlines()[0][:80]}"


def read_file(path: str | os.PathLike) -> tuple[bytes, os.stat_result]:
    """All bytes of ``path`` and its stat as of that read (one open): the indexer hashes and
    decodes the same bytes, so each file is read once. Raises :class:`SkipFile`."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise SkipFile(_reason_for_oserror(e, path)) from None
    if not data:
        raise SkipFile("empty file")
    return data, st


def open_image(source: str | os.PathLike | bytes | BinaryIO, draft_size: int | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode ``source`` (a path, the file's bytes, or a binary stream such as an upload) fully,
    so truncation is caught here and not later, into an RGB image with EXIF orientation applied.

    ``draft_size``: JPEGs may be decoded at a reduced scale whose shorter side is still at
    least this many pixels (PIL ``draft``), which is several times faster for large photos.
    ``max_pixels``: larger images are refused from their header, before decoding.
    """
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        source = read_file(path)[0]
    if isinstance(source, bytes):
        if not source:
            raise SkipFile("empty file")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=list(PIL_FORMATS.values())) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise SkipFile("decompression bomb", f"{w}x{h} pixels, more than the limit of {max_pixels:,}")
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))
                im.load()
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF rotations by 90 degrees
                    w, h = h, w
                im = ImageOps.exif_transpose(im)
                if im.mode != "RGB":
                    im = im.convert("RGBA").convert("RGB") if "transparency" in im.info else im.convert("RGB")
                return Decoded(im, w, h)
    except SkipFile:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SkipFile("decompression bomb") from None
    except UnidentifiedImageError:
        raise SkipFile("not an image", f"accepted: {', '.join(PIL_FORMATS)}") from None
    except OSError as e:
        raise SkipFile(_reason_for_oserror(e, path)) from None
    except (ValueError, SyntaxError, IndexError, struct_error, EOFError, TypeError) as e:
        raise SkipFile(f"corrupt image: {type(e).__name__}") from None
