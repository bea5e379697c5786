"""The clustering of an index, kept in the index: arrays under ``clusters/`` and one catalog row.

``clusters/<name>/`` holds ``ids.npy``, ``labels.npy`` and ``sims.npy`` (every clustered
image, its leaf cluster and its cosine to the leaf centroid), ``centroids-<level>.npy`` and
``parents-<level>.npy``. The table ``curate_clusterings`` in ``catalog.db`` says which
folder is current, with the parameters, the model (weights sha256) and the number of
images it was made on.

Crash-safe: a new clustering is written into ``<name>.tmp/``, each file fsynced, the folder
renamed, and only then one catalog transaction makes it current. A run that fails or is
killed before that commit changes nothing the readers see; its leftovers are deleted by
the next save.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import JSON, DateTime, Engine, Float, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dinoret.core.errors import UserError
from dinoret.indexer.catalog import ensure_tables, utcnow
from dinoret.retrieval.hierarchy import Hierarchy

FOLDER = "clusters"
TMP = ".tmp"


class Base(DeclarativeBase):
    pass


class ClusteringRow(Base):
    __tablename__ = "curate_clusterings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime)
    folder: Mapped[str] = mapped_column(String)  # name under clusters/
    params: Mapped[dict] = mapped_column(JSON)  # levels, resample, resample_points, strategy, iters, seed
    model: Mapped[str] = mapped_column(String)
    weights_sha256: Mapped[str] = mapped_column(String)
    n_images: Mapped[int] = mapped_column(Integer)
    max_id: Mapped[int] = mapped_column(Integer)  # largest image id it holds
    seconds: Mapped[float] = mapped_column(Float)
    note: Mapped[str] = mapped_column(String, default="")  # "clustered" or "updated: N added, M removed"

    def to_dict(self) -> dict:
        d = {c.name: getattr(self, c.name) for c in self.__table__.columns}
        d["created"] = self.created.isoformat(timespec="seconds")
        return d


def _ensure_tables(engine: Engine) -> None:
    ensure_tables(engine, Base.metadata)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _arrays(h: Hierarchy) -> dict[str, np.ndarray]:
    out = {"ids": h.ids.astype(np.int64), "labels": h.labels.astype(np.int32), "sims": h.sims.astype(np.float32)}
    for level, c in enumerate(h.centroids, 1):
        out[f"centroids-{level}"] = c.astype(np.float32)
    for level, p in enumerate(h.parents, 1):
        out[f"parents-{level}"] = p.astype(np.int32)
    return out


@contextmanager
def clustering_lock(index_root: Path) -> Iterator[None]:
    """One `curate clusters` at a time per index (the OS drops the lock if the process dies)."""
    root = Path(index_root) / FOLDER
    root.mkdir(exist_ok=True)
    with open(root / "lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `dinoret curate clusters` is writing to {index_root}; wait for it") from None
        yield


def save_clustering(engine: Engine, index_root: Path, h: Hierarchy, identity: dict, seconds: float,
                    note: str = "clustered") -> int:
    """Write ``h`` and make it the index's current clustering; returns its catalog id."""
    _ensure_tables(engine)
    root = Path(index_root) / FOLDER
    root.mkdir(exist_ok=True)
    name = f"clustering-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    tmp = root / (name + TMP)
    tmp.mkdir()
    try:
        for key, arr in _arrays(h).items():
            with open(tmp / f"{key}.npy", "wb") as f:
                np.save(f, arr)
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, root / name)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with Session(engine) as s, s.begin():
        row = ClusteringRow(created=utcnow(), folder=name, params=h.params, model=str(identity.get("model")),
                            weights_sha256=str(identity.get("weights_sha256")), n_images=int(len(h.ids)),
                            max_id=int(h.ids.max()) if len(h.ids) else -1, seconds=round(float(seconds), 3), note=note)
        s.add(row)
        s.flush()
        new_id = row.id
    remove_stale(engine, index_root)
    return new_id


def current_row(engine: Engine) -> ClusteringRow | None:
    _ensure_tables(engine)
    with Session(engine, expire_on_commit=False) as s:
        return s.scalars(select(ClusteringRow).order_by(ClusteringRow.id.desc()).limit(1)).first()


def history(engine: Engine) -> list[dict]:
    """Every clustering made in this index, newest first (only the newest has its files)."""
    _ensure_tables(engine)
    with Session(engine) as s:
        return [r.to_dict() for r in s.scalars(select(ClusteringRow).order_by(ClusteringRow.id.desc()))]


def remove_stale(engine: Engine, index_root: Path) -> None:
    """Delete clustering folders the catalog does not name as current (older ones, crashed runs)."""
    row = current_row(engine)
    root = Path(index_root) / FOLDER
    if not root.is_dir():
        return
    for p in root.iterdir():
        if p.is_dir() and (row is None or p.name != row.folder):
            shutil.rmtree(p, ignore_errors=True)


def load_clustering(engine: Engine, index_root: Path) -> tuple[Hierarchy, ClusteringRow] | None:
    """The current clustering (arrays in memory) and its catalog row, or None if there is none."""
    row = current_row(engine)
    if row is None:
        return None
    folder = Path(index_root) / FOLDER / row.folder
    if not folder.is_dir():
        raise UserError(f"the clustering files of {index_root} are missing ({folder}): "
                        "cluster the index again", param="recluster")
    levels = len(row.params["levels"])
    load = lambda key: np.load(folder / f"{key}.npy")  # noqa: E731
    h = Hierarchy(
        ids=load("ids"), labels=load("labels"), sims=load("sims"),
        centroids=[load(f"centroids-{level}") for level in range(1, levels + 1)],
        parents=[load(f"parents-{level}") for level in range(1, levels)],
        params=dict(row.params),
    )
    return h, row
