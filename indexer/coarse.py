"""Coarse quantizers for IVF indexes too large for one flat k-means.

At ten million vectors the IVF rule asks for 16,384 lists. A flat k-means over that many
centroids costs N x nlist dot products per iteration, 20 iterations: hours on a small
CPU. Two levels cut training to about N x 2 sqrt(nlist) per iteration: k-means into
``sqrt(nlist)`` groups, then k-means inside each group, with each group given centroids
in proportion to its share of the sample (:func:`train_two_level`).

Assignment stays exact: the index keeps a flat quantizer, so each vector is added to its
nearest list (one pass of N x nlist products: BLAS, about 10 minutes for 10M on 2 cores)
and a query probes its truly nearest lists. A nested IVF-Flat quantizer (the Faiss
``IVF16384(IVF128,Flat)`` form, :func:`nested_factory`), which compares a vector with the
centroids of a few groups only, was the index layout before: at 10M it put 42% of the
vectors in a list other than their nearest (4 of 128 groups searched when adding) and
held recall@10 to 0.71 (0.90 with every group searched), against 0.95 asked for. An HNSW
quantizer did no better on the same data (84% exact lists at efSearch 64, slower than
BLAS). The dedup kNN graph still uses the nested form (retrieval/knn_graph.py), where a
list is only a candidate filter before exact products.

The nested quantizer's own probe count is a run-time setting: few probes when adding,
more when searching.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # Faiss is imported where it is used: `dinoret index` with nothing to embed never needs it
    import faiss

TWO_LEVEL_MIN_NLIST = 8192  # below this a flat k-means and quantizer are affordable, and recall is better (README: 300k and 1M rows)
ADD_QUANTIZER_NPROBE = 4  # groups searched for a vector's nearest list when adding (~90% find the exact nearest)
MIN_SEARCH_QUANTIZER_NPROBE = 16
PQ_TRAIN_POINTS = 16_384  # 4-bit PQ has 16 centroids per sub-quantizer: Faiss samples 4,096 anyway
_NITER = 20


def quantizer_groups(nlist: int) -> int:
    return max(2, int(round(math.sqrt(nlist))))


def uses_two_levels(nlist: int) -> bool:
    return nlist >= TWO_LEVEL_MIN_NLIST


def search_quantizer_nprobe(nlist: int, nprobe: int) -> int:
    """Groups probed to find a query's ``nprobe`` best lists: enough groups to hold several
    times that many lists, so the lists found are the best ones."""
    groups = quantizer_groups(nlist)
    per_group = nlist / groups
    return int(min(groups, max(MIN_SEARCH_QUANTIZER_NPROBE, math.ceil(4 * nprobe / per_group))))


def spherical_centroids(x: np.ndarray, k: int, seed: int, niter: int = _NITER) -> np.ndarray:
    """``k`` unit centroids of the rows of ``x`` (Faiss spherical k-means)."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, spherical=True, seed=seed, verbose=False)
    # Keep Faiss quiet about small samples: two-level groups are uneven by nature.
    km.cp.min_points_per_centroid = 1
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.centroids


def _nearest(x: np.ndarray, centres: np.ndarray, block: int = 65_536) -> np.ndarray:
    out = np.empty(len(x), np.int64)
    for s in range(0, len(x), block):
        out[s : s + block] = np.argmax(x[s : s + block] @ centres.T, axis=1)
    return out


def _shares(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` centroids among groups in proportion to ``counts`` (largest remainder),
    at least one per non-empty group and never more than a group has points."""
    counts = np.asarray(counts, np.int64)
    want = counts / counts.sum() * total
    share = np.minimum(np.maximum(np.floor(want).astype(np.int64), (counts > 0).astype(np.int64)), counts)
    order = np.argsort(-(want - share), kind="stable")
    i = 0
    while share.sum() < total:
        g = order[i % len(order)]
        if share[g] < counts[g]:
            share[g] += 1
        i += 1
    while share.sum() > total:
        g = int(np.argmax(share))
        share[g] -= 1
    return share


def two_level_centroids(sample: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """``nlist`` unit-norm centroids of ``sample`` by two-level spherical k-means."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    if len(sample) < nlist:
        raise ValueError(f"{len(sample)} training vectors cannot make {nlist} lists")
    groups = quantizer_groups(nlist)
    rng = np.random.default_rng(seed)
    first = sample if len(sample) <= 256 * groups else sample[rng.choice(len(sample), 256 * groups, replace=False)]
    top = spherical_centroids(first, groups, seed)
    label = _nearest(sample, top)
    counts = np.bincount(label, minlength=groups)
    share = _shares(counts, nlist)
    parts = []
    for g in range(groups):
        if share[g] == 0:
            continue
        members = sample[label == g]
        parts.append(members if share[g] == len(members) else spherical_centroids(members, int(share[g]), seed + 1 + g))
    centroids = np.concatenate(parts).astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    return centroids


def nested_factory(nlist: int, codec: str) -> str:
    """Faiss factory string of an IVF index whose quantizer is an IVF-Flat over its centroids."""
    return f"IVF{nlist}(IVF{quantizer_groups(nlist)},Flat),{codec}"


def train_two_level(index: faiss.Index, sample: np.ndarray, seed: int = 0) -> None:
    """Train an IVF index (flat quantizer, or one made from :func:`nested_factory`):
    centroids by two-level k-means, then the codec (PQ) on a small sample's residuals."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    centroids = two_level_centroids(sample, ivf.nlist, seed)
    quantizer.train(centroids)
    quantizer.add(centroids)
    if isinstance(quantizer, faiss.IndexIVF):
        quantizer.make_direct_map()  # merging shards compares quantizers centroid by centroid
        quantizer.nprobe = ADD_QUANTIZER_NPROBE
    rng = np.random.default_rng(seed)
    small = sample if len(sample) <= PQ_TRAIN_POINTS else sample[np.sort(rng.choice(len(sample), PQ_TRAIN_POINTS, replace=False))]
    index.train(np.ascontiguousarray(small, dtype=np.float32))  # the quantizer is complete: trains the codec only


def set_quantizer_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Groups the nested quantizer of ``index`` probes (no-op for a flat quantizer)."""
    import faiss

    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    if isinstance(quantizer, faiss.IndexIVF):
        quantizer.nprobe = int(nprobe)
