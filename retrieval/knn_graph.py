"""k-nearest-neighbour graphs over L2-normalised vectors, kept as edges above a cosine threshold.

This is the candidate step of copy detection in the DINOv2 data pipeline: every vector's
k nearest neighbours, and only the edges whose cosine similarity clears the threshold.

The engines give the same kind of answer; every edge score they return is the exact
cosine of the two stored vectors:

* ``exact``: every pair, by blocked matrix products (numpy's BLAS on a CPU, torch on a
  GPU). Its cost grows as N^2, which a GPU absorbs up to millions of vectors.
* ``ivf``: the same blocked products inside an inverted file, without any index. A
  spherical k-means on a sample gives ``ivf_lists(N)`` centroids (about sqrt(N)); each
  vector belongs to the list of its nearest centroid and is compared, exactly, with the
  members of its ``nprobe`` nearest lists: one matrix product per list, between the list's
  members and the vectors probing it, converted from float16 a block at a time. Nothing
  but the list numbers (4 bytes per vector and probe) is held beside the vectors.
* ``ivfpq``: Faiss IVF with 4-bit fast-scan PQ codes (24 bytes a vector) probed at
  ``nprobe`` lists, whose candidates are re-scored exactly from the stored vectors; the
  coarse quantizer is two-level (``dinoret.indexer.coarse``) past 8,192 lists. Kept for
  comparison: re-scoring gathers k+5 scattered rows per query, which costs more than
  ``ivf``'s products.
* ``faiss``: an IVF-Flat index (a float32 copy of every vector); kept for comparison.

Vectors come as a :class:`~dinoret.retrieval.unit_vectors.UnitVectors` (float16 rows as
stored, normalised on the way out) or a plain array. A neighbour in an unprobed list can
be missed by the IVF engines: ``benchmarks/dedup_speed.py`` measures the recall of planted
duplicate pairs.

``method="auto"`` picks exact on a GPU, and on a CPU up to ``EXACT_MAX_CPU_PAIRS`` query x
database pairs (`benchmarks/dedup_speed.py --switch`), ``ivf`` past that. Nothing here
imports torch unless a GPU is used: on a CPU, dedup loads no torch at all.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from dinoret.core.devices import device_type
from dinoret.indexer.index_type import choose_nlist
from dinoret.retrieval.unit_vectors import UnitVectors, as_unit

if TYPE_CHECKING:
    import torch

# Up to this many (query x database) pairs on a CPU every pair is compared: exactness is worth
# the small difference there. On 2 cores exact and ivf tie at 5k vectors (0.8 s), ivf is 1.3x
# faster at 10k and 3.3x at 20k (benchmarks/dedup_speed.py --switch).
EXACT_MAX_CPU_PAIRS = 12_000 * 12_000
BLOCK_BYTES = 256 << 20  # score block kept in memory at once (GPU exact engine)
CPU_BLOCK_BYTES = 32 << 20  # score block of the CPU engines: small next to a million float16 vectors
CPU_DB_ROWS = 16_384  # database rows converted to float32 at once by the CPU engines
# Edges held beyond k a query row before they are cut back to k a row (a low threshold).
EDGE_SLACK = 1 << 20

Edges = tuple[np.ndarray, np.ndarray, np.ndarray]  # src int64, dst int64, score float32

# Lists each vector is compared within (its nearest centroids) by the ``ivf`` engine. On the
# benchmark's clustered data (benchmarks/dedup_speed.py), 5,000 pairs at cosine 0.95-0.99 all
# had each in the other's probed lists from 6 probes at 100k vectors (4 probes missed one) and
# from 2 at 1M; the products' cost grows in proportion.
IVF_NPROBE = 6
FAISS_NPROBE = 16  # the Faiss engines' lists probed per query
IVF_TRAIN_POINTS = 32  # sample rows per list for the k-means: a coarse partition needs few
IVF_KMEANS_ITERATIONS = 10

PQ_M = 48  # 4-bit sub-quantizers: 24 bytes a vector (384-d: 8 dimensions each)
# PQ candidates re-scored beyond the k asked for, against PQ's ranking errors. Only the
# ranking of fast-scan results is used: their scores are not cosines (with Faiss 1.15 the
# IP scores of IVF-PQ fast-scan come out compressed, e.g. 0.40 for a cosine of 1.0).
# Re-scoring converts float16 rows, the costly part of the search, so the extra is small.
PQ_EXTRA_CANDIDATES = 4
METHODS = ("auto", "exact", "ivf", "ivfpq", "faiss")


def choose_method(n_queries: int, n_db: int, device: str | torch.device = "cpu") -> str:
    if device_type(device) == "cuda" or n_queries * n_db <= EXACT_MAX_CPU_PAIRS:
        return "exact"
    return "ivf"


def default_nprobe(method: str) -> int | None:
    """Lists probed per vector when the caller gives no ``nprobe`` (None: the engine probes none)."""
    return {"ivf": IVF_NPROBE, "ivfpq": FAISS_NPROBE, "faiss": FAISS_NPROBE}.get(method)


def knn_edges(
    x: np.ndarray,
    k: int = 10,
    threshold: float = -1.0,
    y: np.ndarray | None = None,
    method: str = "auto",
    device: str | torch.device = "auto",
    nprobe: int | None = None,
    progress: bool = False,
) -> Edges:
    """Edges (i, j, cosine) from each row ``i`` of ``x`` to its ``k`` nearest rows ``j`` of ``y``
    whose cosine is at least ``threshold``.

    With ``y=None`` the graph is over ``x`` itself: a vector is never its own neighbour and
    each undirected pair appears once, as ``i < j``. ``x``/``y``: ``UnitVectors`` or arrays
    (float16 or float32), normalised here. ``nprobe``: lists probed by the IVF engines
    (default ``default_nprobe(method)``).
    """
    x = as_unit(x)
    self_graph = y is None
    y = x if self_graph else as_unit(y)
    k = min(k, len(y) - (1 if self_graph else 0))
    if len(x) == 0 or k <= 0:
        return _empty()
    kind = device_type(device)
    if method == "auto":
        method = choose_method(len(x), len(y), kind)
    if method not in METHODS[1:]:
        raise ValueError(f"unknown kNN method {method!r}: use {', '.join(METHODS)}")
    nprobe = default_nprobe(method) if nprobe is None else nprobe
    if method == "exact" and kind == "cuda":
        src, dst, score = _exact_torch(x, y, k, threshold, self_graph, device, progress)
    elif method == "exact":
        src, dst, score = _ivf(x, y, k, threshold, self_graph, nlist=1, nprobe=1, progress=progress)
    elif method == "ivf":
        src, dst, score = _ivf(x, y, k, threshold, self_graph, ivf_lists(len(y)), nprobe, progress)
    elif method == "ivfpq":
        src, dst, score = _ivfpq(x, y, k, threshold, self_graph, nprobe, progress)
    else:
        src, dst, score = _faiss(x.block(), y.block(), k, threshold, self_graph, nprobe, progress)
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


def _top_k_per_source(src: np.ndarray, dst: np.ndarray, score: np.ndarray, k: int) -> Edges:
    """The ``k`` best edges of every source (ties broken by the lower destination)."""
    order = np.lexsort((dst, -score, src))
    src, dst, score = src[order], dst[order], score[order]
    start = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    place = np.arange(len(src)) - np.repeat(start, np.diff(np.r_[start, len(src)]))
    keep = place < k
    return src[keep], dst[keep], score[keep]


def ivf_lists(n: int) -> int:
    """Lists of the ``ivf`` engine: about sqrt(n), as for PQ. The products' total cost,
    n x nprobe x n / lists, and the centroid search's, n x lists, would balance at a few
    more lists, but smaller lists make smaller products that BLAS runs less well (2 cores:
    74 GFLOP per CPU-second on 2,900 x 488 products, 27 on 1,170 x 195)."""
    return pq_lists(n)


def _ivf(x: UnitVectors, y: UnitVectors, k: int, threshold: float, self_graph: bool, nlist: int, nprobe: int,
         progress: bool) -> Edges:
    """Exact kNN edges of every row of ``x`` among the rows of ``y`` in its ``nprobe`` nearest
    lists (``nlist=1``: all of ``y``, i.e. the exact engine on a CPU)."""
    nlist = max(1, min(nlist, len(y)))
    nprobe = max(1, min(nprobe, nlist))
    if nlist == 1:
        members, member_bounds = np.arange(len(y)), np.array([0, len(y)])
        probers, prober_bounds = np.arange(len(x)), np.array([0, len(x)])
    else:
        lists, probes = _assign(x, y, nlist, nprobe, self_graph, progress)
        members, member_bounds = _by_list(lists, nlist)
        del lists
        probers, prober_bounds = _by_list(probes.ravel(), nlist)
        del probes
        probers = (probers // nprobe).astype(np.int32 if len(x) < 2**31 else np.int64)  # flat position -> row of x

    def products():
        """(query rows, database rows) of every matrix product, ascending rows in each."""
        for lst in range(nlist):
            db = members[member_bounds[lst] : member_bounds[lst + 1]]
            qs = probers[prober_bounds[lst] : prober_bounds[lst + 1]]
            for d0 in range(0, len(db) if len(qs) else 0, CPU_DB_ROWS):
                dbb = db[d0 : d0 + CPU_DB_ROWS]
                step = max(1, CPU_BLOCK_BYTES // (4 * len(dbb)))
                for q0 in range(0, len(qs), step):
                    yield qs[q0 : q0 + step], dbb

    last_db: list = [None, None]

    def load(item):  # gathering and converting rows: done one product ahead, in a second thread
        qb, dbb = item
        if last_db[0] is not dbb:  # the database block of several query blocks is converted once
            last_db[:] = [dbb, _unit_rows(y, dbb)]
        return qb, dbb, _unit_rows(x, qb), last_db[1]

    total = sum(1 for _ in products())
    parts: list[Edges] = []
    held = 0
    bar = tqdm(total=total, desc=f"kNN ({'exact' if nlist == 1 else 'ivf'})", unit="product", disable=not progress)
    for qb, dbb, qv, dv in _prefetched(products(), load):
        bar.update()
        sims = qv @ dv.T
        if self_graph:  # a vector is not its own neighbour
            at = np.minimum(np.searchsorted(dbb, qb), len(dbb) - 1)
            own = dbb[at] == qb
            sims[np.flatnonzero(own), at[own]] = -np.inf
        hit = np.flatnonzero(sims.max(axis=1) >= threshold)
        if len(hit) == 0:  # the usual case at a dedup threshold
            continue
        sub = sims[hit]
        r, c = np.nonzero(sub >= threshold)
        edges = qb[hit[r]].astype(np.int64), dbb[c].astype(np.int64), sub[r, c]
        if np.bincount(r).max() > k:
            edges = _top_k_per_source(*edges, k)
        parts.append(edges)
        held += len(edges[0])
        if held > k * len(x) + EDGE_SLACK:  # a low threshold: keep memory near k edges a row
            parts = [_top_k_per_source(*_concat(parts), k)]
            held = len(parts[0][0])
    bar.close()
    src, dst, score = _concat(parts)
    return _top_k_per_source(src, dst, score, k) if len(parts) > 1 else (src, dst, score)


def _unit_rows(v: UnitVectors, rows: np.ndarray) -> np.ndarray:
    """float32 unit rows ``rows`` (ascending) of ``v``: a slice when they are consecutive."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
        return v.block(int(rows[0]), int(rows[-1]) + 1)
    return v.rows(rows)


def _prefetched(items: Iterator, load: Callable):
    """``load(item)`` of every item, the next one computed in a second thread while the caller
    works on the current one (numpy lets go of the GIL while it gathers and converts rows,
    so this overlaps with the caller's BLAS products and single-threaded numpy passes)."""
    with ThreadPoolExecutor(1) as pool:
        it = iter(items)
        item = next(it, None)
        pending = None if item is None else pool.submit(load, item)
        while pending is not None:
            done = pending.result()
            item = next(it, None)
            pending = None if item is None else pool.submit(load, item)
            yield done


def _assign(x: UnitVectors, y: UnitVectors, nlist: int, nprobe: int, self_graph: bool,
            progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(list of every row of ``y``, the ``nprobe`` nearest lists of every row of ``x``)."""
    import faiss

    from dinoret.indexer.coarse import spherical_centroids

    rng = np.random.default_rng(0)
    sample = y.rows(np.sort(rng.choice(len(y), min(len(y), IVF_TRAIN_POINTS * nlist), replace=False)))
    quantizer = faiss.IndexFlatIP(y.dim)
    quantizer.add(spherical_centroids(sample, nlist, seed=0, niter=IVF_KMEANS_ITERATIONS))
    del sample

    def nearest(v: UnitVectors, p: int, what: str) -> np.ndarray:
        out = np.empty((len(v), p), np.int32)
        for s in tqdm(range(0, len(v), 16_384), desc=f"kNN (ivf) {what}", unit="batch", disable=not progress):
            out[s : s + 16_384] = quantizer.search(v.block(s, s + 16_384), p)[1]
        return out

    probes = nearest(x, nprobe, "lists")
    lists = probes[:, 0].copy() if self_graph else nearest(y, 1, "lists of the other set")[:, 0]
    return lists, probes


def _by_list(lists: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions sorted by list, ascending within a list; where each list starts)."""
    order = np.argsort(lists, kind="stable")
    return order, np.searchsorted(lists[order], np.arange(nlist + 1))


def _on_device(v: UnitVectors, device) -> "torch.Tensor":
    """float32 unit rows on ``device``, moved as stored (float16) and normalised there."""
    import torch

    parts = []
    for s in range(0, len(v), 262_144):
        raw = torch.from_numpy(np.ascontiguousarray(v.raw[s : s + 262_144])).to(device)
        parts.append(raw.float() * torch.from_numpy(v.inv_norm[s : s + 262_144]).to(device)[:, None])
    return torch.cat(parts) if parts else torch.zeros((0, v.dim), device=device)


def _exact_torch(x: UnitVectors, y: UnitVectors, k, threshold, self_graph, device, progress) -> Edges:
    import torch

    from dinoret.core.devices import resolve_device

    device = resolve_device(device)
    with torch.inference_mode():
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
