"""Embeddings as stored (float16 rows, or float32), with their norms computed once.

Dedup over a million vectors must not hold a float32 copy of them all (1.5 GB for 1M x 384,
twice the float16 bytes): rows stay as they were read and are normalised on the way out,
a block or a handful of rows at a time.
"""
from __future__ import annotations

import numpy as np

_BLOCK = 16_384


class UnitVectors:
    """Rows of ``raw`` ([N, D], float16 or float32), handed out L2-normalised in float32."""

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw if raw.ndim == 2 else raw.reshape(len(raw), -1)
        self.inv_norm = np.empty(len(self.raw), np.float32)
        for s in range(0, len(self.raw), _BLOCK):
            b = _to_float32(self.raw[s : s + _BLOCK])
            self.inv_norm[s : s + _BLOCK] = 1.0 / np.maximum(np.linalg.norm(b, axis=1), 1e-12)

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def dim(self) -> int:
        return self.raw.shape[1]

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes + self.inv_norm.nbytes

    def block(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 unit rows ``start:stop``."""
        out = _to_float32(self.raw[start:stop])
        out *= self.inv_norm[start:stop, None]
        return out

    def rows(self, idx) -> np.ndarray:
        """float32 unit rows ``idx`` (any shape of indices: the result has one more axis)."""
        idx = np.asarray(idx, np.int64)
        out = _to_float32(self.raw[idx])
        out *= self.inv_norm[idx][..., None]
        return out

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, slice):
            return self.block(*idx.indices(len(self))[:2]) if idx.step in (None, 1) else self.rows(np.arange(len(self))[idx])
        return self.rows(idx)


def _to_float32(a: np.ndarray) -> np.ndarray:
    # numpy, not torch: importing torch for the conversion alone would cost dedup ~0.5 GiB resident.
    return np.array(a, dtype=np.float32)


def as_unit(x) -> UnitVectors:
    return x if isinstance(x, UnitVectors) else UnitVectors(np.asarray(x))
