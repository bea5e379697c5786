"""An index's clustering: made from its stored vectors, and brought up to date as it changes.

``cluster_index`` runs hierarchical k-means over the index's ``vectors/`` (memory-mapped,
read a block at a time; nothing is re-embedded). ``index_clustering`` loads the saved
clustering and lines it up with the index as it is now: images indexed since are put in
their nearest leaf cluster (the centroids do not move), images removed since are left out,
and both are reported, so a stale clustering is never used in silence.
"""
from __future__ import annotations

import time

from typing import TYPE_CHECKING

import numpy as np

from dinoret.core.devices import device_type
from dinoret.core.errors import UserError
from dinoret.retrieval.clusterings import ClusteringRow, load_clustering
from dinoret.retrieval.hierarchy import Hierarchy, build_hierarchy
from dinoret.retrieval.kmeans import ONE, KMeansParams, Shard, assign
from dinoret.retrieval.vector_rows import StoreRows

if TYPE_CHECKING:
    import torch


def cluster_index(reader, levels: list[int], resample: list[int], params: KMeansParams, seed: int = 0,
                  shard: Shard = ONE, progress: bool = False) -> tuple[Hierarchy, float]:
    """Hierarchical k-means over every image of the index; returns it and the seconds it took."""
    t0 = time.perf_counter()
    ids = np.sort(reader.ids())
    if len(ids) == 0:
        raise UserError(f"the index at {reader.root} has no images: index some with `dinoret index PATH` first")
    h = build_hierarchy(StoreRows(reader.store, ids), ids, levels, resample, params, seed, shard, progress)
    h.params = {
        "levels": list(levels), "resample": list(resample), "resample_points": params.resample_points,
        "resample_strategy": params.resample_strategy, "iters": params.iters, "seed": seed,
        "device": device_type(params.device), "processes": shard.world,
    }
    return h, time.perf_counter() - t0


def check_model(reader, row: ClusteringRow) -> None:
    if row.weights_sha256 != reader.identity.get("weights_sha256"):
        raise UserError(f"the clustering of {reader.root} was made with other embeddings ({row.model}, weights "
                        f"{row.weights_sha256[:12]}…): cluster the index again", param="recluster")


def update_clustering(reader, h: Hierarchy, device: torch.device | str = "cpu") -> tuple[Hierarchy, int, int]:
    """``h`` over the index's images as they are now: (hierarchy, images added, images removed).
    Added images go to their nearest leaf centroid; removed ones are dropped."""
    live = np.sort(reader.ids())
    known = np.isin(h.ids, live, assume_unique=True)
    removed = int((~known).sum())
    if removed:
        h = h.subset(known)
    new = live[~np.isin(live, h.ids, assume_unique=True)]
    if len(new):
        labels, sims = assign(StoreRows(reader.store, new), h.centroids[0], device)
        ids = np.concatenate([h.ids, new])
        order = np.argsort(ids, kind="stable")
        h = Hierarchy(ids[order], np.concatenate([h.labels, labels])[order], np.concatenate([h.sims, sims])[order],
                      h.centroids, h.parents, h.params)
    return h, len(new), removed


def change_notes(added: int, removed: int, made_on: int) -> list[str]:
    """What a user must know about a clustering older than the index, one line each."""
    notes = []
    if removed:
        notes.append(f"{removed} of the {made_on} images the clustering was made on are no longer in the index "
                     f"(removed since): they are left out and their clusters are smaller; "
                     f"`dinoret curate clusters --recluster` redoes the clustering")
    if added:
        notes.append(f"{added} images indexed after the clustering were put in their nearest leaf cluster "
                     f"(`dinoret curate clusters` stores that; --recluster redoes the clustering)")
    return notes


def index_clustering(reader, device: torch.device | str = "cpu") -> tuple[Hierarchy, ClusteringRow, list[str]]:
    """The index's current clustering lined up with the index now, its catalog row, and notes
    on what changed since it was made. UserError if there is none or it is of another model."""
    loaded = load_clustering(reader.engine, reader.root)
    if loaded is None:
        raise UserError(f"the index at {reader.root} has no clustering yet: cluster it first "
                        f"(`dinoret curate clusters`)", param="levels")
    h, row = loaded
    check_model(reader, row)
    h, added, removed = update_clustering(reader, h, device)
    if len(h.ids) == 0:
        raise UserError(f"the index at {reader.root} has no images left")
    return h, row, change_notes(added, removed, row.n_images)


REP_CANDIDATES = 4096  # images of a big cluster looked at for its representatives


def members_by_cluster(h: Hierarchy, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): the images of cluster c at ``level`` are ``order[bounds[c]:bounds[c+1]]``."""
    lab = h.cluster_of(level)
    order = np.argsort(lab, kind="stable")
    return order, np.searchsorted(lab[order], np.arange(h.levels[level - 1] + 1))


def representatives(reader, h: Hierarchy, level: int, cluster: int, members: np.ndarray, m: int = 6) -> np.ndarray:
    """The ``m`` images (positions into ``h.ids``) of a cluster nearest its centroid, nearest
    first. Above the leaves the candidates of a very large cluster are the REP_CANDIDATES
    images closest to their own leaf centroids."""
    if len(members) == 0:
        return members
    if level == 1:
        sims = h.sims[members]
    else:
        if len(members) > REP_CANDIDATES:
            members = members[np.argsort(-h.sims[members], kind="stable")[:REP_CANDIDATES]]
        sims = reader.vectors(h.ids[members]) @ h.centroids[level - 1][cluster]
    return members[np.lexsort((members, -sims))[:m]]
