"""The JSON API under ``/api`` (described by ``/api/openapi.json``, see webui/openapi.py)."""
from __future__ import annotations

import io

from flask import Blueprint, abort, current_app, jsonify, request, send_file, url_for

from dinoret.indexer.decode import MIME_TYPES, SkipFile
from dinoret.webui import queries
from dinoret.webui.imaging import image_format
from dinoret.webui.openapi import openapi_document
from dinoret.webui.security import read_only
from dinoret.webui.thumbnails import thumbnail

bp = Blueprint("api", __name__, url_prefix="/api")


def _links(image_id: int) -> dict:
    return {
        "self": url_for("api.image", image_id=image_id),
        "file": url_for("api.image_file", image_id=image_id),
        "thumbnail": url_for("api.image_thumbnail", image_id=image_id),
        "page": url_for("pages.image", image_id=image_id),
    }


@bp.post("/search")
@read_only
def search():
    body = request.get_json() if request.is_json else None  # malformed JSON: a 400
    args = body if isinstance(body, dict) else request.form
    k = queries.parse_k(args.get("k", request.args.get("k")))
    upload = request.files.get("image")
    if upload is not None and args.get("id") not in (None, ""):
        abort(400, description="send either an image or an id, not both")
    if upload is not None:
        image = queries.decode_upload(upload)
        query = {"upload": {"width": image.width, "height": image.height}}
        hits = queries.search_by_image(image, k)
    elif args.get("id") not in (None, ""):
        image_id = queries.parse_id(args["id"])
        query = {"id": image_id}
        hits = queries.search_by_id(image_id, k)
    else:
        abort(400, description="send an image (multipart field 'image') or the id of an indexed image ('id')")
    return jsonify(query=query, k=k, results=[{**h, "links": _links(h["id"])} for h in hits])


@bp.get("/images/<int:image_id>")
def image(image_id: int):
    record = queries.record_or_404(image_id)
    return jsonify(**queries.record_dict(record), links=_links(image_id))


@bp.get("/images/<int:image_id>/thumbnail")
def image_thumbnail(image_id: int):
    record = queries.record_or_404(image_id)
    sizes = current_app.config["THUMB_SIZES"]
    size = queries.whole_number(request.args.get("size", str(sizes[1])))
    if size not in sizes:
        abort(400, description=f"size must be one of {', '.join(map(str, sizes))}")
    try:
        thumb = thumbnail(current_app.config["THUMB_DIR"], record, size, current_app.config["MAX_IMAGE_PIXELS"])
    except SkipFile as e:  # the indexed file is gone or changed on disk: not the request's fault
        abort(404, description=f"image {image_id} is no longer on disk as a readable image ({e})")
    return send_file(io.BytesIO(thumb) if isinstance(thumb, bytes) else thumb, mimetype="image/jpeg", max_age=86400)


@bp.get("/images/<int:image_id>/file")
def image_file(image_id: int):
    record = queries.record_or_404(image_id)
    fmt = image_format(record.path)
    if fmt is None:
        abort(404, description=f"image {image_id} is no longer on disk as a readable image")
    return send_file(record.path, mimetype=MIME_TYPES[fmt], max_age=3600, conditional=True)


@bp.get("/stats")
def stats():
    return jsonify(queries.index().info())


@bp.get("/dedup/reports")
def dedup_reports():
    return jsonify(reports=queries.index().reports())


@bp.get("/dedup/reports/<int:report_id>")
def dedup_report(report_id: int):
    return jsonify(queries.index().report(report_id).to_dict())  # NotFound: a 404


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(current_app.config))
