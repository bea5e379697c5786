"""Retrieval of pool images close to a curated seed set (DINOv2 paper, section 3).

* Sample-based: the ``k`` nearest pool images of every seed (the index's own search, exact
  re-ranking included). A pool image found by several seeds ("collisions", more frequent as
  k grows) is kept once, with its most similar seed.
* Cluster-based: every seed goes to its nearest leaf cluster; each cluster (at ``level``)
  holding at least ``min_hits`` seeds gives up to ``per_cluster`` of its pool images.

Seeds are image files embedded with the index's own model, weights and preprocessing, or
another index made with the same model (the dedup ``--against`` loader, so both check the
model the same way).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinoret.core.errors import UserError
from dinoret.retrieval.curate_clusters import members_by_cluster
from dinoret.retrieval.hierarchy import Hierarchy
from dinoret.retrieval.kmeans import assign
from dinoret.retrieval.sampling import id_uniform
from dinoret.retrieval.vector_rows import ArrayRows

MODES = ("sample", "cluster")
_BLOCK = 8192


@dataclass
class Seeds:
    vectors: np.ndarray  # float32 [S, D], unit norm
    paths: list[str]
    ids: list[int | None]  # index ids when the seeds are an index
    label: str  # what --seeds named
    same_index: bool = False  # the seeds are this index's own images


def load_seeds(reader, path, device: str = "auto", weights: str | None = None, progress: bool = False,
               param: str = "seeds") -> Seeds:
    """The seed images of ``path`` (a folder of images or an index directory) as vectors."""
    from dinoret.retrieval.dedup import against_source, open_other_set
    from dinoret.retrieval.index import IndexReader

    source, label = against_source(path, param)
    items, _ = open_other_set(reader, source, device, weights, progress, param)
    if len(items) == 0:
        raise UserError(f"{path}: no readable images", param=param)
    if isinstance(source, IndexReader):
        ids = [source.id_for_path(p) for p in items.paths]
        same = source.root == reader.root
    else:
        ids, same = [None] * len(items), False
    return Seeds(items.vectors.block(), list(items.paths), ids, label, same)


@dataclass
class Retrieved:
    ids: np.ndarray  # int64 pool image ids, ascending
    seed: np.ndarray  # int64: row of its most similar seed (in Seeds)
    sims: np.ndarray  # float32: cosine to that seed
    hits: np.ndarray  # int64: how many seeds retrieved it (sample mode) / seeds in its cluster (cluster mode)
    stats: dict


def sample_retrieval(reader, seeds: Seeds, k: int, excluded: np.ndarray | None = None) -> Retrieved:
    """The ``k`` nearest pool images of every seed (leaving out ``excluded`` ids, and each
    seed itself when the seeds are this index's own images)."""
    if k < 1:
        raise UserError("-k must be at least 1")
    banned = set() if excluded is None else set(np.asarray(excluded).tolist())
    best: dict[int, tuple[float, int]] = {}
    hits: dict[int, int] = {}
    for s in range(0, len(seeds.vectors), _BLOCK):
        block = seeds.vectors[s : s + _BLOCK]
        own = [seeds.ids[s + i] if seeds.same_index else None for i in range(len(block))]
        want = k + 1 if seeds.same_index else k
        search_k = min(len(reader), want + min(len(banned), 4 * want))
        while True:
            scores, ids = reader.search(block, k=search_k)
            rows = [[(float(sc), int(i)) for sc, i in zip(rs, ri) if i >= 0 and i not in banned and i != own[j]][:k]
                    for j, (rs, ri) in enumerate(zip(scores, ids))]
            short = any(len(r) < k for r in rows)
            if not short or search_k >= len(reader):
                break
            search_k = min(len(reader), 2 * search_k)  # many neighbours were excluded: look further
        for j, row in enumerate(rows):
            for sc, i in row:
                hits[i] = hits.get(i, 0) + 1
                if i not in best or sc > best[i][0]:
                    best[i] = (sc, s + j)
    ids = np.array(sorted(best), np.int64)
    seed = np.array([best[i][1] for i in ids.tolist()], np.int64)
    sims = np.array([best[i][0] for i in ids.tolist()], np.float32)
    count = np.array([hits[i] for i in ids.tolist()], np.int64)
    return Retrieved(ids, seed, sims, count, {"seeds": len(seeds.vectors), "k": k, "retrieved": len(ids),
                                              "collisions": int((count > 1).sum())})


def _nearest_seed(reader, ids: np.ndarray, seed_vectors: np.ndarray, seed_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each pool image, its most similar seed among ``seed_rows`` and that cosine."""
    out_seed = np.empty(len(ids), np.int64)
    out_sim = np.empty(len(ids), np.float32)
    sv = seed_vectors[seed_rows]
    for s in range(0, len(ids), _BLOCK):
        sims = reader.vectors(ids[s : s + _BLOCK]) @ sv.T
        j = sims.argmax(axis=1)
        out_seed[s : s + _BLOCK] = seed_rows[j]
        out_sim[s : s + _BLOCK] = sims[np.arange(len(j)), j]
    return out_seed, out_sim


def cluster_retrieval(reader, h: Hierarchy, seeds: Seeds, min_hits: int = 3, per_cluster: int = 10_000,
                      level: int = 1, strategy: str = "random", seed: int = 0,
                      eligible: np.ndarray | None = None) -> Retrieved:
    """Up to ``per_cluster`` pool images (random, or the closest to the seeds) of every
    level-``level`` cluster that holds at least ``min_hits`` seeds."""
    if not 1 <= level <= h.depth:
        raise UserError(f"the level must be from 1 to {h.depth} (the clustering's levels)", param="level")
    if min_hits < 1 or per_cluster < 1:
        raise UserError("the minimum hits and the images per cluster must be at least 1", param=("min_hits", "per_cluster"))
    leaf, _ = assign(ArrayRows(seeds.vectors), h.centroids[0], "cpu")  # a few seeds: the CPU will do
    seed_cluster = h.cluster_of(level, leaf)
    counts = np.bincount(seed_cluster, minlength=h.levels[level - 1])
    chosen_clusters = np.flatnonzero(counts >= min_hits)
    order, bounds = members_by_cluster(h, level)
    ok = np.ones(len(h.ids), bool) if eligible is None else np.asarray(eligible, bool)
    parts_ids, parts_seed, parts_sim, parts_hits = [], [], [], []
    for c in chosen_clusters.tolist():
        members = np.sort(order[bounds[c] : bounds[c + 1]])
        members = members[ok[members]]
        seed_rows = np.flatnonzero(seed_cluster == c)
        if seeds.same_index:
            own = {i for i in (seeds.ids[r] for r in seed_rows) if i is not None}
            members = members[~np.isin(h.ids[members], list(own))]
        if len(members) > per_cluster:
            if strategy == "closest":
                _, sims = _nearest_seed(reader, h.ids[members], seeds.vectors, seed_rows)
                members = members[np.lexsort((members, -sims))[:per_cluster]]
            else:
                members = members[np.argsort(id_uniform(h.ids[members], seed), kind="stable")[:per_cluster]]
        ids = h.ids[np.sort(members)]
        best_seed, sims = _nearest_seed(reader, ids, seeds.vectors, seed_rows)
        parts_ids.append(ids)
        parts_seed.append(best_seed)
        parts_sim.append(sims)
        parts_hits.append(np.full(len(ids), counts[c], np.int64))
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    ids = cat(parts_ids, np.int64)
    order = np.argsort(ids, kind="stable")
    return Retrieved(ids[order], cat(parts_seed, np.int64)[order], cat(parts_sim, np.float32)[order],
                     cat(parts_hits, np.int64)[order],
                     {"seeds": len(seeds.vectors), "level": level, "min_hits": min_hits, "per_cluster": per_cluster,
                      "clusters_with_seeds": int((counts > 0).sum()), "clusters_used": len(chosen_clusters),
                      "retrieved": len(ids)})


def selection_rows(reader, found: Retrieved, seeds: Seeds, reason: str, h: Hierarchy | None):
    """The selection-file rows of retrieved images (clusters filled in when there is a clustering)."""
    from dinoret.retrieval.selection_files import Selected

    records = {r.id: r for r in reader.records(found.ids)}
    table = None
    if h is not None:
        pos = np.searchsorted(h.ids, found.ids)
        pos = np.minimum(pos, len(h.ids) - 1)
        known = h.ids[pos] == found.ids
        paths = h.path_table()
        table = [paths[p].tolist() if k else [] for p, k in zip(pos.tolist(), known.tolist())]
    out = []
    for n, (i, s, sim) in enumerate(zip(found.ids.tolist(), found.seed.tolist(), found.sims.tolist())):
        if i in records:
            out.append(Selected(i, records[i].path, table[n] if table else [], reason, float(sim),
                                seeds.ids[s], seeds.paths[s]))
    return out
