"""The Clusters page: browse the index's clustering (`dinoret curate clusters`) level by level.

``/clusters`` lists the top-level clusters, ``/clusters/<level>/<cluster>`` one cluster: its
children (above the leaves) or its images, nearest the centroid first. Every picture links
to "more like this". The clustering is loaded once per catalog row and index state and kept.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from flask import Blueprint, abort, current_app, render_template, request

from dinoret.retrieval import clusterings
from dinoret.retrieval.curate_clusters import index_clustering, members_by_cluster, representatives
from dinoret.webui import queries

bp = Blueprint("clusters", __name__)

CLUSTERS_PER_PAGE = 24
IMAGES_PER_PAGE = 48
THUMBS_PER_CLUSTER = 4
_lock = threading.Lock()


class _View:
    """One loaded clustering, lined up with the index, and what the pages derive from it."""

    def __init__(self, reader) -> None:
        self.h, self.row, self.notes = index_clustering(reader)
        self._groups: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._children: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._sizes = {level: self.h.sizes(level) for level in range(1, self.h.depth + 1)}

    def sizes(self, level: int) -> np.ndarray:
        return self._sizes[level]

    def members(self, level: int, cluster: int) -> np.ndarray:
        if level not in self._groups:
            self._groups[level] = members_by_cluster(self.h, level)
        order, bounds = self._groups[level]
        return order[bounds[cluster] : bounds[cluster + 1]]

    def children(self, level: int, cluster: int) -> np.ndarray:
        """Level-(level-1) clusters under ``cluster``, largest first."""
        if level not in self._children:
            parent = self.h.parents[level - 2]
            order = np.argsort(parent, kind="stable")
            self._children[level] = (order, np.searchsorted(parent[order], np.arange(self.h.levels[level - 1] + 1)))
        order, bounds = self._children[level]
        kids = order[bounds[cluster] : bounds[cluster + 1]]
        return kids[np.lexsort((kids, -self.sizes(level - 1)[kids]))]


def _view() -> _View | None:
    """The app's clustering view, reloaded when the clustering or the index changed; None if there is none."""
    reader = queries.reader()
    row = clusterings.current_row(reader.engine)
    if row is None:
        return None
    key = (row.id, reader.meta.counters()["next_id"], len(reader))
    with _lock:
        cached = current_app.extensions.get("dinoret.clusters")
        if cached is None or cached[0] != key:
            cached = (key, _View(reader))
            current_app.extensions["dinoret.clusters"] = cached
        return cached[1]


def _card(view: _View, level: int, cluster: int) -> dict:
    reader = queries.reader()
    reps = representatives(reader, view.h, level, cluster, view.members(level, cluster), THUMBS_PER_CLUSTER)
    return {"level": level, "cluster": int(cluster), "images": int(view.sizes(level)[cluster]),
            "children": len(view.children(level, cluster)) if level > 1 else 0,
            "thumbs": [int(i) for i in view.h.ids[reps]]}


def _page(total: int, per_page: int) -> tuple[int, int]:
    pages = max(1, math.ceil(total / per_page))
    return min(max(request.args.get("page", 1, type=int), 1), pages), pages


def _levels(view: _View) -> list[dict]:
    out = []
    for level in range(1, view.h.depth + 1):
        sizes = view.sizes(level)
        nz = sizes[sizes > 0]
        out.append({"level": level, "clusters": view.h.levels[level - 1], "min": int(nz.min(initial=0)),
                    "median": int(np.median(nz)) if len(nz) else 0, "max": int(nz.max(initial=0))})
    return out


@bp.get("/clusters")
def overview():
    view = _view()
    if view is None:
        return render_template("clusters.html", view=None)
    top = view.h.depth
    sizes = view.sizes(top)
    order = [int(c) for c in np.lexsort((np.arange(len(sizes)), -sizes)) if sizes[c] > 0]
    page, pages = _page(len(order), CLUSTERS_PER_PAGE)
    cards = [_card(view, top, c) for c in order[(page - 1) * CLUSTERS_PER_PAGE : page * CLUSTERS_PER_PAGE]]
    return render_template("clusters.html", view=view, row=view.row.to_dict(), levels=_levels(view), cards=cards,
                           page=page, pages=pages, images=len(view.h.ids))


@bp.get("/clusters/<int:level>/<int:cluster>")
def cluster(level: int, cluster: int):
    view = _view()
    if view is None:
        abort(404, description="the index has no clustering: run `dinoret curate clusters`")
    if not (1 <= level <= view.h.depth and 0 <= cluster < view.h.levels[level - 1]):
        abort(404, description=f"no cluster {cluster} at level {level}")
    trail = []  # the clusters above this one, top first
    c = cluster
    for up in range(level, view.h.depth):
        c = int(view.h.parents[up - 1][c])
        trail.insert(0, {"level": up + 1, "cluster": c})
    if level > 1:
        kids = view.children(level, cluster)
        kids = [int(k) for k in kids if view.sizes(level - 1)[k] > 0]
        page, pages = _page(len(kids), CLUSTERS_PER_PAGE)
        cards = [_card(view, level - 1, k) for k in kids[(page - 1) * CLUSTERS_PER_PAGE : page * CLUSTERS_PER_PAGE]]
        return render_template("cluster.html", level=level, cluster=cluster, trail=trail, cards=cards, hits=None,
                               images=int(view.sizes(level)[cluster]), page=page, pages=pages, depth=view.h.depth)
    members = view.members(1, cluster)
    members = members[np.lexsort((members, -view.h.sims[members]))]
    page, pages = _page(len(members), IMAGES_PER_PAGE)
    shown = members[(page - 1) * IMAGES_PER_PAGE : page * IMAGES_PER_PAGE]
    records = {r.id: r for r in queries.reader().records(view.h.ids[shown])}
    hits = [{"id": int(i), "path": records[int(i)].path, "score": float(view.h.sims[p])}
            for p, i in zip(shown.tolist(), view.h.ids[shown].tolist()) if int(i) in records]
    return render_template("cluster.html", level=level, cluster=cluster, trail=trail, cards=None, hits=hits,
                           images=len(members), page=page, pages=pages, depth=view.h.depth,
                           k=current_app.config["K_DEFAULT"])
