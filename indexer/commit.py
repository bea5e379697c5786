"""Committing embedded files to an index: the chunk file first, then one LMDB transaction.

The chunk of vectors is named by the first id the LMDB commit will hand out, so until
that commit happens the chunk is an orphan that the next writer deletes; after it, the
records and their vectors are live together. Nothing else makes ids live.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from dinoret.indexer.catalog import IndexInfo, read_info
from dinoret.indexer.layout import IndexPaths
from dinoret.indexer.meta import MetaStore, Record
from dinoret.indexer.vectors import write_chunk

COMMIT_SECONDS = 60.0  # commit at least this often, whatever the count


def create_info(engine: Engine, identity: dict, weights_path: str, shard_size: int) -> IndexInfo:
    """The catalog entry of a new index: which embedder its vectors come from."""
    with Session(engine) as s, s.begin():
        s.add(IndexInfo(id=1, identity=identity, weights_path=weights_path, index_type="none",
                        index_params={}, shard_size=shard_size))
    return read_info(engine)


class Committer:
    """Buffers embedded files and commits them (chunk file, then LMDB) every so often."""

    def __init__(self, paths: IndexPaths, meta: MetaStore, shard_size: int, commit_every: int) -> None:
        self.paths, self.meta = paths, meta
        self.shard_size, self.commit_every = shard_size, commit_every
        self.records: list[Record] = []
        self.vectors: list[np.ndarray] = []
        self.touched: list[Record] = []
        self.deleted: list[int] = []
        self.last = time.monotonic()
        self.indexed = 0

    def add(self, record: Record, vector: np.ndarray) -> None:
        """Queue a new record (its id and shard are assigned at commit) with its vector."""
        self.records.append(record)
        self.vectors.append(vector)

    def maybe_commit(self) -> None:
        pending = len(self.records) + len(self.touched) + len(self.deleted)
        if pending >= self.commit_every or (pending and time.monotonic() - self.last > COMMIT_SECONDS):
            self.commit()

    def commit(self) -> None:
        if self.records:
            # The chunk is named by the first id the commit below will hand out.
            write_chunk(self.paths.vectors, self.meta.counters()["next_id"], np.stack(self.vectors))
        new = self.meta.commit(self.records, deleted=self.deleted, touched=self.touched, shard_size=self.shard_size)
        self.indexed += len(new)
        self.records, self.vectors, self.touched, self.deleted = [], [], [], []
        self.last = time.monotonic()


def commit_vectors(paths: IndexPaths, items: Iterable[tuple[Record, np.ndarray]], shard_size: int,
                   commit_every: int = 100_000) -> int:
    """Commit vectors computed elsewhere (benchmarks, tests, other embedders) into an index
    whose catalog entry exists; returns how many. The shards are brought up to date by
    ``dinoret.indexer.sync.sync_shards`` afterwards, as at the end of an index run."""
    meta = MetaStore(paths.meta, readonly=False)
    try:
        committer = Committer(paths, meta, shard_size=shard_size, commit_every=commit_every)
        for record, vector in items:
            committer.add(record, vector)
            committer.maybe_commit()
        committer.commit()
        return committer.indexed
    finally:
        meta.close()
