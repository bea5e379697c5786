"""Vectors read by position, a block at a time: the stored float16 vectors of an index, or an array.

Curation never loads a pool as float32 at once: k-means reads ``BLOCK`` rows, converts
them, uses them and lets them go. ``StoreRows`` reads the memory-mapped ``vectors/``
chunks of an index and gives the stored float16 values exactly (as float32), which makes
their sums in float64 exact, so any split of the rows over processes adds up to the same
bits.
"""
from __future__ import annotations

import numpy as np

from dinoret.indexer.vectors import VectorStore


class Rows:
    """``n`` vectors of ``dim`` floats, read by position (a slice or an array of positions)."""

    n: int
    dim: int
    exact_sums: bool = False  # float64 sums of these values are exact (so order-free)

    def fetch(self, sel) -> np.ndarray:
        raise NotImplementedError

    def subset(self, positions: np.ndarray) -> "Rows":
        raise NotImplementedError


class StoreRows(Rows):
    """The stored vectors of ``ids`` (index ids), in that order, straight from ``vectors/``."""

    exact_sums = True

    def __init__(self, store: VectorStore, ids: np.ndarray) -> None:
        self.store = store
        self.ids = np.asarray(ids, dtype=np.int64)
        self.n = len(self.ids)
        self.dim = store.dim

    def fetch(self, sel) -> np.ndarray:
        out = self.store.get(self.ids[sel], normalise=False)
        self.store.drop_pages()  # the copy is what is used: the mapped pages need not stay resident
        return out

    def subset(self, positions: np.ndarray) -> "StoreRows":
        return StoreRows(self.store, self.ids[positions])


class ArrayRows(Rows):
    """Vectors already in memory (centroids of the level below, a resampled set)."""

    def __init__(self, x: np.ndarray, exact_sums: bool = False) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.n, self.dim = self.x.shape
        self.exact_sums = exact_sums

    def fetch(self, sel) -> np.ndarray:
        return self.x[sel]

    def subset(self, positions: np.ndarray) -> "ArrayRows":
        return ArrayRows(self.x[positions], self.exact_sums)
