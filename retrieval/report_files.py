"""Dedup reports as files: HTML (self-contained, thumbnails embedded), JSON and CSV.

All three are written from one dict, the shape of ``DedupResult.to_dict()`` /
``dinoret.retrieval.reports.load_report``. The HTML opens offline from disk: no script, no font,
no image outside the file (thumbnails are small base64 JPEGs).
"""
from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path

import jinja2
from tqdm import tqdm

from dinoret.indexer.decode import SkipFile, open_image
from dinoret.core.errors import UserError
from dinoret.core.files import atomic_write
from dinoret.core.units import human_size

FORMATS = ("html", "json", "csv")
CSV_COLUMNS = ("group", "id", "path", "is_keeper", "score", "reason", "width", "height", "size", "external")
_SUFFIXES = {".html": "html", ".htm": "html", ".json": "json", ".csv": "csv"}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def render_template(name: str, **context) -> str:
    """One of the report templates (``retrieval/templates``) rendered with ``context``."""
    return _env.get_template(name).render(**context)


def report_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The format asked for, else the one the file name says."""
    if fmt:
        if fmt not in FORMATS:
            raise UserError(f"unknown report format {fmt!r}: use html, json or csv", param="fmt")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise UserError(f"cannot tell the report format from {Path(path).name!r}: name the format (html, json or csv)",
                        param="fmt")
    return _SUFFIXES[suffix]


def thumbnail_data_uri(path: str | os.PathLike, size: int = 160, quality: int = 70) -> str | None:
    """A ``data:image/jpeg;base64`` thumbnail, or None when the file cannot be read any more."""
    try:
        img = open_image(path, draft_size=size).image
    except SkipFile:
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(report: dict, thumb_size: int = 160, progress: bool = False) -> str:
    n_images = sum(len(g["members"]) for g in report["groups"])
    bar = tqdm(total=n_images, desc="thumbnails", unit="img", disable=not progress)
    groups = []
    for g in report["groups"]:
        members = []
        for m in g["members"]:
            members.append({**m, "name": Path(m["path"]).name, "size_text": human_size(m["size"]),
                            "thumb": thumbnail_data_uri(m["path"], thumb_size)})
            bar.update()
        groups.append({**g, "members": members})
    bar.close()
    params = sorted((k, str(v)[:16] + "…" if k == "weights_sha256" else v)
                    for k, v in report.get("params", {}).items() if v is not None and not isinstance(v, dict))
    return _env.get_template("dedup_report.html").render(
        report={"id": report.get("id"), "created": report.get("created"), "groups": report["groups"]},
        groups=groups, params=params, n_images=n_images,
    )


def render_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for g in report["groups"]:
        for m in g["members"]:
            w.writerow({**m, "group": g["group"], "score": f"{m['score']:.6f}"})
    return buf.getvalue()


def render_json(report: dict) -> str:
    return json.dumps(report, indent=1, default=str)


def write_report(report: dict, path: str | os.PathLike, fmt: str | None = None, thumb_size: int = 160,
                 progress: bool = False) -> Path:
    """Write ``report`` to ``path`` (through a temporary name, so a cut leaves no half file)."""
    path = Path(path)
    fmt = report_format(path, fmt)
    if fmt == "html":
        text = render_html(report, thumb_size, progress)
    elif fmt == "csv":
        text = render_csv(report)
    else:
        text = render_json(report)
    return atomic_write(path, text)
