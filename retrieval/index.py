"""Reading an index directory: the only way the CLI, dedup and the web UI read an index.

``open_index(dir)`` gives an :class:`IndexReader`: records, stored vectors, and kNN search
over all shards with exact re-ranking. Search scores are cosine similarities.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dinoret.indexer.catalog import count_skipped, last_run, open_catalog, read_info, read_shards, read_skipped
from dinoret.indexer.identity import identity_mismatch
from dinoret.indexer.layout import IndexPaths, disk_usage
from dinoret.indexer.meta import MetaStore, Record
from dinoret.indexer.shards import merge_topk, read_merged, search_shards
from dinoret.indexer.vectors import VectorStore
from dinoret.core.errors import UserError

__all__ = ["Hit", "IndexReader", "Record", "open_index"]

MAX_TOMBSTONE_SLACK = 1000
_RERANK_BATCH = 256  # queries re-ranked at once (bounds memory: batch x candidates x dim floats)


@dataclass
class Hit:
    rank: int  # 1-based
    id: int
    path: str
    score: float


def open_index(index_dir: str | Path) -> "IndexReader":
    paths = IndexPaths.of(index_dir)
    if not paths.exists():
        raise UserError(f"no index at {paths.root}: build one with `dinoret index PATH --index {index_dir}`")
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
            raise UserError(f"index at {self.root} was never completed: run `dinoret index` on it again")
        self.identity: dict = info.identity
        self.weights_path: str = info.weights_path
        self.meta = MetaStore(paths.meta, readonly=True)
        weakref.finalize(self, self.meta.close)
        self.store = VectorStore(paths.vectors)
        self._lock = threading.Lock()
        self._loaded: tuple[dict, list] | None = None
        self._query_embedder = None

    # --- records and vectors ------------------------------------------------------
    def __len__(self) -> int:
        return len(self.meta)

    def ids(self) -> np.ndarray:
        return self.meta.ids()

    def vectors(self, ids) -> np.ndarray:
        return self.store.get(ids)

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

    def _shards(self) -> tuple[dict, list]:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load_shards()
            return self._loaded

    def _load_shards(self) -> tuple[dict, list]:
        for _attempt in range(3):  # a concurrent index run may replace files between the two reads
            info = read_info(self.engine)
            spec = dict(info.index_params or {}, type=info.index_type)
            files = [self._paths.shards / row.file for row in read_shards(self.engine)]
            if all(f.is_file() for f in files):
                return spec, read_merged(files, spec)
        raise UserError(f"shard files of {self.root} are missing: run `dinoret index` on it again")

    def search(self, queries: np.ndarray, k: int = 10, rerank: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores float32 [Q,k], ids int64 [Q,k]) per query vector; -inf / -1 pad.

        Flat indexes are exact already; IVF-PQ candidates (``rerank_candidates`` of them, at
        least 4k) are re-scored with exact cosine from the stored vectors when ``rerank``."""
        q = _normalised(queries)
        spec, indexes = self._shards()
        approx = spec.get("type") == "ivfpq"
        n = max(int(spec.get("rerank_candidates", 0)), 4 * k) if approx and rerank else k
        # Ids deleted since their shard was written (only after a crash or during a run).
        tombstones = self.meta.tombstone_count()
        scores, ids = search_shards(indexes, q, n + min(tombstones, MAX_TOMBSTONE_SLACK))
        if tombstones:
            dead = ~self.meta.live_mask(ids)
            ids[dead], scores[dead] = -1, -np.inf
        if approx and rerank:
            scores = self._exact_scores(q, ids)
        return merge_topk(scores, ids, k)

    def _exact_scores(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = np.full(ids.shape, -np.inf, dtype=np.float32)
        for s in range(0, len(q), _RERANK_BATCH):
            block = ids[s : s + _RERANK_BATCH]
            rows, cols = np.nonzero(block >= 0)
            if rows.size == 0:
                continue
            uniq, pos = np.unique(block[rows, cols], return_inverse=True)
            vecs = self.store.get(uniq)
            out[s + rows, cols] = np.einsum("nd,nd->n", q[s + rows], vecs[pos])
        return out

    def embedder(self, device: str = "auto", weights: str | None = None):
        """The collection's embedder: same model, weights (sha256 checked) and preprocessing."""
        from dinoret.indexer.embed import Embedder
        from dinoret.indexer.preprocess import Preprocess

        path = Path(weights or self.weights_path)
        if not path.is_file():
            raise UserError(
                f"the weights this index was built with are not at {path}: pass --weights FILE "
                f"(the {self.identity['model']} file with sha256 {self.identity['weights_sha256'][:12]}…)"
            )
        emb = Embedder.load(None, str(path), Preprocess.from_dict(self.identity["preprocess"]), device,
                            precision=self.identity.get("precision", "fp32"))
        problem = identity_mismatch(self.identity, emb.identity())
        if problem:
            raise UserError(f"{path} does not match the index: {problem}")
        return emb

    def configure_embedder(self, device: str = "auto", weights: str | None = None) -> None:
        """Choose the device (and weights file) that ``search_images`` embeds queries with."""
        emb = self.embedder(device=device, weights=weights)
        with self._lock:
            self._query_embedder = emb

    def _default_embedder(self):
        with self._lock:
            if self._query_embedder is None:
                self._query_embedder = self.embedder()
            return self._query_embedder

    def embed_images(self, images: list[Image.Image | str | Path]) -> np.ndarray:
        """Embed query images exactly as the collection was (file decode included)."""
        from dinoret.indexer.decode import SkipFile, open_image

        emb = self._default_embedder()
        pil = []
        for img in images:
            if isinstance(img, Image.Image):
                pil.append(img.convert("RGB"))
                continue
            try:
                pil.append(open_image(img, draft_size=emb.preprocess.draft_size()).image)
            except SkipFile as e:
                raise UserError(f"cannot read query image {img}: {e.reason}") from None
        return emb.embed_images(pil)

    def search_images(self, images: list[Image.Image | str | Path], k: int = 10, rerank: bool = True) -> list[list[Hit]]:
        if not images:
            return []
        scores, ids = self.search(self.embed_images(images), k=k, rerank=rerank)
        live = {r.id: r for r in self.records(np.unique(ids[ids >= 0]))}
        out = []
        for row_s, row_i in zip(scores, ids):
            hits = [(i, s) for i, s in zip(row_i.tolist(), row_s.tolist()) if i in live]
            out.append([Hit(rank=r, id=i, path=live[i].path, score=float(s)) for r, (i, s) in enumerate(hits, 1)])
        return out

    # --- about the index ------------------------------------------------------
    def stats(self) -> dict:
        info = read_info(self.engine)
        run = last_run(self.engine)
        return {
            "model": self.identity["model"],
            "dim": self.identity["dim"],
            "images": len(self),
            "shards": len(read_shards(self.engine)),
            "index_type": info.index_type,
            "index_params": info.index_params or {},
            "disk_bytes": disk_usage(self.root),
            "last_run": run.to_dict() if run else None,
            "skipped": count_skipped(self.engine),
        }

    def shard_sizes(self) -> list[tuple[int, int]]:
        """(shard number, vectors in its file)."""
        return [(row.shard, row.n_vectors) for row in read_shards(self.engine)]

    def skipped(self) -> list[tuple[str, str]]:
        return read_skipped(self.engine)
