"""Curation over an index, as ``dinoret curate clusters|sample|retrieve`` runs it (the commands
call these): the :class:`dinoret.Index` methods ``curate_clusters``, ``curate_sample`` and
``curate_retrieve`` are these functions."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np

from dinoret.api.inputs import check_arg
from dinoret.api.selection import Selection
from dinoret.core.errors import UserError

if TYPE_CHECKING:
    from dinoret.api.handle import Index

STRATEGIES = ("random", "closest")
RESAMPLE_STRATEGIES = ("closest", "random")
MODES = ("sample", "cluster")


def _source(images) -> str | None:
    """A folder of images, an index directory or an :class:`dinoret.Index`, as the path it names."""
    from dinoret.api.handle import Index

    if images is None:
        return None
    return str(images.root) if isinstance(images, Index) else os.fspath(images)


def _levels_list(values, name: str) -> list[int]:
    """``"10,5"``, ``10`` or ``[10, 5]`` as a list of ints (each level's value)."""
    if isinstance(values, str):
        try:
            return [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"{name} takes whole numbers separated by commas, not {values!r}", param=name) from None
    return [int(values)] if isinstance(values, (int, np.integer)) else [int(v) for v in values]


def clusters(index: Index, clusters=None, resample=0, resample_points: int = 10, resample_strategy: str = "closest",
             iters: int = 10, seed: int = 0, recluster: bool = False, progress: bool = True) -> dict | None:
    """:meth:`dinoret.Index.curate_clusters` (see there)."""
    from dinoret.core import distributed
    from dinoret.retrieval.clusterings import clustering_lock, load_clustering, save_clustering
    from dinoret.retrieval.curate_clusters import change_notes, check_model, cluster_index, update_clustering
    from dinoret.retrieval.hierarchy import parse_levels, per_level
    from dinoret.retrieval.kmeans import KMeansParams, Shard

    check_arg("resample_points", resample_points, at_least=1)
    check_arg("iters", iters, at_least=0)
    check_arg("resample_strategy", resample_strategy, RESAMPLE_STRATEGIES)
    if not index.writable:
        raise UserError(f"the index {index.root} is open read-only: dinoret.open(..., writable=True) to store "
                        "a clustering in it")
    reader = index.reader
    ctx = distributed.setup_for_arrays(index.device)
    try:
        main = ctx.is_main
        existing = load_clustering(reader.engine, reader.root) if not recluster else None
        if existing is not None:
            h, row = existing
            if clusters is not None and parse_levels(clusters, "clusters") != row.params["levels"]:
                raise UserError(f"the index already has a clustering of {','.join(map(str, row.params['levels']))} "
                                "clusters per level: recluster it to replace it", param="recluster")
            check_model(reader, row)
            t0 = time.perf_counter()
            h, added, removed = update_clustering(reader, h, ctx.device)
            if main and (added or removed):
                with clustering_lock(reader.root):
                    save_clustering(reader.engine, reader.root, h, reader.identity, time.perf_counter() - t0,
                                    note=f"updated: {added} added, {removed} removed")
            return {"action": "updated" if added or removed else "up to date", "images": len(h.ids), "added": added,
                    "removed": removed, "levels": h.levels, "seconds": time.perf_counter() - t0,
                    "processes": ctx.world_size, "notes": change_notes(0, removed, row.n_images),
                    "sizes": [h.sizes(level) for level in range(1, h.depth + 1)]} if main else None
        if clusters is None:
            raise UserError("give the clusters per level, finest level first (e.g. 10000,1000,100)", param="levels")
        ks = parse_levels(clusters, "clusters")
        steps = per_level(_levels_list(resample, "resample"), len(ks), "resample")
        params = KMeansParams(iters=iters, resample_points=resample_points, resample_strategy=resample_strategy,
                              device=ctx.device)
        h, seconds = cluster_index(reader, ks, steps, params, seed, Shard(ctx.rank, ctx.world_size),
                                   progress=progress and main)
        if main:
            with clustering_lock(reader.root):
                save_clustering(reader.engine, reader.root, h, reader.identity, seconds)
        distributed.barrier()
        return {"action": "clustered", "images": len(h.ids), "added": 0, "removed": 0, "levels": h.levels,
                "seconds": seconds, "processes": ctx.world_size, "notes": [],
                "sizes": [h.sizes(level) for level in range(1, h.depth + 1)]} if main else None
    finally:
        distributed.teardown(ctx)


def _exclusion(index: Index, h, exclude, threshold: float | None, progress: bool):
    """(eligible mask over ``h.ids`` or None, the pool images ``exclude`` removes)."""
    from dinoret.retrieval.exclusion import DEFAULT_EXCLUDE_THRESHOLD, exclude_components

    if exclude is None:
        return None, []
    dropped = exclude_components(index.reader, _source(exclude), DEFAULT_EXCLUDE_THRESHOLD if threshold is None else threshold,
                                 device=index.device, weights=index.weights, progress=progress)
    if h is None or not dropped:
        return None, dropped
    return ~np.isin(h.ids, np.array([d.id for d in dropped], np.int64)), dropped


def sample(index: Index, target: int, strategy: str = "random", seed: int = 0, exclude=None,
           exclude_threshold: float | None = None, progress: bool = True) -> Selection:
    """:meth:`dinoret.Index.curate_sample` (see there)."""
    from dinoret.retrieval.curate_clusters import index_clustering
    from dinoret.retrieval.sampling import balanced_sample
    from dinoret.retrieval.selection_files import selected_from_sample

    check_arg("target", target, at_least=1)
    check_arg("strategy", strategy, STRATEGIES)
    reader = index.reader
    h, row, notes = index_clustering(reader, device=index.device)
    eligible, dropped = _exclusion(index, h, exclude, exclude_threshold, progress)
    positions = balanced_sample(h, target, strategy, seed, eligible)
    rows = selected_from_sample(reader, h, positions)
    rows.excluded = dropped
    rows.params = {"command": "sample", "target": target, "strategy": strategy, "seed": seed,
                   "exclude": _source(exclude),
                   "clustering": row.id, "index": str(reader.root)}
    report = {"hierarchy": h, "eligible": eligible, "chosen": positions, "title": f"balanced sample of {target}"}
    return Selection(rows, index, report, notes)


def retrieve(index: Index, seeds, mode: str = "sample", k: int = 4, min_hits: int = 3, per_cluster: int = 10_000,
             level: int = 1, strategy: str = "random", seed: int = 0, exclude=None,
             exclude_threshold: float | None = None, progress: bool = True) -> Selection:
    """:meth:`dinoret.Index.curate_retrieve` (see there)."""
    from dinoret.retrieval.clusterings import load_clustering
    from dinoret.retrieval.curate_clusters import index_clustering
    from dinoret.retrieval.curate_retrieve import cluster_retrieval, load_seeds, sample_retrieval, selection_rows
    from dinoret.retrieval.selection_files import Selection as SelectionRows

    check_arg("mode", mode, MODES)
    check_arg("strategy", strategy, STRATEGIES)
    for name, value in (("k", k), ("min_hits", min_hits), ("per_cluster", per_cluster), ("level", level)):
        check_arg(name, value, at_least=1)
    reader = index.reader
    if len(reader) == 0:
        raise UserError(f"the index at {reader.root} has no images")
    h, notes = None, []
    if mode == "cluster" or load_clustering(reader.engine, reader.root) is not None:
        h, _, notes = index_clustering(reader, device=index.device)
    seed_set = load_seeds(reader, _source(seeds), device=index.device,
                          weights=index.weights, progress=progress)
    eligible, dropped = _exclusion(index, h, exclude, exclude_threshold, progress)
    excluded_ids = np.array([d.id for d in dropped], np.int64)
    if mode == "sample":
        found = sample_retrieval(reader, seed_set, k, excluded_ids)
    else:
        found = cluster_retrieval(reader, h, seed_set, min_hits, per_cluster, level, strategy, seed, eligible)
    reason = f"{mode}-retrieval"
    rows = SelectionRows(selection_rows(reader, found, seed_set, reason, h), h.levels if h is not None else [],
                         {"command": "retrieve", "mode": mode, "seeds": seed_set.label, **found.stats,
                          "exclude": _source(exclude),
                          "index": str(reader.root)}, dropped)
    chosen = None if h is None else np.searchsorted(h.ids, found.ids[np.isin(found.ids, h.ids)])
    report = {"hierarchy": h, "eligible": eligible, "chosen": chosen, "seeds": seed_set, "retrieved": found,
              "title": f"{mode}-based retrieval from {len(seed_set.paths)} seeds"}
    return Selection(rows, index, report, notes)
