"""Decoding images inside the web server: uploads from clients and indexed files for thumbnails.

The web UI may not import ``indexer`` (dependencies point webui -> retrieval -> indexer), so
it decodes with PIL here, under the same rules: only the formats the indexer accepts (PIL
plugins such as EPS would run external programs), the pixel count checked from the header
before anything is decoded, and every failure turned into :class:`BadImage` with a short reason.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

# The formats discovery sniffs (dinoret.indexer.decode.sniff_format), by PIL's names.
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
# What a browser displays as is; other formats are shown through a JPEG rendition.
BROWSER_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})


class BadImage(ValueError):
    """Not a usable image; ``reason`` is short and safe to show to a client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def open_rgb(source: str | os.PathLike | BinaryIO, max_pixels: int, draft: int | None = None) -> Image.Image:
    """Fully decoded RGB image with EXIF orientation applied.

    ``draft``: a JPEG may be decoded at a reduced scale whose sides stay at least this
    large (much faster for thumbnails of large photos).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImage(f"image has {w}x{h} pixels, more than the limit of {max_pixels:,}")
                if draft and im.format == "JPEG":
                    im.draft("RGB", (draft, draft))
                im.load()
                im = ImageOps.exif_transpose(im)
                if im.mode != "RGB":
                    im = im.convert("RGBA").convert("RGB") if "transparency" in im.info else im.convert("RGB")
                return im
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage("image has too many pixels (decompression bomb)") from None
    except UnidentifiedImageError:
        raise BadImage(f"not an image (accepted: {', '.join(f.lower() for f in FORMATS)})") from None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise BadImage("truncated image" if "truncated" in str(e).lower() else "unreadable image") from None
    except (ValueError, SyntaxError, IndexError, EOFError, TypeError) as e:
        raise BadImage(f"corrupt image ({type(e).__name__})") from None


def image_format(path: str | os.PathLike) -> str | None:
    """PIL's format name of the file at ``path`` (header only), or None if it is not an accepted image."""
    try:
        with Image.open(path, formats=FORMATS) as im:
            return im.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def to_jpeg(img: Image.Image, size: int, quality: int = 85) -> bytes:
    """``img`` shrunk to fit ``size`` x ``size`` (never enlarged), as JPEG bytes."""
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()
