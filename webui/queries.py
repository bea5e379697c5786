"""Searches as the pages and the API run them: by an indexed id or by an uploaded image.

Both go through the one :class:`dinoret.Index` the app holds (``Index.search``, as ``dinoret
query`` and the Python API search). Embedding an upload runs the backbone, which already uses every core for one image; a lock lets one
upload through at a time so that concurrent uploads queue instead of fighting over the
cores and memory. Searches by id only read vectors and Faiss shards and run concurrently.
"""
from __future__ import annotations

import re
import threading
from dataclasses import asdict

from flask import abort, current_app
from PIL import Image
from werkzeug.datastructures import FileStorage

from dinoret.indexer.decode import open_image

_model_lock = threading.Lock()
_WHOLE = re.compile(r"[+-]?[0-9]{1,19}")  # ASCII digits only: int() would also take "1_0" and "١"
MAX_ID = 2**63 - 1  # ids are signed 64-bit (Faiss, LMDB keys, SQLite)


def index():
    """The app's index (a :class:`dinoret.Index`)."""
    return current_app.extensions["dinoret.index"]


def reader():
    """The app's index reader (records, vectors, catalog), below the API."""
    return current_app.extensions["dinoret.reader"]


def whole_number(value) -> int | None:
    """``value`` from a form, query string or JSON body as an int, or None unless it is a whole
    number written as one (JSON true, 1.9, 1e23 or NaN are not; "12" and 12 are)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _WHOLE.fullmatch(value.strip()):
        return int(value)
    return None


def parse_k(value) -> int:
    """``k`` from a request (default ``K_DEFAULT``), 400 unless 1 <= k <= ``K_MAX``."""
    if value in (None, ""):
        return current_app.config["K_DEFAULT"]
    kmax = current_app.config["K_MAX"]
    k = whole_number(value)
    if k is None:
        abort(400, description=f"k must be a whole number from 1 to {kmax}")
    if not 1 <= k <= kmax:
        abort(400, description=f"k must be from 1 to {kmax}")
    return k


def parse_id(value) -> int:
    """An image id from a request: 400 unless it is a whole number, 404 unless it is in the index."""
    image_id = whole_number(value)
    if image_id is None:
        abort(400, description="id must be the whole-number id of an indexed image")
    record_or_404(image_id)
    return image_id


def record_or_404(image_id: int):
    record = reader().record(image_id) if 0 <= image_id <= MAX_ID else None
    if record is None:
        abort(404, description=f"no image with id {image_id} in the index")
    return record


def record_dict(record) -> dict:
    return asdict(record)


def search_by_id(image_id: int, k: int) -> list[dict]:
    """The ``k`` images most like indexed image ``image_id``, leaving out the image itself."""
    return [asdict(h) for h in index().search(image_id, k=k)]


def decode_upload(upload: FileStorage | None) -> Image.Image:
    """The uploaded file as an RGB image, decoded by the indexer's decoder; ``SkipFile`` (a 400)
    for anything else."""
    if upload is None:
        abort(400, description="no image uploaded (multipart field 'image')")
    return open_image(upload.stream, max_pixels=current_app.config["MAX_UPLOAD_PIXELS"]).image


def search_by_image(image: Image.Image, k: int) -> list[dict]:
    """The ``k`` indexed images most like ``image``, embedded as the collection was."""
    with _model_lock:
        hits = index().search(image, k=k)
    return [asdict(h) for h in hits]
