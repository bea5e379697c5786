"""The Flask web UI and JSON API over one index: ``create_app(index_dir)``; ``dinoret serve`` runs it.

The app holds one :class:`dinoret.Index` (the Python API's handle; ``app.extensions["dinoret.index"]``)
and searches, reads reports and records reviews through it, as ``dinoret query`` and
``dinoret dedup`` do."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter

DEFAULTS = {
    "INDEX_DIR": ".dinoret",
    "MAX_CONTENT_LENGTH": 20 * 2**20,  # upload bytes (413 beyond)
    "MAX_UPLOAD_PIXELS": 40_000_000,  # upload pixels, checked from the header before decoding (400 beyond)
    "MAX_IMAGE_PIXELS": 89_478_485,  # indexed files decoded for thumbnails (the indexer's own limit)
    "API_TOKEN": None,  # when set, every route needs it (see webui/security.py)
    "TRUSTED_HOSTS": ["localhost", "127.0.0.1"],
    "DEVICE": "auto",
    "WEIGHTS": None,  # weights file for embedding uploads; None: the one the index was built with
    "K_DEFAULT": 16,
    "K_MAX": 100,
    "THUMB_SIZES": (128, 256, 512),
    "THUMB_DIR": None,  # default <index>/thumbs
}


class _Int64Converter(IntegerConverter):
    """``<int:...>`` in every route: ids past 2^63 - 1 (what SQLite and the LMDB keys hold) do not
    match the route, so they are a 404 instead of an overflow deep inside a lookup."""

    def __init__(self, map, *args, **kwargs) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(map, *args, **kwargs)


class _JSONProvider(DefaultJSONProvider):
    """ISO 8601 dates (Flask's default is the HTTP date format) and no key reordering."""

    sort_keys = False

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            # Deeply nested input: a ValueError is what Flask turns into a 400 (a bad body).
            raise ValueError("JSON nested too deeply") from None

    @staticmethod
    def default(o):
        if isinstance(o, (dt.datetime, dt.date)):
            return o.isoformat()
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        return DefaultJSONProvider.default(o)


def create_app(index_dir=None, config: dict | None = None) -> Flask:
    """The app over the index in ``index_dir`` (a folder, or a :class:`dinoret.Index` already
    open; ``config["INDEX_DIR"]`` or ``.dinoret`` if None), with the model that embeds uploads
    loaded now (``config["DEVICE"]``, ``config["WEIGHTS"]``).

    Raises ``UserError`` if there is no index there or its weights cannot be loaded.
    """
    from dinoret.api.handle import Index, open as open_index
    from dinoret.core.units import human_size
    from dinoret.webui import api, errors, clusters, pages, queries, security

    app = Flask(__name__)
    app.url_map.converters["int"] = _Int64Converter  # before any route is added
    app.config.from_mapping(DEFAULTS)
    app.config.update(config or {})
    if isinstance(index_dir, Index):
        index, app.config["INDEX_DIR"] = index_dir, os.fspath(index_dir.root)
    else:
        if index_dir is not None:
            app.config["INDEX_DIR"] = os.fspath(index_dir)
        index = open_index(app.config["INDEX_DIR"], device=app.config["DEVICE"], weights=app.config["WEIGHTS"])
    app.json = _JSONProvider(app)

    index.writable = not index.read_only  # reviewers' verdicts are stored, where the index can be written
    # The model now: missing or mismatched weights stop the server at start, not at the first upload.
    index.load(model=True, shards=False)
    app.extensions["dinoret.index"] = index
    app.extensions["dinoret.reader"] = index.reader  # the clusters page reads records and vectors below the API
    if app.config["THUMB_DIR"] is None:
        app.config["THUMB_DIR"] = Path(index.root) / "thumbs"

    security.init_app(app)
    errors.init_app(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(clusters.bp)
    app.jinja_env.filters["bytes"] = human_size
    app.jinja_env.filters["when"] = _when
    return app


def _when(value: float | dt.datetime | None) -> str:
    """A file time (epoch seconds, shown in local time) or a catalog time (naive UTC)."""
    if value is None:
        return "—"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds") + " UTC"
    return dt.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")
