"""Hierarchical k-means (Vo et al. 2024): level 1 clusters the images' vectors, every level
above clusters the centroids of the level below (unweighted: a centroid counts once however
many images it stands for, which is what flattens a long tail), each level with its own
resampling steps.

A :class:`Hierarchy` is plain arrays: the images (index ids), their leaf cluster and cosine
to it, the centroids of every level and, for every level but the top, the parent cluster of
each of its clusters. Levels are numbered from 1 (the leaves, the finest) up.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm import tqdm

from dinoret.core.errors import UserError
from dinoret.retrieval.kmeans import ONE, KMeansParams, Shard, spherical_kmeans
from dinoret.retrieval.vector_rows import ArrayRows, Rows


@dataclass
class Hierarchy:
    ids: np.ndarray  # int64 [N] image ids, ascending
    labels: np.ndarray  # int32 [N] leaf (level-1) cluster of each image
    sims: np.ndarray  # float32 [N] cosine of each image to its leaf centroid
    centroids: list[np.ndarray]  # per level, float32 [k_level, D]
    parents: list[np.ndarray]  # parents[l-1]: level-(l+1) cluster of each level-l cluster, l = 1..L-1
    params: dict = field(default_factory=dict)  # what made it (levels, resample, seed, ...)

    @property
    def levels(self) -> list[int]:
        return [len(c) for c in self.centroids]

    @property
    def depth(self) -> int:
        return len(self.centroids)

    def cluster_of(self, level: int, leaves: np.ndarray | None = None) -> np.ndarray:
        """The level-``level`` cluster of every image (or of the given leaf clusters)."""
        lab = self.labels if leaves is None else np.asarray(leaves)
        for parent in self.parents[: level - 1]:
            lab = parent[lab]
        return lab

    def path_table(self) -> np.ndarray:
        """int32 [N, L]: every image's cluster at levels 1..L."""
        cols = [self.labels]
        for parent in self.parents:
            cols.append(parent[cols[-1]])
        return np.stack(cols, axis=1).astype(np.int32)

    def sizes(self, level: int, mask: np.ndarray | None = None) -> np.ndarray:
        """Images per cluster of ``level`` (only the images where ``mask`` is True, if given)."""
        lab = self.cluster_of(level)
        return np.bincount(lab if mask is None else lab[mask], minlength=self.levels[level - 1])

    def subset(self, keep: np.ndarray) -> "Hierarchy":
        """The same clusters over the images where ``keep`` is True."""
        return replace(self, ids=self.ids[keep], labels=self.labels[keep], sims=self.sims[keep])


def parse_levels(text: str | Sequence[int], what: str = "--clusters") -> list[int]:
    """``"10000,1000,100"`` -> [10000, 1000, 100] (finest first, strictly fewer going up)."""
    try:
        values = [int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        raise UserError(f"{what} takes whole numbers separated by commas, e.g. 10000,1000,100; not {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{what} needs at least one level, every one at least 1: got {text!r}")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise UserError(f"{what} lists the finest level first, each level with fewer clusters: got {text!r}")
    return values


def per_level(values: Sequence[int] | None, depth: int, what: str) -> list[int]:
    """One value per level: a single value applies to every level; none means 0."""
    values = list(values or [0])
    if len(values) == 1:
        values = values * depth
    if len(values) != depth or min(values) < 0:
        raise UserError(f"{what} takes one value, or one per level ({depth}), each at least 0: got {values}")
    return values


def build_hierarchy(rows: Rows, ids: np.ndarray, levels: Sequence[int], resample: Sequence[int],
                    params: KMeansParams, seed: int = 0, shard: Shard = ONE, progress: bool = False) -> Hierarchy:
    """Cluster ``rows`` (the vectors of ``ids``) into ``levels`` (finest first).

    Level 1 is sharded over the ranks (``shard``); the levels above cluster a few thousand
    centroids, which every rank computes alike from the same centroids."""
    if rows.n == 0:
        raise UserError("the index has no images to cluster")
    if levels[0] > rows.n:
        raise UserError(f"{levels[0]} leaf clusters asked for but the index has {rows.n} images: "
                        f"more clusters than points", param="levels")
    centroids, parents = [], []
    labels = sims = None
    data: Rows = rows
    for level, (k, steps) in enumerate(zip(levels, resample), 1):
        bar = tqdm(desc=f"k-means level {level} ({k} clusters)", unit="vec", unit_scale=True,
                   disable=not progress or shard.rank != 0)
        res = spherical_kmeans(data, k, replace(params, resample_steps=steps), (seed, level),
                               shard if level == 1 else ONE, bar.update)
        bar.close()
        if level == 1:
            labels, sims = res.labels, res.sims
        else:
            parents.append(res.labels)
        centroids.append(res.centroids)
        data = ArrayRows(res.centroids)
    return Hierarchy(np.asarray(ids, np.int64), labels, sims, centroids, parents)
