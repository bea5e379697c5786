"""Server-rendered pages: home (index summary + search box), results, one image, duplicates, login."""
from __future__ import annotations

import base64
import math
import unicodedata
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for

from dinoret.retrieval import reports
from dinoret.webui import queries, security
from dinoret.webui.imaging import BROWSER_FORMATS, image_format, to_jpeg

bp = Blueprint("pages", __name__)

GROUPS_PER_PAGE = 50
SKIPPED_SHOWN = 100
K_CHOICES = (8, 16, 32, 64)


@bp.get("/")
def home():
    idx = queries.index()
    return render_template("home.html", stats=idx.info(), skipped=idx.skipped()[:SKIPPED_SHOWN], k_choices=K_CHOICES,
                           k=current_app.config["K_DEFAULT"])


@bp.route("/search", methods=["GET", "POST"])
def search():
    form = request.form if request.method == "POST" else request.args
    k = queries.parse_k(form.get("k"))
    if request.method == "POST":
        image = queries.decode_upload(request.files.get("image"))
        hits = queries.search_by_image(image, k)
        preview = "data:image/jpeg;base64," + base64.b64encode(to_jpeg(image, 256)).decode()
        return render_template("results.html", hits=hits, k=k, k_choices=K_CHOICES, query_preview=preview,
                               query_record=None)
    if "id" not in form:
        return redirect(url_for("pages.home"))
    image_id = queries.parse_id(form["id"])
    return render_template("results.html", hits=queries.search_by_id(image_id, k), k=k, k_choices=K_CHOICES,
                           query_preview=None, query_record=queries.reader().record(image_id))


@bp.get("/images/<int:image_id>")
def image(image_id: int):
    record = queries.record_or_404(image_id)
    fmt = image_format(record.path)
    return render_template("image.html", record=record, fmt=fmt, in_browser=fmt in BROWSER_FORMATS,
                           k=current_app.config["K_DEFAULT"])


@bp.get("/duplicates")
def duplicates():
    return render_template("duplicates.html", reports=queries.index().reports())


def _load_report(report_id: int) -> dict:
    return queries.index().report(report_id).to_dict()  # NotFound: a 404


@bp.get("/duplicates/<int:report_id>")
def report(report_id: int):
    rep = _load_report(report_id)
    pages = max(1, math.ceil(len(rep["groups"]) / GROUPS_PER_PAGE))
    page = min(max(request.args.get("page", 1, type=int), 1), pages)
    groups = rep["groups"][(page - 1) * GROUPS_PER_PAGE : page * GROUPS_PER_PAGE]
    return render_template("report.html", report=rep, groups=groups, page=page, pages=pages)


def _group_member_ids(report_id: int, group: int) -> list[int]:
    # Members come from the stored report, never from the form: a reviewer acts on a real group.
    for g in _load_report(report_id)["groups"]:
        if g["group"] == group:
            return [m["id"] for m in g["members"] if m["id"] is not None]
    abort(404, description=f"report {report_id} has no group {group}")


def _back_to(report_id: int, group: int):
    page = request.form.get("page", 1, type=int)
    return redirect(url_for("pages.report", report_id=report_id, page=page, _anchor=f"group-{group}"), 303)


@bp.post("/duplicates/<int:report_id>/groups/<int:group>/verdict")
def set_verdict(report_id: int, group: int):
    verdict = request.form.get("verdict") or None
    if verdict not in reports.VERDICTS:
        abort(400, description="verdict must be 'not_duplicates' or empty")
    ids = _group_member_ids(report_id, group)
    if len(ids) < 2:
        abort(400, description="this group has fewer than two indexed images to review")
    queries.index().review(ids, not_duplicates=verdict == "not_duplicates")
    return _back_to(report_id, group)


@bp.post("/duplicates/<int:report_id>/groups/<int:group>/keeper")
def set_keeper(report_id: int, group: int):
    keeper = request.form.get("keeper", type=int)
    ids = _group_member_ids(report_id, group)
    if keeper not in ids or len(ids) < 2:
        abort(400, description="the keeper must be an indexed member of the group")
    queries.index().review(ids, keeper=keeper)
    return _back_to(report_id, group)


def _local(target: str | None) -> str:
    """``target`` if it is a path on this server, else the home page (no open redirects).

    Browsers drop tabs and newlines inside a URL, so ``/\t/evil.com`` would become
    ``//evil.com``: any whitespace or control character sends the user home instead (a
    newline would also be refused in a header)."""
    home = url_for("pages.home")
    if not target or any(ch.isspace() or unicodedata.category(ch)[0] == "C" for ch in target):
        return home
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return home
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else home


@bp.route("/login", methods=["GET", "POST"])
def login():
    nxt = _local(request.values.get("next"))
    if not current_app.config["API_TOKEN"]:
        return redirect(nxt, 303)
    if request.method == "POST":
        if security.login(request.form.get("token", "")):
            return redirect(nxt, 303)
        return render_template("login.html", next=nxt, wrong=True), 401
    return render_template("login.html", next=nxt)
