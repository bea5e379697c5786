"""k-nearest-neighbour graphs over L2-normalised vectors, kept as edges above a cosine threshold.

This is the candidate step of copy detection in the DINOv2 data pipeline: every vector's
k nearest neighbours, and only the edges whose cosine similarity clears the threshold.

Three engines give the same kind of answer; every edge score they return is the exact
cosine of the two stored vectors:

* ``exact``: blocked matrix products in torch (GPU when present, else CPU). Its cost
  grows as N^2, which a GPU absorbs up to millions of vectors.
* ``ivfpq``: Faiss IVF with 4-bit fast-scan PQ codes (24 bytes a vector) probed at
  ``nprobe`` lists, whose candidates are re-scored exactly from the stored vectors. The
  index holds codes, not a float32 copy, so memory stays near the float16 vectors' own
  size; the coarse quantizer is two-level (``dinoret.indexer.coarse``) past 8,192 lists.
* ``faiss``: an IVF-Flat index (a float32 copy of every vector); kept for comparison.

Vectors come as a :class:`~dinoret.retrieval.unit_vectors.UnitVectors` (float16 rows as
stored, normalised on the way out) or a plain array. A neighbour in an unprobed list can
be missed by the IVF engines: ``benchmarks/dedup_speed.py`` measures the recall of planted
duplicate pairs.

``method="auto"`` picks exact on a GPU, and on a CPU up to ``EXACT_MAX_CPU_PAIRS`` query x database pairs
(where the blocked matmul stops being faster than Faiss: `benchmarks/dedup_speed.py --switch`),
``ivfpq`` past that.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from dinoret.core.devices import resolve_device
from dinoret.indexer.index_type import choose_nlist
from dinoret.retrieval.unit_vectors import UnitVectors, as_unit

# Above this many (query x database) pairs on a CPU, Faiss IVF is clearly faster than the
# exact blocked matmul: on 2 cores they cross near 10k x 10k (1.7 s vs 1.4 s) and Faiss is
# 1.8x faster at 20k (benchmarks/dedup_speed.py --switch). Below it exactness is
# worth the small difference.
EXACT_MAX_CPU_PAIRS = 12_000 * 12_000
BLOCK_BYTES = 256 << 20  # score block kept in memory at once

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]  # src int64, dst int64, score float32


PQ_M = 48  # 4-bit sub-quantizers: 24 bytes a vector (384-d: 8 dimensions each)
# PQ candidates re-scored beyond the k asked for, against PQ's ranking errors. Only the
# ranking of fast-scan results is used: their scores are not cosines (with Faiss 1.15 the
# IP scores of IVF-PQ fast-scan come out compressed, e.g. 0.40 for a cosine of 1.0).
# Re-scoring converts float16 rows, the costly part of the search, so the extra is small.
PQ_EXTRA_CANDIDATES = 4
METHODS = ("auto", "exact", "ivfpq", "faiss")


def choose_method(n_queries: int, n_db: int, device: torch.device) -> str:
    if device.type == "cuda" or n_queries * n_db <= EXACT_MAX_CPU_PAIRS:
        return "exact"
    return "ivfpq"


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
    each undirected pair appears once, as ``i < j``. ``x``/``y``: ``UnitVectors`` or arrays
    (float16 or float32), normalised here.
    """
    x = as_unit(x)
    self_graph = y is None
    y = x if self_graph else as_unit(y)
    k = min(k, len(y) - (1 if self_graph else 0))
    if len(x) == 0 or k <= 0:
        return _empty()
    dev = resolve_device(device)
    if method == "auto":
        method = choose_method(len(x), len(y), dev)
    if method == "exact":
        src, dst, score = _exact(x, y, k, threshold, self_graph, dev, progress)
    elif method == "ivfpq":
        src, dst, score = _ivfpq(x, y, k, threshold, self_graph, nprobe, progress)
    elif method == "faiss":
        src, dst, score = _faiss(x.block(), y.block(), k, threshold, self_graph, nprobe, progress)
    else:
        raise ValueError(f"unknown kNN method {method!r}: use {', '.join(METHODS)}")
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


def _on_device(v: UnitVectors, device: torch.device) -> torch.Tensor:
    """float32 unit rows on ``device``, moved as stored (float16) and normalised there."""
    parts = []
    for s in range(0, len(v), 262_144):
        raw = torch.from_numpy(np.ascontiguousarray(v.raw[s : s + 262_144])).to(device)
        parts.append(raw.float() * torch.from_numpy(v.inv_norm[s : s + 262_144]).to(device)[:, None])
    return torch.cat(parts) if parts else torch.zeros((0, v.dim), device=device)


@torch.inference_mode()
def _exact(x: UnitVectors, y: UnitVectors, k, threshold, self_graph, device, progress) -> Edges:
    yt = _on_device(y, device)
    rows = max(1, min(8192, BLOCK_BYTES // (4 * len(y))))
    parts = []
    for start in tqdm(range(0, len(x), rows), desc="kNN (exact)", unit="block", disable=not progress):
        xb = torch.from_numpy(x.block(start, start + rows)).to(device)
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


def pq_lists(n: int) -> int:
    """IVF lists for the PQ engine: about sqrt(n), each list ~sqrt(n) codes; fast-scan makes
    the lists cheap to scan, so fewer, larger lists than IVF-Flat's 4 sqrt(n) cost little
    and keep the coarse quantizer (a cost per vector) small."""
    return max(1, min(65536, 2 ** round(math.log2(max(1.0, math.sqrt(n)))), n // 39))


def _pq_m(d: int) -> int:
    fits = [m for m in range(2, d + 1, 2) if d % m == 0 and m <= PQ_M]
    return max(fits) if fits else 1


def _ivfpq(x: UnitVectors, y: UnitVectors, k, threshold, self_graph, nprobe, progress) -> Edges:
    import faiss

    from dinoret.indexer.coarse import nested_factory, search_quantizer_nprobe, set_quantizer_nprobe, train_two_level, uses_two_levels

    d, n = y.dim, len(y)
    nlist = pq_lists(n)
    two_level = uses_two_levels(nlist)
    codec = f"PQ{_pq_m(d)}x4fs"
    factory = nested_factory(nlist, codec) if two_level else f"IVF{nlist},{codec}"
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = y.rows(np.sort(rng.choice(n, min(n, 50 * nlist), replace=False)))
    if two_level:
        train_two_level(index, sample)  # leaves the quantizer probing few groups: what adding needs
    else:
        index.train(sample)
    del sample
    batch = 16_384  # float32 rows converted at once: small next to the float16 vectors themselves
    for start in tqdm(range(0, n, batch), desc="kNN (ivfpq) add", unit="batch", disable=not progress):
        index.add(y.block(start, start + batch))
    index.nprobe = min(nprobe, nlist)
    if two_level:
        set_quantizer_nprobe(index, search_quantizer_nprobe(nlist, index.nprobe))
    want = k + 1 if self_graph else k
    cand = min(n, want + PQ_EXTRA_CANDIDATES)
    parts = []
    batch = 2048  # queries at once: bounds the re-scoring buffer (batch x candidates x dim floats)
    for start in tqdm(range(0, len(x), batch), desc="kNN (ivfpq) search", unit="batch", disable=not progress):
        q = x.block(start, start + batch)
        _, nbrs = index.search(q, cand)
        ok = nbrs >= 0
        if self_graph:
            ok &= nbrs != np.arange(start, start + len(q))[:, None]
        qi, ci = np.nonzero(ok)
        sims = np.full(nbrs.shape, -np.inf, np.float32)
        sims[qi, ci] = np.einsum("nd,nd->n", q[qi], y.rows(nbrs[qi, ci]))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if sims.shape[1] > k else np.argsort(-sims, axis=1)
        top_s = np.take_along_axis(sims, top, 1)
        top_i = np.take_along_axis(np.where(nbrs >= 0, nbrs, 0), top, 1)
        parts.append(_keep(top_s, top_i, start, threshold))
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
