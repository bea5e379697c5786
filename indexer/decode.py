"""Reading one image file safely: every failure becomes a :class:`SkipFile` with a short reason."""
from __future__ import annotations

import errno
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error  # PIL raises it for some malformed headers

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


class SkipFile(Exception):
    """A file that is not indexed; ``reason`` is short and stable (it is counted and shown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Decoded:
    image: Image.Image  # RGB, EXIF orientation applied, possibly reduced by JPEG draft
    width: int  # of the full image, after orientation
    height: int


def _reason_for_oserror(e: OSError, path: Path) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOENT:
        return "broken symlink" if path.is_symlink() else "file vanished"
    if e.errno == errno.ELOOP:
        return "symlink loop"
    msg = str(e).lower()
    if "truncated" in msg:
        return "truncated image"
    return f"unreadable: {str(e).splitlines()[0][:80]}"


def open_image(path: str | os.PathLike, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode ``path`` fully (so truncation is caught here, not later) into an RGB image.

    ``draft_size``: JPEGs may be decoded at a reduced scale whose shorter side is still at
    least this many pixels (PIL ``draft``), which is several times faster for large photos.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise SkipFile("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise SkipFile("decompression bomb")
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
        raise SkipFile("not an image") from None
    except OSError as e:
        raise SkipFile(_reason_for_oserror(e, path)) from None
    except (ValueError, SyntaxError, IndexError, struct_error, EOFError) as e:
        raise SkipFile(f"corrupt image: {type(e).__name__}") from None
