"""Duplicate groups from vectors: union-find over exact copies and kNN edges, a stricter
per-group split, and the keeper policy.

Everything here works on plain arrays (row numbers, not index ids), so it is tested and
benchmarked without an index; ``dinoret.retrieval.dedup`` maps rows to images.

Why the split: connected components chain. A crop links to its original, the original to
a recoloured copy, that copy to a different photo of the same scene..., and one weak
link per step is enough to merge unrelated photos. After the components are found, each
is split into *stars*: the best keeper (by policy) among the members still unassigned
takes every remaining member whose cosine *to it* is at least the threshold; repeat.
So every reported member is directly similar to its keeper, and the score listed for it
is that similarity. Exact copies are never separated.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from dinoret.retrieval.knn_graph import knn_edges
from dinoret.retrieval.unit_vectors import UnitVectors, as_unit

KEEP_POLICIES = ("largest", "oldest", "first")


class UnionFind:
    """Disjoint sets over 0..n-1. Unions are applied to whole arrays of pairs at once
    (hooking each root under the smallest root it meets, then pointer jumping), so a
    million elements and as many pairs cost a few numpy passes, not a Python loop."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(self, a: int, b: int) -> None:
        self.union_pairs(np.array([a]), np.array([b]))

    def union_pairs(self, src: np.ndarray, dst: np.ndarray) -> None:
        p = self._compress()
        a, b = p[np.asarray(src, np.int64)], p[np.asarray(dst, np.int64)]
        while True:
            apart = a != b
            if not apart.any():
                break
            a, b = a[apart], b[apart]
            # Parents only ever point to a smaller element, so no cycle can form.
            np.minimum.at(p, np.maximum(a, b), np.minimum(a, b))
            p = self._compress()
            a, b = p[a], p[b]

    def _compress(self) -> np.ndarray:
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                break
            p = q
        self.parent = p
        return p

    def labels(self) -> np.ndarray:
        """The root of every element (fully compressed)."""
        return self._compress().copy()


def key_digest(key: str | None) -> bytes:
    """16 bytes standing for a hash key (a content or pixel hash); zeros for no key."""
    return hashlib.blake2b(key.encode(), digest_size=16).digest() if key else bytes(16)


def key_digests(keys: Iterable[str | None]) -> np.ndarray:
    """``key_digest`` of each key as a [n, 2] uint64 array: 16 bytes a row, whatever the keys."""
    return digests_array(b"".join(map(key_digest, keys)))


def digests_array(joined: bytes | bytearray) -> np.ndarray:
    """Concatenated ``key_digest`` values as a [n, 2] uint64 array."""
    return np.frombuffer(bytes(joined), dtype=np.uint64).reshape(-1, 2)


def first_match(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """For each row of ``keys`` (digests), the first row of ``table`` with the same digest, or -1
    (also for an empty key)."""
    void = np.dtype((np.void, 16))
    t = np.ascontiguousarray(table).view(void).ravel()
    q = np.ascontiguousarray(keys).view(void).ravel()
    if len(t) == 0:
        return np.full(len(q), -1, np.int64)
    order = np.argsort(t, kind="stable")  # equal digests keep table order: the first comes first
    ordered = t[order]
    at = np.minimum(np.searchsorted(ordered, q), len(t) - 1)
    found = (ordered[at] == q) & keys.any(axis=1)
    return np.where(found, order[at], -1)


def labels_from_keys(n: int, *keys: Sequence | np.ndarray) -> np.ndarray:
    """Row labels where rows sharing any non-empty key (content hash, pixel hash ...) share a
    label. A key column is a sequence of strings (None or "" for none) or its ``key_digests``."""
    uf = UnionFind(n)
    for column in keys:
        d = column if isinstance(column, np.ndarray) else key_digests(column)
        rows = np.flatnonzero(d.any(axis=1))
        rows = rows[np.lexsort((d[rows, 1], d[rows, 0]))]
        same = (d[rows[1:]] == d[rows[:-1]]).all(axis=1)
        if same.any():
            starts = np.flatnonzero(np.r_[True, ~same])
            first = rows[np.repeat(starts, np.diff(np.r_[starts, len(rows)]))]
            uf.union_pairs(first[1:][same], rows[1:][same])
    return uf.labels()


def components(labels: np.ndarray, min_size: int = 2) -> list[np.ndarray]:
    """Rows grouped by label (ascending rows inside each), groups of at least ``min_size``."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    sizes = np.diff(np.r_[starts, len(labels)])
    return [order[s : s + m] for s, m in zip(starts.tolist(), sizes.tolist()) if m >= min_size]


def keeper_rank(policy: str, width: np.ndarray, height: np.ndarray, size: np.ndarray, mtime: np.ndarray,
                paths: Sequence[str]) -> np.ndarray:
    """Keeper preference per row, 0 = the best keeper; every tie is broken by path, so the
    choice never depends on index order.

    largest: most pixels, then most bytes (less compressed); oldest: earliest mtime;
    first: first path in sorted order.
    """
    path_order = np.argsort(np.asarray(paths, dtype=object), kind="stable")
    path_rank = np.empty(len(path_order), np.int64)
    path_rank[path_order] = np.arange(len(path_order))
    if policy == "largest":
        pixels = np.asarray(width, np.int64) * np.asarray(height, np.int64)
        keys = (path_rank, -np.asarray(size, np.int64), -pixels)
    elif policy == "oldest":
        keys = (path_rank, np.asarray(mtime, np.float64))
    elif policy == "first":
        keys = (path_rank,)
    else:
        raise ValueError(f"unknown keep policy {policy!r}: use one of {', '.join(KEEP_POLICIES)}")
    order = np.lexsort(keys)  # the last key is the primary one
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank


def star_split(vectors: np.ndarray, rank: np.ndarray, threshold: float, atoms: np.ndarray | None = None) -> list[np.ndarray]:
    """Split one component (its ``vectors``, ``rank``, exact-copy ``atoms`` labels) into stars.

    Returns local row arrays, keeper first, each of at least two rows. A member joins the
    star of the best-ranked unassigned row whose cosine to it is >= ``threshold``.
    """
    m = len(vectors)
    remaining = np.ones(m, bool)
    stars = []
    for c in np.argsort(rank, kind="stable"):
        if not remaining[c]:
            continue
        rem = np.flatnonzero(remaining)
        close = (vectors[rem] @ vectors[c]) >= threshold
        close[rem == c] = True
        star = rem[close]
        if atoms is not None:
            star = rem[np.isin(atoms[rem], atoms[star])]
        remaining[star] = False
        if len(star) >= 2:
            rest = star[star != c]
            stars.append(np.concatenate([[c], rest[np.argsort(rank[rest], kind="stable")]]))
    return stars


@dataclass
class RowGroup:
    rows: np.ndarray  # keeper first
    scores: np.ndarray  # cosine of each row to the keeper (1.0 for the keeper)
    exact: np.ndarray  # bool: row is an exact copy (same content or pixels) of the keeper


def find_groups(
    vectors: np.ndarray | UnitVectors,
    threshold: float,
    k: int = 10,
    rank: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
    exact_labels: np.ndarray | None = None,
    split: bool = True,
    method: str = "auto",
    device: str = "auto",
    nprobe: int | None = None,
    progress: bool = False,
) -> list[RowGroup]:
    """Duplicate groups among the rows of ``vectors`` (as stored: normalised here): exact copies
    (``exact_labels`` from ``labels_from_keys``) first, then kNN edges with cosine >= ``threshold``, connected
    components, and (``split``) the star split. ``rank``: keeper preference, 0 = best
    (default: row order), or a function given the (ascending) rows that fall in some group
    and returning their ranks, so that the facts ranks come from are read for those rows
    only. Groups come ordered by their keeper's rank."""
    vectors = as_unit(vectors)
    n = len(vectors)
    uf = UnionFind(n)
    if exact_labels is not None:
        copies = np.flatnonzero(exact_labels != np.arange(n))
        uf.union_pairs(copies, exact_labels[copies])
    src, dst, _ = knn_edges(vectors, k=k, threshold=threshold, method=method, device=device, nprobe=nprobe,
                            progress=progress)
    uf.union_pairs(src, dst)
    del src, dst
    comps = components(uf.labels())
    if callable(rank):
        grouped = np.sort(np.concatenate(comps)) if comps else np.zeros(0, np.int64)
        ranks = np.asarray(rank(grouped))
        rank = np.zeros(n, ranks.dtype if len(ranks) else np.int64)
        rank[grouped] = ranks
    rank = np.arange(n) if rank is None else np.asarray(rank)
    groups = []
    for comp in comps:
        if split and len(comp) > 2:
            atoms = None if exact_labels is None else exact_labels[comp]
            parts = [comp[s] for s in star_split(vectors.rows(comp), rank[comp], threshold, atoms)]
        else:
            # Two rows joined by one edge (or exact copies) pass the split check by construction.
            parts = [comp[np.argsort(rank[comp], kind="stable")]]
        for rows in parts:
            member_vecs = vectors.rows(rows)
            scores = member_vecs @ member_vecs[0]
            scores[0] = 1.0
            exact = np.zeros(len(rows), bool) if exact_labels is None else exact_labels[rows] == exact_labels[rows[0]]
            groups.append(RowGroup(rows, scores.astype(np.float32), exact))
    groups.sort(key=lambda g: rank[g.rows[0]])
    return groups
