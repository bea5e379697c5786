"""Spherical k-means (cosine on L2-normalised vectors), deterministic for a seed, in one
process or sharded over many under ``torchrun``.

*Assignment* is exact: Faiss inner-product search on a CPU, torch matmuls on a GPU, over
rows read ``BLOCK`` at a time (never all of them as float32 at once).

*Sharding*: the rows are cut into one global grid of ``BLOCK``-row blocks and each rank
takes a contiguous run of blocks. Ranks all-reduce the per-cluster sums (float64: exact
for the stored float16 vectors, so the order of the additions cannot change a bit) and
counts, and gather the labels (4 bytes a row). Every random choice is then made from these
global quantities by the same generator on every rank, and a block's search is the same
call whichever rank runs it: two processes find exactly the clusters one process finds.

*Many rows per cluster*: beyond ``MAX_PER_CENTROID`` rows per cluster a level is trained on
a random sample of that many rows per cluster, as Faiss does, and then every row is
assigned (one pass). Pools with fewer rows per cluster, as at the DINOv2 scale, run every
Lloyd pass over all rows, sharded.

*Seeding* is greedy k-means++ (the best of a few candidates per centre) with the candidates
drawn by D⁴ rather than D², on the rows, or a sample of them, held in memory; for a very
large k, the same sampling in rounds that double the number of centres. Such seeding puts
centres in sparse regions too, which a long tail needs; seeding at random rows puts them
where the data is dense.

*Large k on a CPU* (n·k above ``TWO_STAGE_WORK``): the centroids are trained in two stages,
as in Faiss's two-level clustering. The rows are first split into about sqrt(k) cells by
k-means, then each cell gets k-means with a share of the k clusters proportional to its
distortion (the sum of 1 - cosine of its rows to the cell centre, the D² mass k-means++
samples by), so the cost per row is ~2 sqrt(k) dot products instead of k. Cells are spread
over the ranks. The labels a clustering returns are exact all the same (one exact pass at
the end): routing a row through its nearest cell is only as good as the cells, and a row of
a small concept far from every cell centre goes to a cell by noise. On the long tail of
benchmarks/curate_balance.py (1M vectors, 10,000 clusters, 5 resampling steps) routed labels
spread a typical component over 11 leaves and 8,864 of the 10,000 leaves mixed 10 or more
components; exact labels for the same centroids moved 32% of the rows (2 leaves per
component, 5 components per leaf, medians) and took a balanced 10% sample over the leaves
from 9,914 to 9,987 of 10,000 components covered (KL to uniform 0.69 to 0.10).

*Resampling steps* (Vo et al. 2024): take ``resample_points`` rows of every cluster (the
closest to the centroid or random), cluster that balanced set afresh, then reassign every
row to the new centroids. Dense regions then no longer pull centroids to themselves by
their mass alone.
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sys
from typing import TYPE_CHECKING

import numpy as np

from dinoret.core.devices import device_type, resolve_device
from dinoret.core.distributed import all_gather_object, all_reduce_sum_
from dinoret.core.errors import UserError
from dinoret.retrieval.vector_rows import ArrayRows, Rows

if TYPE_CHECKING:
    import torch

# A device is a torch.device or a name ("cpu", "cuda", "auto"). torch is imported only for a
# GPU or for collectives: one CPU process clusters with Faiss and numpy alone, without the
# 0.5 GiB torch keeps resident.

BLOCK = 16384  # rows converted to float32 and searched at once (25 MB at 384-d)
# Above this many row x centroid products (4M: 4,000 rows x 1,000 clusters) a CPU level is
# trained in two stages. Exact passes and one-by-one seeding both cost rows x clusters: one
# exact pass of 1M x 10,000 at 384-d takes ~50 s on 2 idle cores (Faiss, ~160 GFLOP/s),
# ~250 s at load average 9; ten Lloyd passes and a few resampling steps would take an hour.
TWO_STAGE_WORK = 1 << 22
GPU_SCORE_BYTES = 512 << 20  # score matrix per matmul on a GPU
MAX_PER_CENTROID = 256  # beyond this many rows per cluster, train on a sample (as Faiss does)
CELL_BYTES = 256 << 20  # a two-stage cell up to this size is held in memory while it is clustered
SMALL_WORK = 1 << 26  # multiply-adds below which a search runs on one thread
SPLIT_EPS = 1e-3
# New centres are drawn with probability (1 - cosine to the nearest centre)^2, i.e. D⁴, not
# k-means++'s D²: on a long tail a big, spread-out cluster holds most of the D² mass and draws
# several centres while small clusters far away get none (tests/test_curate.py's toy tail: the
# planted clusters found from 14 of 20 seeds with D², 20 of 20 with D⁴).
SEED_POWER = 2
SEQUENTIAL_SEED_MAX = 4096  # centres seeded one by one (greedy k-means++); more: in doubling rounds
SEED_SAMPLE = 65536  # rows seeding may hold in memory (at least SEED_PER_CLUSTER per centre)
SEED_PER_CLUSTER = 40
STRATEGIES = ("closest", "random")

Tick = Callable[[int], None]


def _no_tick(_n: int) -> None:
    pass


@dataclass(frozen=True)
class Shard:
    """This process's share of the rows: a contiguous run of the global block grid."""

    rank: int = 0
    world: int = 1

    def blocks(self, n: int) -> list[tuple[int, int]]:
        nb = -(-n // BLOCK)
        lo, hi = nb * self.rank // self.world, nb * (self.rank + 1) // self.world
        return [(b * BLOCK, min(n, (b + 1) * BLOCK)) for b in range(lo, hi)]


ONE = Shard()


@dataclass
class KMeansParams:
    iters: int = 10  # Lloyd iterations (fewer when the labels stop changing)
    resample_steps: int = 0
    # Rows per cluster in a resampling step. On the long tail of benchmarks/curate_balance.py
    # (20k vectors, 2,000 clusters of 10 on average, 5 steps) 2, 3, 5, 10 and 20 rows covered
    # 1,575, 1,611, 1,602, 1,606 and 1,556 of 2,000 components: 3 to 10 alike.
    resample_points: int = 10
    resample_strategy: str = "closest"  # closest | random
    device: torch.device | str = "cpu"


@dataclass
class KMeansResult:
    centroids: np.ndarray  # float32 [k, D], unit norm
    labels: np.ndarray  # int32 [n]: nearest centroid of each row
    sims: np.ndarray  # float32 [n]: cosine of each row to that centroid
    # Two-stage results before their exact pass: (cell centres [g, D], cell of each centroid
    # [k]); the labels then give the nearest centroid of the nearest cell (a cheap routing
    # used inside training). None once the labels are exact.
    cells: tuple[np.ndarray, np.ndarray] | None = None


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


@functools.cache
def _blas_pools():
    """numpy's BLAS thread pool (made once: finding the loaded libraries takes 0.5 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run small products on one thread: below a few milliseconds of work, waking a second
    OpenMP/BLAS thread costs more than it saves (10x more on a busy 2-core machine; greedy
    seeding's 65,536 x 384 x 11 products: 22 ms on one thread, 33 ms on two, at load 2)."""
    import faiss

    torch = sys.modules.get("torch")  # its thread pool matters only once something imported it
    before = torch.get_num_threads() if torch else None, faiss.omp_get_max_threads()
    if torch:
        torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    try:
        with _blas_pools().limit(limits=1, user_api="blas"):
            yield
    finally:
        if torch:
            torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])


class _Nearest:
    """Exact nearest centroid by inner product: Faiss on a CPU, a torch matmul on a GPU."""

    def __init__(self, centroids: np.ndarray, device: torch.device | str) -> None:
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        self.cuda = device_type(device) == "cuda"
        if self.cuda:
            import torch

            self.device = resolve_device(device)
            self.c = torch.from_numpy(c).to(self.device)
            self.rows = max(1, GPU_SCORE_BYTES // (4 * len(c)))
        else:
            import faiss

            self.index = faiss.IndexFlatIP(c.shape[1])
            self.index.add(c)

    def search(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inner product, index) of the nearest centroid of each row of ``x``; ties go to the lower index."""
        if not self.cuda:
            x = np.ascontiguousarray(x)
            if len(x) * self.index.ntotal * x.shape[1] < SMALL_WORK:
                with _one_thread():
                    ip, idx = self.index.search(x, 1)
            else:
                ip, idx = self.index.search(x, 1)
            return ip[:, 0], idx[:, 0].astype(np.int32)
        import torch

        xt = torch.from_numpy(x).to(self.device)
        ips, idxs = [], []
        for s in range(0, len(xt), self.rows):
            m, a = (xt[s : s + self.rows] @ self.c.T).max(dim=1)
            ips.append(m)
            idxs.append(a)
        return torch.cat(ips).cpu().numpy(), torch.cat(idxs).cpu().numpy().astype(np.int32)


def _gather(parts: list, n: int, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
    if shard.world > 1:
        parts = [p for rank_parts in all_gather_object(parts) for p in rank_parts]
    labels = np.empty(n, np.int32)
    sims = np.empty(n, np.float32)
    for start, lab, sim in parts:
        labels[start : start + len(lab)] = lab
        sims[start : start + len(lab)] = sim
    return labels, sims


class _Sums:
    """Per-cluster float64 sums and counts of rows (exact for float16-exact rows, so any
    order of additions gives the same bits): numpy on a CPU, torch on a GPU."""

    def __init__(self, k: int, d: int, device: torch.device | str) -> None:
        self.k = k
        self.cuda = device_type(device) == "cuda"
        if self.cuda:
            import torch

            self.device = resolve_device(device)
            self.sums = torch.zeros((k, d), dtype=torch.float64, device=self.device)
            self.counts = torch.zeros(k, dtype=torch.int64, device=self.device)
        else:
            self.sums = np.zeros((k, d), np.float64)
            self.counts = np.zeros(k, np.int64)

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        if self.cuda:
            import torch

            li = torch.from_numpy(labels.astype(np.int64)).to(self.device)
            self.sums.index_add_(0, li, torch.from_numpy(x).to(self.device, torch.float64))
            self.counts += torch.bincount(li, minlength=self.k)
            return
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        self.sums[sorted_labels[starts]] += np.add.reduceat(x[order], starts, axis=0, dtype=np.float64)
        self.counts += np.bincount(labels, minlength=self.k)

    def reduced(self, shard: Shard) -> tuple[np.ndarray, np.ndarray]:
        """The sums and counts over every rank."""
        if not self.cuda and shard.world == 1:
            return self.sums, self.counts
        import torch

        sums, counts = (self.sums, self.counts) if self.cuda else (torch.from_numpy(self.sums), torch.from_numpy(self.counts))
        if shard.world > 1:
            all_reduce_sum_(sums)
            all_reduce_sum_(counts)
        return sums.cpu().numpy(), counts.cpu().numpy()


def _pass(rows: Rows, centroids: np.ndarray, device: torch.device | str, shard: Shard, accumulate: bool, tick: Tick,
          cells: tuple[np.ndarray, np.ndarray] | None = None):
    """One pass over this shard's blocks: nearest centroid and cosine of every row (gathered
    over ranks) and, with ``accumulate``, the per-cluster float64 sums and counts (all-reduced)."""
    nearest = _Nearest(centroids, device) if cells is None else _CellNearest(centroids, cells, device)
    sums = _Sums(*centroids.shape, device) if accumulate else None
    parts = []
    for start, stop in shard.blocks(rows.n):
        x = rows.fetch(slice(start, stop))
        ip, lab = nearest.search(x)
        sims = (ip / np.maximum(np.linalg.norm(x, axis=1), 1e-12)).astype(np.float32)
        parts.append((start, lab, sims))
        if accumulate:
            sums.add(x, lab)
        tick(stop - start)
    labels, sims = _gather(parts, rows.n, shard)
    if not accumulate:
        return labels, sims
    return (labels, sims, *sums.reduced(shard))


class _CellNearest:
    """Nearest centroid within the nearest cell (the assignment of a two-stage clustering)."""

    def __init__(self, centroids: np.ndarray, cells: tuple[np.ndarray, np.ndarray], device: torch.device | str) -> None:
        centres, cell_of = cells
        self.coarse = _Nearest(centres, device)
        self.members = [np.flatnonzero(cell_of == c).astype(np.int32) for c in range(len(centres))]
        self.fine = [_Nearest(centroids[m], device) if len(m) else None for m in self.members]

    def search(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, cell = self.coarse.search(x)
        ip = np.empty(len(x), np.float32)
        lab = np.empty(len(x), np.int32)
        for c in np.unique(cell):
            rows = np.flatnonzero(cell == c)
            ip[rows], local = self.fine[c].search(np.ascontiguousarray(x[rows]))
            lab[rows] = self.members[c][local]
        return ip, lab


def assign(rows: Rows, res: "KMeansResult | np.ndarray", device: torch.device | str, shard: Shard = ONE,
           tick: Tick = _no_tick) -> tuple[np.ndarray, np.ndarray]:
    """(centroid, cosine to it) of every row: the nearest centroid, or for a two-stage
    result still in training the nearest centroid of the nearest cell."""
    if isinstance(res, np.ndarray):
        return _pass(rows, np.asarray(res, np.float32), device, shard, False, tick)
    return _pass(rows, res.centroids, device, shard, False, tick, cells=res.cells)


def _split_into_empty(c: np.ndarray, counts: np.ndarray, empty: np.ndarray, rng: np.random.Generator) -> None:
    """Re-seed each empty cluster by splitting the largest one in two (nudged apart along a
    random direction), as Faiss does; in place."""
    counts = counts.copy()
    for j in np.flatnonzero(empty):
        i = int(np.argmax(counts))
        if counts[i] < 2:
            return
        nudge = rng.standard_normal(c.shape[1]).astype(np.float32) * SPLIT_EPS
        c[j], c[i] = _unit(c[i] + nudge), _unit(c[i] - nudge)
        counts[j] = counts[i] // 2
        counts[i] -= counts[j]


def _centroids(sums: np.ndarray, counts: np.ndarray, previous: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c = previous.copy()
    norms = np.linalg.norm(sums, axis=1)
    live = (counts > 0) & (norms > 0)
    c[live] = (sums[live] / norms[live, None]).astype(np.float32)
    _split_into_empty(c, counts, ~live, rng)
    return c


def lloyd(rows: Rows, centroids: np.ndarray, iters: int, device: torch.device | str, shard: Shard,
          rng: np.random.Generator, tick: Tick = _no_tick) -> KMeansResult:
    """Lloyd iterations from ``centroids``; stops early when no label changes. The labels
    returned are those of the returned centroids."""
    c = np.asarray(centroids, np.float32)
    prev = None
    for _ in range(iters):
        labels, sims, sums, counts = _pass(rows, c, device, shard, True, tick)
        if prev is not None and np.array_equal(labels, prev):
            return KMeansResult(c, labels, sims)  # a fixed point: c is already the mean of these labels
        c = _centroids(sums, counts, c, rng)
        prev = labels
    labels, sims = _pass(rows, c, device, shard, False, tick)
    return KMeansResult(c, labels, sims)


def _weighted_sample(weights: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``m`` distinct positions drawn with probability proportional to ``weights``
    (Efraimidis-Spirakis keys); positions of zero weight only when nothing else is left."""
    u = rng.random(len(weights))
    with np.errstate(divide="ignore"):
        keys = np.where(weights > 0, np.log(u) / np.maximum(weights, 1e-300), -np.inf)
    ties = np.lexsort((np.arange(len(keys)), -keys))  # best key first; equal keys by position
    return ties[:m]


def _greedy_plusplus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ on rows in memory (unit vectors): each new centre is the best, by
    the remaining D² potential, of 2 + ln k candidates drawn by D⁴. Returns row numbers."""
    m = len(x)
    trials = 2 + int(math.log(k))
    chosen = [int(rng.integers(m))]
    best = x @ x[chosen[0]]
    with _one_thread():  # thousands of thin products (rows x a few candidates)
        for _ in range(k - 1):
            best = _greedy_step(x, best, chosen, trials, rng)
    return np.asarray(chosen)


def _greedy_step(x: np.ndarray, best: np.ndarray, chosen: list, trials: int, rng: np.random.Generator) -> np.ndarray:
    """One centre of greedy k-means++ (appended to ``chosen``); returns the new best cosines."""
    m = len(x)
    w = np.maximum(1.0 - best, 0.0).astype(np.float64) ** SEED_POWER
    w[chosen] = 0.0
    total = w.sum()
    if total <= 0:  # every row sits on a centre: any other row will do
        w = np.ones(m)
        w[chosen] = 0.0
        total = w.sum()
    cands = np.minimum(np.searchsorted(np.cumsum(w), rng.random(trials) * total, side="right"), m - 1)
    cand_best = np.maximum(best[:, None], x @ x[cands].T)
    j = int(np.argmin((1.0 - cand_best).sum(axis=0)))
    chosen.append(int(cands[j]))
    return cand_best[:, j]


def _doubling_plusplus(rows: Rows, k: int, rng: np.random.Generator, device: torch.device | str, shard: Shard,
                       tick: Tick) -> np.ndarray:
    """k-means++ in rounds that double the number of centres (each round samples as many new
    centres as there are, by D⁴): about one Lloyd pass in all, for k too large to seed one by one."""
    first = int(rng.integers(rows.n))
    chosen = [first]
    new = _unit(rows.fetch(np.array([first])))
    best = None
    while True:
        _, sims = _pass(rows, new, device, shard, False, tick)
        best = sims if best is None else np.maximum(best, sims)
        if len(chosen) >= k:
            return np.asarray(chosen)
        weights = np.maximum(1.0 - best.astype(np.float64), 0.0) ** SEED_POWER
        weights[chosen] = 0.0
        if not (weights > 0).any():
            weights = np.ones(rows.n)
            weights[chosen] = 0.0
        pick = _weighted_sample(weights, min(k - len(chosen), len(chosen)), rng)
        chosen.extend(pick.tolist())
        new = _unit(rows.fetch(pick))


def seed_plusplus(rows: Rows, k: int, rng: np.random.Generator, device: torch.device | str, shard: Shard = ONE,
                  tick: Tick = _no_tick) -> np.ndarray:
    """k initial centres (unit vectors) by k-means++ seeding.

    Up to ``SEQUENTIAL_SEED_MAX`` centres: greedy k-means++ one centre at a time on a sample
    of the rows held in memory (all of them up to ``SEED_SAMPLE`` rows; a pool that large
    has no cluster the sample would miss that k this small could afford). Beyond: doubling
    rounds over all rows."""
    if k > SEQUENTIAL_SEED_MAX:
        return _unit(rows.fetch(_doubling_plusplus(rows, k, rng, device, shard, tick)))
    m = min(rows.n, max(SEED_SAMPLE, SEED_PER_CLUSTER * k))
    sample = np.arange(rows.n) if m == rows.n else np.sort(rng.choice(rows.n, m, replace=False))
    x = _unit(rows.fetch(sample))
    tick(m)
    return x[_greedy_plusplus(x, k, rng)]


def resample_rows(labels: np.ndarray, sims: np.ndarray, points: int, strategy: str,
                  rng: np.random.Generator) -> np.ndarray:
    """Up to ``points`` rows of every cluster, ascending: those closest to their centroid or random ones."""
    n = len(labels)
    if strategy == "closest":
        order = np.lexsort((np.arange(n), -sims, labels))
    elif strategy == "random":
        order = np.lexsort((rng.random(n), labels))
    else:
        raise UserError(f"unknown resampling strategy {strategy!r}: use {' or '.join(STRATEGIES)}")
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_cluster = np.arange(n) - first
    return np.sort(order[rank_in_cluster < points])


def allocate(total: int, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Integer shares of ``total``, proportional to ``weights``, at least 1 and at most ``caps``
    where ``caps`` > 0, summing to ``total`` (largest remainders first; ties to the lower index)."""
    caps = np.asarray(caps, np.int64)
    if not (caps > 0).sum() <= total <= caps.sum():
        raise ValueError(f"cannot give {total} to {(caps > 0).sum()} parts of at least 1 and at most {caps.sum()} in all")
    w = np.where(caps > 0, np.maximum(np.asarray(weights, np.float64), 0.0), 0.0)
    if w.sum() <= 0:
        w = caps.astype(np.float64)
    ideal = total * w / w.sum()
    x = np.minimum(np.maximum(np.floor(ideal).astype(np.int64), (caps > 0).astype(np.int64)), caps)
    while x.sum() < total:
        x[int(np.argmax(np.where(x < caps, ideal - x, -np.inf)))] += 1
    while x.sum() > total:
        gap = np.where(x > 1, ideal - x, np.inf)
        x[int(np.argmin(gap))] -= 1
    return x


def _owners(costs: np.ndarray, world: int) -> np.ndarray:
    """Which rank does each cell: largest first, to the least-loaded rank (deterministic)."""
    load = np.zeros(world)
    owner = np.zeros(len(costs), np.int64)
    for c in np.lexsort((np.arange(len(costs)), -costs)):
        r = int(np.argmin(load))
        owner[c] = r
        load[r] += costs[c]
    return owner


def _two_stage(rows: Rows, k: int, params: KMeansParams, seed: tuple, shard: Shard, tick: Tick) -> KMeansResult:
    g = max(2, int(round(math.sqrt(k))))
    coarse = _cluster(rows, g, params, (*seed, 0), shard, tick)
    order = np.argsort(coarse.labels, kind="stable")
    bounds = np.searchsorted(coarse.labels[order], np.arange(g + 1))
    sizes = np.diff(bounds)
    distortion = np.bincount(coarse.labels, weights=1.0 - coarse.sims.astype(np.float64), minlength=g)
    shares = allocate(k, sizes, distortion)
    owner = _owners(sizes.astype(np.float64) * shares, shard.world)
    mine = {}
    for c in range(g):
        if shares[c] and owner[c] == shard.rank:
            # A cell is clustered whole by one rank; cells of a sharded pool are read from its store.
            cell = order[bounds[c] : bounds[c + 1]]
            # A cell that fits in memory is read once, not once per Lloyd pass.
            cell_rows = (ArrayRows(rows.fetch(cell), rows.exact_sums) if len(cell) * rows.dim * 4 <= CELL_BYTES
                         else rows.subset(cell))
            mine[c] = _cluster(cell_rows, int(shares[c]), params, (*seed, c + 1), ONE, tick)
    if shard.world > 1:
        mine = {c: r for part in all_gather_object(mine) for c, r in part.items()}
    labels = np.empty(rows.n, np.int32)
    sims = np.empty(rows.n, np.float32)
    offset = 0
    for c in range(g):
        if shares[c]:
            members = order[bounds[c] : bounds[c + 1]]
            labels[members] = mine[c].labels + offset
            sims[members] = mine[c].sims
            offset += int(shares[c])
    centroids = np.concatenate([mine[c].centroids for c in range(g) if shares[c]])
    return KMeansResult(centroids, labels, sims, (coarse.centroids, np.repeat(np.arange(g), shares).astype(np.int32)))


def _cluster(rows: Rows, k: int, params: KMeansParams, seed: tuple, shard: Shard, tick: Tick) -> KMeansResult:
    """k-means without resampling: seeding and Lloyd, or two stages for a large k on a CPU.

    With more than ``MAX_PER_CENTROID`` rows per cluster the centroids are trained on a
    random sample of that many rows per cluster (as Faiss does), then every row is assigned."""
    if not 1 <= k <= rows.n:
        raise UserError(f"cannot make {k} clusters of {rows.n} vectors: more clusters than points")
    rng = np.random.default_rng(list(seed))
    if rows.n > MAX_PER_CENTROID * k:
        sample = np.sort(rng.choice(rows.n, MAX_PER_CENTROID * k, replace=False))
        trained = _cluster(ArrayRows(rows.fetch(sample), rows.exact_sums), k, params, (*seed, 1), ONE, tick)
        labels, sims = assign(rows, trained, params.device, shard, tick)
        return KMeansResult(trained.centroids, labels, sims, trained.cells)
    if device_type(params.device) != "cuda" and k >= 16 and rows.n * k > TWO_STAGE_WORK:
        return _two_stage(rows, k, params, seed, shard, tick)
    return lloyd(rows, seed_plusplus(rows, k, rng, params.device, shard, tick), params.iters, params.device, shard,
                 rng, tick)


def spherical_kmeans(rows: Rows, k: int, params: KMeansParams | None = None, seed: tuple | int = 0,
                     shard: Shard = ONE, tick: Tick = _no_tick) -> KMeansResult:
    """k clusters of ``rows`` (cosine), then ``params.resample_steps`` resampling steps.
    Deterministic for ``seed`` (an int or a tuple of ints) and the same for any ``shard``
    split of the rows.

    A resampling step takes ``params.resample_points`` rows of every cluster (the closest to
    its centroid, or random ones) and clusters that balanced set afresh, from a new seeding,
    then reassigns every row to the new centroids. Seeding afresh matters: Lloyd iterations
    only move centroids locally, so they cannot take a centroid from an over-split dense
    region to an uncovered part of the tail, and a new D⁴ seeding on the balanced set does.

    The labels returned are exact (each row's nearest centroid), whichever way the centroids
    were trained."""
    params = params or KMeansParams()
    seed = (seed,) if isinstance(seed, int) else tuple(seed)
    res = _cluster(rows, k, params, seed, shard, tick)
    rng = np.random.default_rng([*seed, 1 << 20])
    for step in range(params.resample_steps):
        pick = resample_rows(res.labels, res.sims, params.resample_points, params.resample_strategy, rng)
        if len(pick) < k:  # fewer rows than clusters (empty clusters): nothing to balance
            break
        sub = ArrayRows(rows.fetch(pick), exact_sums=rows.exact_sums)
        fresh = _cluster(sub, k, params, (*seed, (1 << 20) + step + 1), ONE, tick)
        labels, sims = assign(rows, fresh, params.device, shard, tick)
        res = KMeansResult(fresh.centroids, labels, sims, fresh.cells)
    if res.cells is not None:  # routed through cells while training: the labels returned are exact
        labels, sims = assign(rows, res.centroids, params.device, shard, tick)
        res = KMeansResult(res.centroids, labels, sims)
    return res
