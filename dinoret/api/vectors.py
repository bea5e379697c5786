"""The stored embeddings of an index as a lazy (N, dim) array: rows are read from the
memory-mapped ``vectors/`` chunks when asked for, never all at once unless asked."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dinoret.core.errors import UserError


class Vectors:
    """The embeddings of every image in an index, row ``i`` belonging to image ``ids[i]``
    (ids ascending). Indexing reads only the rows asked for (float32, L2 norm 1) from the
    memory-mapped float16 files; ``chunks()`` walks them all in bounded memory;
    ``np.asarray(vectors)`` loads them all.

    >>> import numpy as np
    >>> idx = dinoret.open(".dinoret")
    >>> vecs = idx.vectors()
    >>> vecs.shape == (len(idx), idx.dim), vecs[0].shape == (idx.dim,), vecs[:2].dtype
    (True, True, dtype('float32'))
    >>> bool(np.allclose(vecs.get([vecs.ids[1]]), vecs[1:2]))
    True
    >>> sum(len(block) for ids, block in vecs.chunks(size=5)) == len(idx)
    True
    """

    dtype = np.dtype(np.float32)

    def __init__(self, reader) -> None:
        self._reader = reader
        self.ids: np.ndarray = reader.ids()
        self.dim: int = int(reader.identity["dim"])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ids), self.dim

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"<dinoret.Vectors {len(self)} x {self.dim} float32 (memory-mapped)>"

    def get(self, ids) -> np.ndarray:
        """The vectors of these index ids (float32 [n, dim]).

        >>> idx = dinoret.open(".dinoret")
        >>> hit = idx.search("query.jpg", k=1)[0]
        >>> abs(float(idx.vectors().get([hit.id])[0] @ idx.embed("query.jpg")[0]) - hit.score) < 1e-3
        True
        """
        try:
            return self._reader.vectors(np.asarray(ids, dtype=np.int64).reshape(-1))
        except KeyError as e:
            raise UserError(e.args[0]) from None

    def __getitem__(self, key) -> np.ndarray:
        """Rows by position: an int (one vector), a slice, an int array or a boolean mask."""
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} vectors")
            return self.get(self.ids[i : i + 1])[0]
        return self.get(self.ids[key])

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, block in self.chunks():
            yield from block

    def chunks(self, size: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 vectors) ``size`` rows at a time, in id order.

        >>> vecs = dinoret.open(".dinoret").vectors()
        >>> [len(ids) for ids, block in vecs.chunks(size=len(vecs) - 1)] == [len(vecs) - 1, 1]
        True
        """
        for start in range(0, len(self.ids), size):
            ids = self.ids[start : start + size]
            yield ids, self.get(ids)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.get(self.ids)
        return out if dtype is None else out.astype(dtype, copy=False)
