"""Per-image metadata in LMDB (``meta.lmdb``): one transaction = one atomic commit.

Named databases:

* ``records``    id (8-byte big endian, so keys sort by id) -> JSON record
* ``paths``      blake2b(path) -> id (LMDB keys are limited to 511 bytes; paths are not)
* ``hashes``     content hash -> ids (duplicate keys)
* ``tombstones`` id -> shard, for ids deleted here but perhaps still inside a Faiss shard
* ``counters``   next_id, open_shard, open_count

Invariant the search relies on: every id inside a Faiss shard is either live in
``records`` or listed in ``tombstones`` (the deletion and its tombstone are one commit;
a tombstone goes only after a shard file without that id is in the catalog).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb
import numpy as np

MAP_SIZE = 64 << 30  # address space only (the file grows as needed): ~200M records
_DBS = ("records", "paths", "hashes", "tombstones", "counters")


@dataclass
class Record:
    """What the index knows of one image file (``Index.record(id)``).

    >>> idx = dinoret.open(".dinoret")
    >>> rec = idx.record(idx.ids()[0])
    >>> rec.width > 0 and rec.height > 0 and len(rec.content_hash) == 32
    True
    """

    id: int
    path: str  # absolute
    size: int
    mtime: float
    content_hash: str
    pixel_hash: str | None
    width: int
    height: int
    shard: int


def _key(i: int) -> bytes:
    return struct.pack(">q", i)


def _unkey(b: bytes) -> int:
    return struct.unpack(">q", b)[0]


def path_key(path: str) -> bytes:
    return hashlib.blake2b(os.fsencode(path), digest_size=16).digest()


def _encode(rec: Record) -> bytes:
    d = asdict(rec)
    del d["id"]
    return json.dumps(d, separators=(",", ":")).encode()


def _decode(key: bytes, value: bytes) -> Record:
    return Record(id=_unkey(key), **json.loads(value))


class _Shared:
    """LMDB allows one environment per file per process: every MetaStore of the same
    directory shares it (reference counted), opened for writing where the files allow."""

    lock = threading.Lock()
    envs: dict[str, list] = {}  # realpath -> [env, dbs, refcount]

    @classmethod
    def acquire(cls, path: Path, create: bool) -> tuple[lmdb.Environment, dict]:
        key = os.path.realpath(path)
        with cls.lock:
            entry = cls.envs.get(key)
            if entry is None:
                if create:
                    path.mkdir(parents=True, exist_ok=True)
                env = cls._open(key, create)
                dbs = {name: env.open_db(name.encode(), create=create, dupsort=name == "hashes") for name in _DBS}
                entry = cls.envs[key] = [env, dbs, 0]
            entry[2] += 1
            return entry[0], entry[1]

    @staticmethod
    def _open(key: str, create: bool) -> lmdb.Environment:
        if create or os.access(key, os.W_OK):
            return lmdb.open(key, map_size=MAP_SIZE, max_dbs=len(_DBS), create=create)
        try:
            return lmdb.open(key, map_size=MAP_SIZE, max_dbs=len(_DBS), readonly=True)
        except lmdb.Error:  # read-only media: no lock file can be made
            return lmdb.open(key, map_size=MAP_SIZE, max_dbs=len(_DBS), readonly=True, lock=False)

    @classmethod
    def release(cls, path: Path) -> None:
        key = os.path.realpath(path)
        with cls.lock:
            entry = cls.envs.get(key)
            if entry is None:
                return
            entry[2] -= 1
            if entry[2] == 0:
                entry[0].close()
                del cls.envs[key]


def _drop_mapped_pages(path: Path) -> None:
    # LMDB does not say where it mapped the file; /proc/self/maps does. The map is read-only
    # and shared: dropped pages are read again from the page cache when next touched.
    advice = getattr(mmap, "MADV_DONTNEED", None)
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return
    target = os.path.realpath(path)
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if advice is not None and len(fields) == 6 and fields[5] == target:
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), advice)


class MetaStore:
    """The LMDB environment of one index. Read methods are safe from many threads."""

    def __init__(self, path: Path, readonly: bool = True) -> None:
        self.path = path
        self.env, self.db = _Shared.acquire(path, create=not readonly)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _Shared.release(self.path)

    # --- reading ---------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        with self.env.begin(db=self.db["counters"]) as txn:
            out = {"next_id": 0, "open_shard": 0, "open_count": 0}
            for k, v in txn.cursor():
                out[k.decode()] = _unkey(v)
            return out

    def __len__(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.db["records"])["entries"]

    def get(self, i: int) -> Record | None:
        with self.env.begin(db=self.db["records"]) as txn:
            v = txn.get(_key(int(i)))
            return None if v is None else _decode(_key(int(i)), v)

    def get_many(self, ids: Iterable[int]) -> list[Record | None]:
        with self.env.begin(db=self.db["records"]) as txn:
            out = []
            for i in ids:
                k = _key(int(i))
                v = txn.get(k)
                out.append(None if v is None else _decode(k, v))
            return out

    def record_for_path(self, path: str) -> Record | None:
        """The live record of ``path``, if any (one read transaction)."""
        with self.env.begin() as txn:
            k = txn.get(path_key(path), db=self.db["paths"])
            v = None if k is None else txn.get(k, db=self.db["records"])
            return None if v is None else _decode(k, v)

    def live_mask(self, ids: np.ndarray) -> np.ndarray:
        """True where the id is live (a record exists)."""
        with self.env.begin(db=self.db["records"]) as txn:
            return np.fromiter((i >= 0 and txn.get(_key(int(i))) is not None for i in ids.ravel()), bool, ids.size).reshape(ids.shape)

    def id_for_path(self, path: str) -> int | None:
        with self.env.begin(db=self.db["paths"]) as txn:
            v = txn.get(path_key(path))
            return None if v is None else _unkey(v)

    def ids(self, after: int = -1) -> np.ndarray:
        """Live ids (greater than ``after``), ascending."""
        with self.env.begin(db=self.db["records"]) as txn:
            cur = txn.cursor()
            if after >= 0 and not cur.set_range(_key(after + 1)):
                return np.zeros(0, dtype=np.int64)
            return np.fromiter((_unkey(k) for k in cur.iternext(keys=True, values=False)), dtype=np.int64)

    def iter_records(self, after: int = -1) -> Iterator[Record]:
        """Live records with id > ``after``, by id."""
        with self.env.begin(db=self.db["records"]) as txn:
            cur = txn.cursor()
            if not cur.set_range(_key(after + 1)):
                return
            for k, v in cur:
                yield _decode(k, v)

    def drop_pages(self) -> None:
        """Hand the pages of the LMDB file read so far back to the OS (they stay in its page
        cache): a pass over a million records then does not keep the whole file (hundreds of
        MB) resident in this process. Linux only; elsewhere nothing happens."""
        _drop_mapped_pages(self.path / "data.mdb")

    def ids_by_content_hash(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        with self.env.begin(db=self.db["hashes"]) as txn:
            for k, v in txn.cursor():
                out.setdefault(k.decode(), []).append(_unkey(v))
        return out

    def tombstones(self) -> dict[int, int]:
        """id -> shard of deleted ids that may still be inside a shard file."""
        with self.env.begin(db=self.db["tombstones"]) as txn:
            return {_unkey(k): _unkey(v) for k, v in txn.cursor()}

    def tombstone_count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.db["tombstones"])["entries"]

    # --- writing (one writer at a time: the index run holds the lock file) -----
    def commit(self, new: list[Record], deleted: Iterable[int] = (), touched: Iterable[Record] = (),
               shard_size: int | None = None) -> list[Record]:
        """One atomic step: add ``new`` records (their ids and shards are assigned here,
        consecutive from ``next_id``; the ``id``/``shard`` fields passed in are ignored),
        delete ``deleted`` ids (leaving tombstones), and overwrite ``touched`` records
        (same id, e.g. a new mtime). Returns the new records with their ids."""
        c = self.counters()
        out: list[Record] = []
        with self.env.begin(write=True) as txn:
            for i in deleted:
                self._delete(txn, int(i))
            for rec in touched:
                txn.put(_key(rec.id), _encode(rec), db=self.db["records"])
            for rec in new:
                if shard_size is not None and c["open_count"] >= shard_size:
                    c["open_shard"] += 1
                    c["open_count"] = 0
                rec = Record(**{**asdict(rec), "id": c["next_id"], "shard": c["open_shard"]})
                old = txn.get(path_key(rec.path), db=self.db["paths"])
                if old is not None:  # the caller should have deleted it; never leave two ids for a path
                    self._delete(txn, _unkey(old))
                txn.put(_key(rec.id), _encode(rec), db=self.db["records"])
                txn.put(path_key(rec.path), _key(rec.id), db=self.db["paths"])
                txn.put(rec.content_hash.encode(), _key(rec.id), db=self.db["hashes"])
                c["next_id"] += 1
                c["open_count"] += 1
                out.append(rec)
            for name, value in c.items():
                txn.put(name.encode(), _key(value), db=self.db["counters"])
        return out

    def _delete(self, txn: lmdb.Transaction, i: int) -> None:
        v = txn.get(_key(i), db=self.db["records"])
        if v is None:
            return
        rec = _decode(_key(i), v)
        txn.delete(_key(i), db=self.db["records"])
        if txn.get(path_key(rec.path), db=self.db["paths"]) == _key(i):
            txn.delete(path_key(rec.path), db=self.db["paths"])
        txn.delete(rec.content_hash.encode(), _key(i), db=self.db["hashes"])
        txn.put(_key(i), _key(rec.shard), db=self.db["tombstones"])

    def clear_tombstones(self, ids: Iterable[int]) -> None:
        with self.env.begin(write=True, db=self.db["tombstones"]) as txn:
            for i in ids:
                txn.delete(_key(int(i)))
