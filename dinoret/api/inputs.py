"""What the API accepts as an image (a file, a PIL image, a uint8 array) and as a search query
(an image, an indexed id, or an embedding vector)."""
from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from PIL import Image

from dinoret.core.errors import NotFound, UserError
from dinoret.indexer.decode import SkipFile, open_image

NO_SUCH_FILE = "no such file"
A_FOLDER = "a folder, not an image file"


class UnreadableImage(UserError):
    """An image file that cannot be read: ``path`` and a short ``reason`` (``no such file``,
    ``a folder, not an image file``, or why the decoder refused it, as ``dinoret info
    --skipped`` lists it)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot read image {os.fspath(path)}: {reason}")
        self.path, self.reason = os.fspath(path), reason


class MissingImage(UnreadableImage, NotFound):
    """An image file that does not exist."""


def read_image_file(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """The file decoded exactly as ``dinoret index`` decodes files (EXIF orientation, RGB, bomb
    and truncation checks; ``draft_size``: JPEG draft decoding); :class:`UnreadableImage` if not."""
    if not os.path.lexists(path):
        raise MissingImage(path, NO_SUCH_FILE)
    if os.path.isdir(path):
        raise UnreadableImage(path, A_FOLDER)
    try:
        return open_image(path, draft_size=draft_size).image
    except SkipFile as e:
        raise UnreadableImage(path, e.reason) from None


def check_arg(name: str, value, choices=None, at_least: int | None = None, optional: bool = False) -> None:
    """Refuse (:class:`UserError` naming parameter ``name``) a value not in ``choices`` or not a
    whole number of at least ``at_least``; None passes when ``optional``."""
    if value is None and optional:
        return
    if choices is not None and value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, not {value!r}", param=name)
    if at_least is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                                 or value < at_least):
        raise UserError(f"{name} must be a whole number of at least {at_least}, not {value!r}", param=name)


def as_image(item, draft_size: int | None = None) -> Image.Image:
    """An RGB PIL image from a file path (decoded exactly as ``dinoret index`` decodes files), a
    PIL image, or a uint8 array (H×W grey, H×W×1, H×W×3 RGB or H×W×4 RGBA)."""
    if isinstance(item, (str, os.PathLike)):
        return read_image_file(item, draft_size)
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise UserError(f"an image array must be uint8 H×W or H×W×(1|3|4), not {item.dtype} {item.shape}")
        return Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item).convert("RGB")
    raise UserError(f"not an image: {type(item).__name__} (give a file path, a PIL image or a uint8 array)")


def as_items(images) -> list:
    """One image or a sequence of them, as a list."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    return [images]


def is_id(query) -> bool:
    return isinstance(query, (int, np.integer)) and not isinstance(query, (bool, np.bool_))


def is_vector(query) -> bool:
    """A 1-D numeric array is an embedding (an image array has two or three axes)."""
    return isinstance(query, np.ndarray) and query.ndim == 1 and query.dtype.kind in "fiu"


def split_queries(query, dim: int) -> tuple[list, bool]:
    """(the queries as a list, whether one query was given rather than a list of them).

    A list or tuple is many queries; so is a float (N, dim) array (N embeddings)."""
    if isinstance(query, (list, tuple)):
        return list(query), False
    if isinstance(query, np.ndarray) and query.ndim == 2 and query.dtype.kind == "f" and query.shape[1] == dim:
        return list(query), False
    return [query], True


def check_vector(v: np.ndarray, dim: int) -> np.ndarray:
    if v.shape != (dim,):
        raise UserError(f"a query vector must have the index's dimension {dim}, not shape {v.shape}")
    return v.astype(np.float32)
