"""Reading an index directory: the only way dedup, curation and the Python API (and through
it the CLI and the web UI) read an index.

``open_index(dir)`` gives an :class:`IndexReader`: records, stored vectors, and kNN search
over all shards with exact re-ranking. Search scores are cosine similarities. Embedding
query images is the API's (``dinoret.Index.search``); :meth:`IndexReader.embedder` gives
the collection's embedder.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dinoret.core.errors import IndexUnavailable, NotFound
from dinoret.indexer.catalog import (
    catalog_read_only, count_skipped, indexed_roots, last_run, open_catalog, read_info, read_shards, read_skipped,
)
from dinoret.indexer.damaged import index_errors
from dinoret.indexer.index_type import search_spec
from dinoret.indexer.layout import IndexPaths, disk_usage
from dinoret.indexer.meta import MetaStore, Record
from dinoret.indexer.shards import coarse_quantizer, merge_topk, read_merged, search_shards
from dinoret.indexer.vectors import VectorStore
from dinoret.indexer.writer_lock import lock_is_held

__all__ = ["Hit", "IndexReader", "Record", "open_index"]

MAX_TOMBSTONE_SLACK = 1000
_RERANK_BATCH = 256  # queries re-ranked at once (bounds memory: batch x candidates x dim floats)
_EXACT_BLOCK = 65_536  # stored vectors scored at once for images not in a shard yet


@dataclass
class Hit:
    """One search result: the indexed image ``id`` at ``path``, its cosine ``score`` to the
    query and its ``rank`` (1 = most similar).

    >>> hit = dinoret.open(".dinoret").search("query.jpg", k=1)[0]
    >>> hit.rank, isinstance(hit.id, int), isinstance(hit.score, float)
    (1, True, True)
    """

    rank: int  # 1-based
    id: int
    path: str
    score: float


def open_index(index_dir: str | Path) -> "IndexReader":
    paths = IndexPaths.of(index_dir)
    if not paths.exists():
        raise NotFound(f"no index at {paths.root}: build one with `dinoret index PATH`", param="index_dir")
    with index_errors(paths.root):
        return IndexReader(paths)


def _normalised(queries: np.ndarray) -> np.ndarray:
    q = np.array(np.atleast_2d(queries), dtype=np.float32, order="C")
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return q


class IndexReader:
    """Read-only view of one index directory; safe to share across threads."""

    def __init__(self, paths: IndexPaths) -> None:
        self.root = paths.root
        self._paths = paths
        self.engine = open_catalog(paths.catalog)
        info = read_info(self.engine)
        if info is None:
            raise IndexUnavailable(f"index at {self.root} was never completed: run `dinoret index` on it again")
        self.identity: dict = info.identity
        self.weights_path: str = info.weights_path
        self.meta = MetaStore(paths.meta, readonly=True)
        weakref.finalize(self, self.meta.close)
        self.store = VectorStore(paths.vectors)
        self._lock = threading.Lock()
        self._loaded: tuple | None = None

    # --- records and vectors ------------------------------------------------------
    def __len__(self) -> int:
        return len(self.meta)

    def ids(self) -> np.ndarray:
        return self.meta.ids()

    def vectors(self, ids, float16: bool = False) -> np.ndarray:
        """Unit float32 vectors of ``ids``; ``float16=True``: the rows exactly as stored (for
        reading a whole index: no float32 copy of them all)."""
        try:
            return self.store.get_float16(ids) if float16 else self.store.get(ids)
        except KeyError as e:  # a chunk file of vectors/ was deleted behind the index's back
            raise IndexUnavailable(f"the index at {self.root} is damaged: {e.args[0]}; rebuild it "
                                   "(`dinoret index` into a new index directory)") from None

    def record(self, id: int) -> Record | None:
        return self.meta.get(id)

    def records(self, ids) -> list[Record]:
        """Records of the live ids among ``ids``, in the order given (unknown/deleted ids left out)."""
        return [r for r in self.meta.get_many(ids) if r is not None]

    def id_for_path(self, path) -> int | None:
        return self.meta.id_for_path(str(Path(path).absolute()))

    def ids_by_content_hash(self) -> dict[str, list[int]]:
        return self.meta.ids_by_content_hash()

    # --- search ---------------------------------------------------------------
    def close(self) -> None:
        """Release the LMDB environment now (it is also released when the reader is collected)."""
        self.meta.close()
        self.engine.dispose()

    def load(self) -> None:
        """Read the Faiss shards into memory now rather than at the first search (servers warm up)."""
        self._shards()

    def _shards(self) -> tuple:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load_shards()
            return self._loaded

    def _load_shards(self) -> tuple:
        """(index spec, shard indexes, ids committed after the shards were last synced,
        the float16 coarse quantizer or None: :func:`dinoret.indexer.shards.coarse_quantizer`)."""
        for _attempt in range(3):  # a concurrent index run may replace files between the two reads
            info = read_info(self.engine)
            spec = dict(search_spec(info.index_params or {}, info.index_type), type=info.index_type)
            rows = read_shards(self.engine)
            files = [self._paths.shards / row.file for row in rows]
            if all(f.is_file() for f in files):
                indexes = read_merged(files, spec)
                return spec, indexes, self._pending(rows), coarse_quantizer(indexes, spec)
        raise IndexUnavailable(f"shard files of {self.root} are missing: run `dinoret index` on it again")

    def _pending(self, rows) -> np.ndarray:
        # Every shard is synced up to the same id; a run cut short (kill -9) between its vector
        # commits and its shard sync leaves live ids above it, searched exactly from vectors/.
        synced = min((row.max_id for row in rows), default=-1)
        if self.meta.counters()["next_id"] - 1 <= synced:
            return np.zeros(0, dtype=np.int64)
        return self.meta.ids(after=synced)

    def search(self, queries: np.ndarray, k: int = 10, rerank: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores float32 [Q,k], ids int64 [Q,k]) per query vector; -inf / -1 pad.
        ``k`` is capped at the number of vectors the index holds.

        Flat indexes are exact already; IVF-PQ candidates (``rerank_candidates`` of them, at
        least 4k) are re-scored with exact cosine from the stored vectors when ``rerank``.
        Images committed after the shards were last built are scored exactly and merged in."""
        q = _normalised(queries)
        spec, indexes, pending, coarse = self._shards()
        k = max(0, min(int(k), sum(int(ix.ntotal) for ix in indexes) + len(pending)))
        approx = spec.get("type") == "ivfpq"
        n = max(int(spec.get("rerank_candidates", 0)), 4 * k) if approx and rerank else k
        # Ids deleted since their shard was written (only after a crash or during a run).
        tombstones = self.meta.tombstone_count()
        n += min(tombstones, MAX_TOMBSTONE_SLACK)
        scores, ids = search_shards(indexes, q, n, coarse)
        if len(pending):
            more_s, more_i = self._exact_topk(q, pending, n)
            scores, ids = merge_topk(np.hstack([scores, more_s]), np.hstack([ids, more_i]), n)
        if tombstones or len(pending):
            dead = ~self.meta.live_mask(ids)
            ids[dead], scores[dead] = -1, -np.inf
        if approx and rerank:
            scores = self._exact_scores(q, ids)
        return merge_topk(scores, ids, k)

    def _exact_topk(self, q: np.ndarray, ids: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``n`` of ``ids`` per query by exact cosine, read from vectors/ a block at a time."""
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.full((len(q), 0), -1, np.int64)
        for s in range(0, len(ids), _EXACT_BLOCK):
            block = ids[s : s + _EXACT_BLOCK]
            scores = q @ self.vectors(block).T
            best_s, best_i = merge_topk(np.hstack([best_s, scores]),
                                        np.hstack([best_i, np.broadcast_to(block, scores.shape)]), n)
        return best_s, best_i

    def _exact_scores(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = np.full(ids.shape, -np.inf, dtype=np.float32)
        for s in range(0, len(q), _RERANK_BATCH):
            block = ids[s : s + _RERANK_BATCH]
            rows, cols = np.nonzero(block >= 0)
            if rows.size == 0:
                continue
            uniq, pos = np.unique(block[rows, cols], return_inverse=True)
            vecs = self.vectors(uniq)
            out[s + rows, cols] = np.einsum("nd,nd->n", q[s + rows], vecs[pos])
        return out

    def embedder(self, device: str = "auto", weights: str | None = None):
        """The collection's embedder: same model, weights (sha256 checked) and preprocessing
        (:func:`dinoret.indexer.index_embedder.load_index_embedder`)."""
        from dinoret.indexer.index_embedder import load_index_embedder

        return load_index_embedder(self.engine, weights=weights, device=device)

    def hits(self, scores: np.ndarray, ids: np.ndarray, k: int | None = None,
             leave_out: list[int | None] | None = None) -> list[list[Hit]]:
        """``search``'s (scores, ids) as :class:`Hit` lists: padding and ids deleted meanwhile
        dropped, ``leave_out[row]`` (an id, or None) dropped from its row, at most ``k`` a row.
        The one place hit records are built (``dinoret.Index.search``, which the CLI and web UI call)."""
        live = {r.id: r for r in self.records(np.unique(ids[ids >= 0]))}
        out = []
        for row, (row_s, row_i) in enumerate(zip(scores, ids)):
            skip = leave_out[row] if leave_out is not None else None
            found = [(i, s) for i, s in zip(row_i.tolist(), row_s.tolist()) if i in live and i != skip][:k]
            out.append([Hit(rank=r, id=i, path=live[i].path, score=float(s)) for r, (i, s) in enumerate(found, 1)])
        return out

    # --- about the index ------------------------------------------------------
    def stats(self) -> dict:
        info = read_info(self.engine)
        rows = read_shards(self.engine)
        run = last_run(self.engine)
        last = run.to_dict() if run else None
        if last and last["status"] == "running" and not lock_is_held(self._paths.lock):
            last["status"] = "interrupted"  # its process is gone: the OS dropped its writer lock
        return {
            "model": self.identity["model"],
            "dim": self.identity["dim"],
            "images": len(self),
            "shards": len(rows),
            "not_in_shards": len(self._pending(rows)),
            "index_type": info.index_type,
            "index_params": search_spec(info.index_params or {}, info.index_type),
            "disk_bytes": disk_usage(self.root),
            "last_run": last,
            "skipped": count_skipped(self.engine),
        }

    def shard_sizes(self) -> list[tuple[int, int]]:
        """(shard number, vectors in its file)."""
        return [(row.shard, row.n_vectors) for row in read_shards(self.engine)]

    def skipped(self) -> list[tuple[str, str]]:
        return read_skipped(self.engine)

    @property
    def read_only(self) -> bool:
        """True when the index could only be opened for reading (read-only media or folder)."""
        return catalog_read_only(self.engine)

    def indexed_roots(self) -> list[str]:
        """The folders (and files) ``dinoret index`` runs were given for this index."""
        return indexed_roots(self.engine)
