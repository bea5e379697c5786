"""k-nearest-neighbour graphs over L2-normalised vectors, kept as edges above a cosine threshold.

This is the candidate step of copy detection in the DINOv2 data pipeline: every vector's
k nearest neighbours, and only the edges whose cosine similarity clears the threshold.

Two engines give the same kind of answer:

* ``exact``: blocked matrix products in torch (GPU when present, else CPU); every score
  is exact. Its cost grows as N^2, which a GPU absorbs up to millions of vectors.
* ``faiss``: an IVF-Flat index (inner product) probed at ``nprobe`` lists; scores of the
  edges it finds are exact, but a neighbour in an unprobed list can be missed.
  ``benchmarks/dedup_speed.py`` measures that recall on planted duplicate pairs.

``method="auto"`` picks exact on a GPU, and on a CPU up to ``EXACT_MAX_CPU_PAIRS`` query x database pairs
(where the blocked matmul stops being faster than Faiss: `benchmarks/dedup_speed.py --switch`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from dinoret.core.devices import resolve_device
from dinoret.indexer.index_type import choose_nlist

# Above this many (query x database) pairs on a CPU, Faiss IVF is clearly faster than the
# exact blocked matmul: on 2 cores they cross near 10k x 10k (1.7 s vs 1.4 s) and Faiss is
# 1.8x faster at 20k (benchmarks/dedup_speed.py --switch). Below it exactness is
# worth the small difference.
EXACT_MAX_CPU_PAIRS = 12_000 * 12_000
BLOCK_BYTES = 256 << 20  # score block kept in memory at once

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]  # src int64, dst int64, score float32


def choose_method(n_queries: int, n_db: int, device: torch.device) -> str:
    if device.type == "cuda" or n_queries * n_db <= EXACT_MAX_CPU_PAIRS:
        return "exact"
    return "faiss"


def knn_edges(
    x: np.ndarray,
    k: int = 10,
    threshold: float = -1.0,
    y: np.ndarray | None = None,
    method: str = "auto",
    device: str | torch.device = "auto",
    nprobe: int = 16,
    progress: bool = False,
) -> Edges:
    """Edges (i, j, cosine) from each row ``i`` of ``x`` to its ``k`` nearest rows ``j`` of ``y``
    whose cosine is at least ``threshold``.

    With ``y=None`` the graph is over ``x`` itself: a vector is never its own neighbour and
    each undirected pair appears once, as ``i < j``. Rows must be L2-normalised.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    self_graph = y is None
    y = x if self_graph else np.ascontiguousarray(y, dtype=np.float32)
    k = min(k, len(y) - (1 if self_graph else 0))
    if len(x) == 0 or k <= 0:
        return _empty()
    dev = resolve_device(device)
    if method == "auto":
        method = choose_method(len(x), len(y), dev)
    if method == "exact":
        src, dst, score = _exact(x, y, k, threshold, self_graph, dev, progress)
    elif method == "faiss":
        src, dst, score = _faiss(x, y, k, threshold, self_graph, nprobe, progress)
    else:
        raise ValueError(f"unknown kNN method {method!r}: use auto, exact or faiss")
    if self_graph:
        src, dst, score = _undirected(src, dst, score, len(x))
    return src, dst, score


def _empty() -> Edges:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)


def _keep(sims: np.ndarray, nbrs: np.ndarray, row0: int, threshold: float) -> Edges:
    """Flatten one block of top-k results to the edges above the threshold."""
    rows, cols = np.nonzero(sims >= threshold)
    return (rows + row0).astype(np.int64), nbrs[rows, cols].astype(np.int64), sims[rows, cols].astype(np.float32)


def _concat(parts: list[Edges]) -> Edges:
    if not parts:
        return _empty()
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


@torch.inference_mode()
def _exact(x, y, k, threshold, self_graph, device, progress) -> Edges:
    yt = torch.from_numpy(y).to(device)
    rows = max(1, min(8192, BLOCK_BYTES // (4 * len(y))))
    parts = []
    for start in tqdm(range(0, len(x), rows), desc="kNN (exact)", unit="block", disable=not progress):
        xb = torch.from_numpy(x[start : start + rows]).to(device)
        sims = xb @ yt.T
        if self_graph:
            idx = torch.arange(len(xb), device=device)
            sims[idx, idx + start] = -math.inf
        top, nbr = sims.topk(k, dim=1)
        parts.append(_keep(top.cpu().numpy(), nbr.cpu().numpy(), start, threshold))
    return _concat(parts)


def _faiss(x, y, k, threshold, self_graph, nprobe, progress) -> Edges:
    import faiss

    d = y.shape[1]
    nlist = choose_nlist(len(y))  # the index's own rule: about 4 sqrt(N), >= 39 points per list
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    # 50 points per centroid is enough for a coarse quantizer; more only costs time.
    rng = np.random.default_rng(0)
    sample = y if len(y) <= 50 * nlist else y[np.sort(rng.choice(len(y), 50 * nlist, replace=False))]
    index.train(sample)
    index.add(y)
    index.nprobe = min(nprobe, nlist)
    kk = k + 1 if self_graph else k
    parts = []
    batch = 16384
    for start in tqdm(range(0, len(x), batch), desc="kNN (faiss IVF)", unit="batch", disable=not progress):
        sims, nbrs = index.search(x[start : start + batch], kk)
        if self_graph:
            # Drop each vector's own hit; if IVF missed it, drop the weakest neighbour instead.
            own = nbrs == np.arange(start, start + len(nbrs))[:, None]
            own[~own.any(axis=1), -1] = True
            sims = sims[~own].reshape(len(nbrs), k)
            nbrs = nbrs[~own].reshape(len(nbrs), k)
        valid = nbrs >= 0
        sims = np.where(valid, sims, -np.inf)
        parts.append(_keep(sims, np.where(valid, nbrs, 0), start, threshold))
    return _concat(parts)


def _undirected(src, dst, score, n) -> Edges:
    """Each pair once, as (min, max), with its best score."""
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key = lo * n + hi
    order = np.lexsort((-score, key))
    key, lo, hi, score = key[order], lo[order], hi[order], score[order]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    return lo[first], hi[first], score[first]
