"""Error responses: JSON ``{"error": ...}`` under ``/api/``, a plain HTML page elsewhere; never a traceback."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException, InternalServerError

from dinoret.core.errors import IndexUnavailable, NotFound, UserError
from dinoret.core.units import human_size
from dinoret.indexer.decode import SkipFile

log = logging.getLogger("dinoret.webui")


def _respond(status: int, title: str, message: str, headers: dict | None = None):
    if request.path.startswith("/api/") or request_ctx.url_adapter is None:
        # No URL adapter: the Host header was refused, and no page template can build its links.
        response = jsonify(error=message, status=status)
    else:
        response = render_template("error.html", status=status, title=title, message=message)
    return response, status, headers or {}


def _http_error(e: HTTPException):
    if e.code == 401:
        if not request.path.startswith("/api/") and request_ctx.url_adapter is not None:
            return render_template("login.html", next=request.full_path.rstrip("?")), 401
        return _respond(401, e.name, "a bearer token is required", {"WWW-Authenticate": 'Bearer realm="dinoret"'})
    if e.code == 413:
        limit = request.max_content_length or 0
        return _respond(413, e.name, f"upload larger than the limit of {human_size(limit)}")
    headers = {k: v for k, v in e.get_headers() if k.lower() == "allow"}
    return _respond(e.code or 500, e.name, e.description or e.name, headers)


def _bad_image(e: SkipFile):
    # Only uploads reach this: views that decode stored files turn SkipFile into a 404 themselves.
    return _respond(400, "Bad image", str(e))


def _user_error(e: UserError):
    """The kind of error decides the status: the request named something that does not exist
    (404), the index on disk cannot answer (503: not the client's fault), else a bad request."""
    if isinstance(e, NotFound):
        return _respond(404, "Not found", str(e))
    if isinstance(e, IndexUnavailable):
        log.error("index unavailable while serving %s %s: %s", request.method, request.path, e)
        return _respond(503, "Index unavailable", str(e))
    return _respond(400, "Bad request", str(e))


def _unexpected(e: Exception):
    log.exception("error while serving %s %s", request.method, request.path)  # the traceback stays in the log
    return _respond(500, InternalServerError.name, "internal error; see the server log")


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(SkipFile, _bad_image)
    app.register_error_handler(UserError, _user_error)
    app.register_error_handler(Exception, _unexpected)
