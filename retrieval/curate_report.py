"""The HTML report of a curation run: one file that opens offline (thumbnails embedded as
base64 JPEGs, no script, no font, nothing outside the file), like the dedup report.

It shows the cluster tree (clusters per level with their sizes in the pool and in the
selection; collapsible, largest first), for the largest clusters a gallery of their images
nearest the centroid (the selected ones marked), the images left out by ``--exclude`` with
the excluded image each one copies, and for a retrieval the seeds with what they found.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dinoret.core.files import atomic_path
from dinoret.retrieval.curate_clusters import members_by_cluster, representatives
from dinoret.retrieval.report_files import render_template, thumbnail_data_uri

GALLERIES = 120  # clusters that get a gallery (largest first, top levels first)
GALLERY_SIZE = 6
CHILDREN_SHOWN = 40  # children listed per cluster (largest first)
SEEDS_SHOWN = 24
EXCLUDED_SHOWN = 300
THUMB = 128


class _Thumbs:
    """Thumbnails by path, made once each, with a progress bar."""

    def __init__(self, progress: bool) -> None:
        self.cache: dict[str, str | None] = {}
        self.bar = tqdm(desc="report thumbnails", unit="img", disable=not progress)

    def __call__(self, path: str) -> str | None:
        if path not in self.cache:
            self.cache[path] = thumbnail_data_uri(path, THUMB)
            self.bar.update()
        return self.cache[path]


def _tree(reader, h, eligible, chosen_mask, thumbs) -> tuple[list[dict], list[dict]]:
    """(top-level clusters as nested dicts, per-level size summary)."""
    levels = []
    groups = {}
    sizes_pool, sizes_sel, sizes_all = {}, {}, {}
    for level in range(1, h.depth + 1):
        sizes_all[level] = h.sizes(level)
        sizes_pool[level] = h.sizes(level, eligible)
        sizes_sel[level] = h.sizes(level, chosen_mask)
        groups[level] = members_by_cluster(h, level)
        sel = sizes_sel[level]
        levels.append({"level": level, "clusters": h.levels[level - 1],
                       "pool": _stats(sizes_pool[level]), "selected": _stats(sel),
                       "clusters_selected": int((sel > 0).sum())})
    children = {level: {} for level in range(2, h.depth + 1)}
    for level in range(2, h.depth + 1):
        parent = h.parents[level - 2]
        order = np.argsort(parent, kind="stable")
        bounds = np.searchsorted(parent[order], np.arange(h.levels[level - 1] + 1))
        for c in range(h.levels[level - 1]):
            kids = order[bounds[c] : bounds[c + 1]]
            children[level][c] = kids[np.lexsort((kids, -sizes_all[level - 1][kids]))]
    budget = [GALLERIES]
    records_of = {}

    def node(level: int, c: int, depth: int) -> dict:
        order, bounds = groups[level]
        members = order[bounds[c] : bounds[c + 1]]
        gallery = []
        if budget[0] > 0 and len(members) and depth < 2:
            budget[0] -= 1
            reps = representatives(reader, h, level, c, members, GALLERY_SIZE)
            for rec in reader.records(h.ids[reps]):
                records_of[rec.id] = rec
            for p in reps.tolist():
                rec = records_of.get(int(h.ids[p]))
                if rec is not None:
                    gallery.append({"name": os.path.basename(rec.path), "path": rec.path, "thumb": thumbs(rec.path),
                                    "selected": bool(chosen_mask[p]), "excluded": not bool(eligible[p])})
        kids = []
        if level > 1:
            shown = children[level][c][:CHILDREN_SHOWN]
            kids = [node(level - 1, int(k), depth + 1) for k in shown]
        return {"level": level, "cluster": c, "images": int(sizes_all[level][c]), "pool": int(sizes_pool[level][c]),
                "selected": int(sizes_sel[level][c]), "gallery": gallery, "children": kids,
                "more_children": max(0, len(children[level][c]) - CHILDREN_SHOWN) if level > 1 else 0}

    top = h.depth
    tops = np.lexsort((np.arange(h.levels[top - 1]), -sizes_all[top]))
    return [node(top, int(c), 0) for c in tops if sizes_all[top][c] > 0], levels


def _stats(sizes: np.ndarray) -> dict:
    nz = sizes[sizes > 0]
    if not len(nz):
        return {"images": 0, "min": 0, "median": 0, "max": 0}
    return {"images": int(sizes.sum()), "min": int(nz.min()), "median": int(np.median(nz)), "max": int(nz.max())}


def _excluded(selection, thumbs) -> list[dict]:
    return [{**d.to_dict(), "name": os.path.basename(d.path), "thumb": thumbs(d.path),
             "excluded_name": os.path.basename(d.excluded_path), "excluded_thumb": thumbs(d.excluded_path)}
            for d in selection.excluded[:EXCLUDED_SHOWN]]


def _seeds(data: dict, selection, thumbs) -> list[dict]:
    seeds, found = data.get("seeds"), data.get("retrieved")
    if seeds is None or found is None:
        return []
    path_of = {s.id: s.path for s in selection.images}
    out = []
    for row in range(min(len(seeds.paths), SEEDS_SHOWN)):
        mine = np.flatnonzero(found.seed == row)
        mine = mine[np.argsort(-found.sims[mine], kind="stable")][:GALLERY_SIZE]
        got = [{"name": os.path.basename(path_of[i]), "path": path_of[i], "thumb": thumbs(path_of[i]),
                "similarity": float(s)} for i, s in zip(found.ids[mine].tolist(), found.sims[mine].tolist())
               if i in path_of]
        out.append({"name": os.path.basename(seeds.paths[row]), "path": seeds.paths[row],
                    "thumb": thumbs(seeds.paths[row]), "found": got, "count": int((found.seed == row).sum())})
    return out


def write_curate_report(reader, data: dict, selection, path: str | os.PathLike, progress: bool = False) -> Path:
    """Write the report of a `dinoret curate sample|retrieve` run to ``path`` (HTML)."""
    path = Path(path)
    thumbs = _Thumbs(progress)
    h = data.get("hierarchy")
    tree, levels = [], []
    if h is not None:
        eligible = np.ones(len(h.ids), bool) if data.get("eligible") is None else np.asarray(data["eligible"], bool)
        chosen_mask = np.zeros(len(h.ids), bool)
        if data.get("chosen") is not None:
            chosen_mask[np.asarray(data["chosen"], np.int64)] = True
        tree, levels = _tree(reader, h, eligible, chosen_mask, thumbs)
    params = sorted((k, v) for k, v in selection.params.items() if v is not None and not isinstance(v, (dict, list)))
    html = render_template(
        "curate_report.html", title=data.get("title", "curation"), params=params, n_pool=len(reader),
        n_selected=len(selection.images), n_excluded=len(selection.excluded), levels=levels, tree=tree,
        excluded=_excluded(selection, thumbs), more_excluded=max(0, len(selection.excluded) - EXCLUDED_SHOWN),
        seeds=_seeds(data, selection, thumbs), has_clusters=h is not None,
    )
    thumbs.bar.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path
