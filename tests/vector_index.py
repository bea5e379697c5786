"""Indexes made straight from vectors (no model), for curation tests: planted clusters with known members."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dinoret.indexer.catalog import open_catalog
from dinoret.indexer.commit import commit_vectors, create_info
from dinoret.indexer.layout import IndexPaths
from dinoret.indexer.meta import MetaStore, Record
from dinoret.indexer.sync import sync_shards

IDENTITY = {"model": "synthetic", "weights_sha256": "0" * 64, "dim": None, "backbone_config": {}, "preprocess": {}}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted(sizes, dim: int = 32, noise: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, true cluster of each, centres): tight clusters of the given sizes around random centres."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((len(sizes), dim)))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = unit(centres[truth] + noise * rng.standard_normal((len(truth), dim)))
    return x, truth, centres


def add_vectors(index_dir: Path, vectors: np.ndarray, paths: list[str] | None = None, commit_every: int = 1000,
                identity: dict | None = None, hashes: list[str] | None = None) -> None:
    """Commit ``vectors`` (with file paths, default /planted/<n>.jpg) and bring the shards up to date."""
    paths_ = IndexPaths.of(index_dir)
    paths_.root.mkdir(parents=True, exist_ok=True)
    engine = open_catalog(paths_.catalog, create=True)
    from dinoret.indexer.catalog import read_info

    if read_info(engine) is None:
        create_info(engine, dict(identity or IDENTITY, dim=vectors.shape[1]), "", 1_000_000)
    meta = MetaStore(paths_.meta, readonly=False)
    start = meta.counters()["next_id"]
    names = paths or [f"/planted/{start + i}.jpg" for i in range(len(vectors))]
    hashes = hashes or [f"{abs(hash((str(index_dir), p))):032x}" for p in names]
    items = ((Record(-1, p, 1, 0.0, h, None, 8, 8, -1), v) for p, h, v in zip(names, hashes, vectors))
    try:
        commit_vectors(paths_, items, 1_000_000, commit_every=commit_every)
        sync_shards(paths_, engine, meta, vectors.shape[1])
    finally:
        meta.close()
        engine.dispose()


def remove_ids(index_dir: Path, ids) -> None:
    paths_ = IndexPaths.of(index_dir)
    engine = open_catalog(paths_.catalog)
    meta = MetaStore(paths_.meta, readonly=False)
    try:
        meta.commit([], deleted=[int(i) for i in ids])
        sync_shards(paths_, engine, meta, _dim(paths_))
    finally:
        meta.close()
        engine.dispose()


def _dim(paths_: IndexPaths) -> int:
    from dinoret.indexer.vectors import VectorStore

    return VectorStore(paths_.vectors).dim


def vector_index(index_dir: Path, vectors: np.ndarray, paths: list[str] | None = None, commit_every: int = 1000,
                 identity: dict | None = None, hashes: list[str] | None = None) -> Path:
    add_vectors(index_dir, vectors, paths, commit_every, identity, hashes)
    return index_dir
