"""The raw embeddings on disk: ``vectors/vec-<first id>.npy`` chunks of float16 rows.

Ids are handed out consecutively at commit time, so one chunk holds the vectors of ids
``first_id .. first_id + rows - 1`` and needs no separate id list. A chunk is written
(atomically) before the metadata commit that makes its ids live; a chunk whose first id
is not below the committed ``next_id`` belongs to a commit that never happened (a crash)
and is deleted by the next writer. Rows of deleted ids stay in their chunk, unused.
"""
from __future__ import annotations

import mmap
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dinoret.core.files import TMP_SUFFIX, atomic_path

_CHUNK = re.compile(r"^vec-(\d{12})\.npy$")


def chunk_path(directory: Path, first_id: int) -> Path:
    return directory / f"vec-{first_id:012d}.npy"


def write_chunk(directory: Path, first_id: int, vectors: np.ndarray) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = chunk_path(directory, first_id)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(vectors, dtype=np.float16))
    return path


def list_chunks(directory: Path) -> list[tuple[int, Path]]:
    """(first id, path) of every chunk, by first id."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / m.group(0)) for m in map(_CHUNK.match, (p.name for p in directory.iterdir())) if m]
    return sorted(found)


def remove_uncommitted(directory: Path, next_id: int) -> int:
    """Delete chunks (and temporary files) left by commits that did not happen; returns how many."""
    removed = 0
    for first_id, path in list_chunks(directory):
        if first_id >= next_id:
            path.unlink(missing_ok=True)
            removed += 1
    if directory.is_dir():
        for tmp in directory.glob("*" + TMP_SUFFIX):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


class VectorStore:
    """Random access to the stored vectors by id (memory-mapped; nothing is loaded up front)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._maps: dict[int, np.ndarray] = {}
        self._scan()

    def _scan(self) -> None:
        chunks = list_chunks(self.directory)
        self._starts = [first for first, _ in chunks]
        self._starts_array = np.asarray(self._starts, dtype=np.int64)
        self._paths = [path for _, path in chunks]
        self._views = {}

    def _chunk(self, i: int) -> np.ndarray:
        arr = self._maps.get(i)
        if arr is None:
            with self._lock:
                arr = self._maps.get(i)
                if arr is None:
                    arr = np.load(self._paths[i], mmap_mode="r")
                    self._maps[i] = arr
        return arr

    def _view(self, i: int) -> np.ndarray:
        # A plain ndarray over the same mapping: indexing an np.memmap pays for the subclass
        # on every call, which a re-rank touching ~100 chunks per query feels (README, 10M).
        view = self._views.get(i)
        if view is None:
            view = self._views[i] = self._chunk(i).view(np.ndarray)
        return view

    def get(self, ids, normalise: bool = True) -> np.ndarray:
        """float32 [n, D], L2-normalised again after the float16 rounding, for committed ``ids``.

        ``normalise=False`` gives the stored float16 values exactly (curation sums them
        exactly in float64, so that any split of the work over processes adds up alike)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if not self._covers(ids):
            with self._lock:
                self._scan()  # chunks committed since this store was opened
                self._maps.clear()
        # One pass in id order: each chunk touched is one slice of the sorted ids, and the
        # rows are read in file order, which is kinder to the page cache.
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        chunk = np.searchsorted(self._starts_array, sorted_ids, side="right") - 1
        if chunk[0] < 0:
            raise KeyError(f"no stored vector for ids {sorted_ids[chunk < 0][:5].tolist()}")
        bounds = [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(ids)]
        gathered = None
        for a, b in zip(bounds[:-1], bounds[1:]):
            c = int(chunk[a])
            arr = self._view(c)
            if gathered is None:
                gathered = np.empty((len(ids), arr.shape[1]), dtype=arr.dtype)
            rows = sorted_ids[a:b] - self._starts[c]
            if rows[-1] >= len(arr):
                raise KeyError(f"no stored vector for ids {sorted_ids[a:b][rows >= len(arr)][:5].tolist()}")
            # Same-dtype copies into consecutive rows; one cast and one reorder at the end
            # (a casting scatter per chunk costs several microseconds each).
            arr.take(rows, axis=0, out=gathered[a:b])
        out = np.empty(gathered.shape, dtype=np.float32)
        out[order] = gathered
        if normalise:
            out /= np.maximum(np.sqrt(np.einsum("nd,nd->n", out, out))[:, None], 1e-12)
        return out

    def get_float16(self, ids) -> np.ndarray:
        """float16 [n, D] rows exactly as stored (not renormalised), for committed ``ids``.

        For reading many vectors at once (dedup of a whole index): each chunk is mapped
        only while its rows are copied, so the result is the only copy held in memory."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        with self._lock:
            self._scan()
        if not self._paths:
            if ids.size:
                raise KeyError(f"no stored vector for ids {ids[:5].tolist()}")
            return np.zeros((0, 0), np.float16)
        starts = np.asarray(self._starts, dtype=np.int64)
        chunk = np.searchsorted(starts, ids, side="right") - 1
        if (chunk < 0).any():
            raise KeyError(f"no stored vector for ids {ids[chunk < 0][:5].tolist()}")
        out = np.empty((len(ids), self.dim), dtype=np.float16)
        order = np.argsort(ids, kind="stable")
        bounds = np.searchsorted(chunk[order], np.arange(len(starts) + 1))
        for c in range(len(starts)):
            sel = order[bounds[c] : bounds[c + 1]]
            if sel.size == 0:
                continue
            arr = np.load(self._paths[c], mmap_mode="r")
            rows = ids[sel] - starts[c]
            if rows.max() >= len(arr):
                raise KeyError(f"no stored vector for ids {ids[sel][rows >= len(arr)][:5].tolist()}")
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if hi - lo == len(rows) and (len(rows) < 2 or bool((np.diff(rows) == 1).all())):
                out[sel] = arr[lo:hi]  # every row of the range, in order: copied without a temporary
            else:
                out[sel] = arr[lo:hi][rows - lo] if hi - lo < 2 * len(rows) else arr[rows]
            del arr  # unmapped: its pages leave this process
        return out

    def drop_pages(self) -> None:
        """Hand the pages of the chunks read so far back to the OS (they stay in its page
        cache): a pass over millions of vectors then does not keep them all resident in
        this process."""
        with self._lock:
            maps = list(self._maps.values())
        for arr in maps:
            mm = getattr(arr, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED)

    def _covers(self, ids: np.ndarray) -> bool:
        if not self._starts or int(ids.min()) < self._starts[0]:
            return False
        last = len(self._starts) - 1
        return int(ids.max()) - self._starts[last] < len(self._chunk(last))

    @property
    def dim(self) -> int:
        return self._chunk(0).shape[1] if self._paths else 0

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first id, float16 memmap) of every chunk, in id order."""
        for i, first in enumerate(self._starts):
            yield first, self._chunk(i)
