"""Faiss shard files: making, training, writing (atomically) and searching them.

A flat shard is ``IDMap,Flat`` (inner product). An IVF-PQ shard is a copy of one
trained template (coarse quantizer + PQ codebooks, ``trained-*.faiss``) with its
vectors added, so every shard shares the same quantizer and codebooks and the
per-shard scores are comparable when results are merged.
"""
from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dinoret.core.errors import IndexUnavailable
from dinoret.core.files import atomic_path

if TYPE_CHECKING:
    import faiss


# Lists from which the reader finds a query's lists in a float16 copy of the centroids
# (the two-level size, dinoret.indexer.coarse): below it the flat scan of at most 12.6 MB
# stays in this CPU's 32 MB cache, and the copy would buy nothing.
COARSE_FLOAT16_MIN_NLIST = 8192


def _faiss():
    """Faiss, imported on first use: an index run with no shard file to write never needs it."""
    import faiss

    return faiss


def new_file_name(prefix: str) -> str:
    """A fresh, never-reused file name: the catalog commit is what makes it current."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}.faiss"


def train_template(spec: dict, dim: int, sample: np.ndarray) -> faiss.Index:
    """An empty, trained IVF-PQ index (the template all shards are copied from)."""
    faiss = _faiss()
    index = faiss.index_factory(dim, spec["factory"], faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # polysemous filtering is not used: candidates are re-ranked exactly
    if spec.get("coarse_training") == "two_level":
        from dinoret.indexer.coarse import train_two_level

        train_two_level(index, sample)
    else:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def empty_shard(spec: dict, dim: int, template: faiss.Index | None) -> faiss.Index:
    faiss = _faiss()
    if spec["type"] == "flat":
        return faiss.index_factory(dim, spec["factory"], faiss.METRIC_INNER_PRODUCT)
    if template is None:
        raise ValueError("an IVF-PQ shard needs the trained template")
    return faiss.clone_index(template)


def add_vectors(index: faiss.Index, ids: np.ndarray, vectors: np.ndarray) -> None:
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def remove_ids(index: faiss.Index, ids) -> int:
    ids = np.asarray(sorted(ids), dtype=np.int64)
    return int(index.remove_ids(ids)) if len(ids) else 0


def write_index(index: faiss.Index, path: Path) -> None:
    faiss = _faiss()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def prepare_for_adding(index: faiss.Index, spec: dict) -> None:
    """A shard read for searching probes many quantizer groups; adding needs only the nearest list."""
    if "quantizer_nprobe" in spec:
        from dinoret.indexer.coarse import ADD_QUANTIZER_NPROBE, set_quantizer_nprobe

        set_quantizer_nprobe(index, ADD_QUANTIZER_NPROBE)


def set_search_params(index: faiss.Index, spec: dict | None) -> None:
    faiss = _faiss()
    if spec and spec.get("type") == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = int(spec["nprobe"])
        if "quantizer_nprobe" in spec:
            from dinoret.indexer.coarse import set_quantizer_nprobe

            set_quantizer_nprobe(index, spec["quantizer_nprobe"])


def read_index(path: Path, spec: dict | None = None) -> faiss.Index:
    faiss = _faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:  # Faiss reports a damaged or truncated file this way
        found = re.search(r"\.cpp:\d+: (.+)", str(e))
        reason = (found.group(1) if found else str(e).strip() or "unreadable")[:160]
        raise IndexUnavailable(f"the shard file {path} is damaged ({reason}): rebuild the index "
                               "(`dinoret index` into a new index directory)") from None
    set_search_params(index, spec)
    return index


def read_merged(paths: list[Path], spec: dict) -> list[faiss.Index]:
    """The IVF shards of ``paths`` as one in-memory index: they share one trained quantizer,
    so one quantizer search serves all of them and only one copy of it stays in memory.
    Shards are read one at a time and their lists moved over (peak: the result plus one shard)."""
    if spec.get("type") != "ivfpq" or len(paths) < 2:
        return [read_index(p, spec) for p in paths]
    merged = read_index(paths[0])
    apart = []
    for p in paths[1:]:
        other = read_index(p)
        if _merge_is_safe(merged, other):
            merged.merge_from(other, 0)  # keeps the stored ids; empties ``other``
        else:
            set_search_params(other, spec)
            apart.append(other)
        del other
    set_search_params(merged, spec)
    return [merged, *apart]


def _list_sizes(index: faiss.Index) -> np.ndarray:
    invlists = _faiss().extract_index_ivf(index).invlists
    return np.fromiter((invlists.list_size(i) for i in range(invlists.nlist)), np.int64, invlists.nlist)


def _merge_is_safe(merged: faiss.Index, other: faiss.Index) -> bool:
    """Whether ``merged.merge_from(other)`` is safe. Faiss 1.15's fast-scan lists
    (``BlockInvertedLists.add_entries``) take a whole-block copy when a list's length is a
    multiple of the block size *in bytes* (1,536 for PQ96x4fs), and then copy the whole
    resulting list's blocks past the old end: a heap overflow, found when 10 shards of a 10M
    index with 8,192 lists merged. Such a shard is kept apart and searched on its own."""
    faiss = _faiss()
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(merged).invlists)
    if not isinstance(invlists, faiss.BlockInvertedLists):
        return True
    have, add = _list_sizes(merged), _list_sizes(other)
    return not np.any((have > 0) & (have % invlists.block_size == 0) & (add > 0))


def coarse_quantizer(indexes: list[faiss.Index], spec: dict,
                     min_nlist: int = COARSE_FLOAT16_MIN_NLIST) -> faiss.Index | None:
    """A float16 copy of the coarse centroids the IVF shards share (one trained template),
    for :func:`search_shards`: one search finds a query's lists for every shard, and at
    16,384 lists it reads 12.6 MB per query instead of the flat quantizer's 25 MB (a scan
    bound by memory bandwidth: README, 10M). None where the shards are not plain IVF
    indexes with a flat quantizer."""
    if spec.get("type") != "ivfpq" or not indexes:
        return None
    faiss = _faiss()
    first = indexes[0]
    if not isinstance(first, faiss.IndexIVF):
        return None
    quantizer = faiss.downcast_index(first.quantizer)
    if not isinstance(quantizer, faiss.IndexFlat) or first.nlist < min_nlist:
        return None
    centroids = quantizer.reconstruct_n(0, first.nlist)
    coarse = faiss.IndexScalarQuantizer(first.d, faiss.ScalarQuantizer.QT_fp16, first.metric_type)
    coarse.train(centroids)
    coarse.add(centroids)
    return coarse


def search_shards(indexes: list[faiss.Index], queries: np.ndarray, n: int,
                  coarse: faiss.Index | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best ``n`` (scores, ids) over all shards, best first; missing results are (-inf, -1).
    ``coarse`` (:func:`coarse_quantizer`) picks the probed lists once for all shards."""
    q = len(queries)
    if not indexes or n <= 0:
        return np.full((q, max(n, 0)), -np.inf, np.float32), np.full((q, max(n, 0)), -1, np.int64)
    if coarse is not None:
        nprobe = min(int(indexes[0].nprobe), int(indexes[0].nlist))
        coarse_d, coarse_i = coarse.search(queries, nprobe)
    scores, ids = [], []
    for index in indexes:
        if coarse is None:
            d, i = index.search(queries, n)
        else:
            d, i = index.search_preassigned(queries, n, coarse_i, coarse_d)
        d[i < 0] = -np.inf
        scores.append(d)
        ids.append(i)
    return merge_topk(np.hstack(scores), np.hstack(ids), n)


def merge_topk(scores: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``n`` highest scores (and their ids), best first; padded with (-inf, -1)."""
    q, width = scores.shape
    if width < n:
        scores = np.hstack([scores, np.full((q, n - width), -np.inf, np.float32)])
        ids = np.hstack([ids, np.full((q, n - width), -1, np.int64)])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    top_s = np.take_along_axis(scores, order, axis=1).astype(np.float32)
    top_i = np.take_along_axis(ids, order, axis=1)
    top_i[~np.isfinite(top_s)] = -1
    return top_s, top_i
