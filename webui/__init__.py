"""The Flask web UI and JSON API over one index: ``create_app(index_dir)``; ``dinoret serve`` runs it."""
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


def create_app(index_dir: str | os.PathLike | None = None, config: dict | None = None) -> Flask:
    """The app over the index in ``index_dir`` (``config["INDEX_DIR"]`` or ``.dinoret`` if None).

    Raises ``UserError`` if there is no index there.
    """
    from dinoret.retrieval.index import open_index
    from dinoret.core.units import human_size
    from dinoret.webui import api, errors, clusters, pages, queries, security

    app = Flask(__name__)
    app.url_map.converters["int"] = _Int64Converter  # before any route is added
    app.config.from_mapping(DEFAULTS)
    app.config.update(config or {})
    if index_dir is not None:
        app.config["INDEX_DIR"] = os.fspath(index_dir)
    app.json = _JSONProvider(app)

    reader = open_index(app.config["INDEX_DIR"])
    app.extensions["dinoret.reader"] = reader
    if app.config["THUMB_DIR"] is None:
        app.config["THUMB_DIR"] = Path(reader.root) / "thumbs"
    queries.load_embedder(app)

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
