"""The catalog (``catalog.db``, SQLAlchemy on SQLite): what the index is and how it was built.

Tables (all prefixed ``index_`` so other parts can add their own tables to the same file):
``index_info`` (one row: embedder identity, weights path, index type and parameters),
``index_shards`` (the current file of each Faiss shard), ``index_runs`` (one row per
``dinoret index`` run), ``index_skipped`` (files that could not be indexed, latest state)
and ``index_weights`` (the sha256 of weights files as last hashed, with their size and
mtime, so that an unchanged weights file is not hashed again).
The catalog is the source of truth for which shard files are current: a shard file is
written under a new name first, and only the catalog commit makes it current.
"""
from __future__ import annotations

import datetime as dt
import os
import weakref
from pathlib import Path

from sqlalchemy import JSON, Engine, Float, Integer, LargeBinary, MetaData, String, create_engine, event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


def utcnow() -> dt.datetime:
    """Now in UTC without a zone: how every catalog table stores times."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


_now = utcnow
_created: "weakref.WeakKeyDictionary[Engine, set]" = weakref.WeakKeyDictionary()


def ensure_tables(engine: Engine, metadata: MetaData) -> None:
    """Create the tables of ``metadata`` in this catalog if needed (once per engine): other
    parts (dedup reports, clusterings) keep their own tables beside the index's."""
    done = _created.setdefault(engine, set())
    if id(metadata) not in done:
        try:
            metadata.create_all(engine)
        except OperationalError:  # another process (a torchrun rank) made them between check and create
            metadata.create_all(engine)
        done.add(id(metadata))


class IndexInfo(Base):
    __tablename__ = "index_info"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # always 1
    identity: Mapped[dict] = mapped_column(JSON)  # Embedder.identity()
    weights_path: Mapped[str] = mapped_column(String)
    index_type: Mapped[str] = mapped_column(String, default="none")  # none | flat | ivfpq
    index_params: Mapped[dict] = mapped_column(JSON, default=dict)
    template_file: Mapped[str | None] = mapped_column(String, nullable=True)  # trained IVF-PQ, shared by shards
    shard_size: Mapped[int] = mapped_column(Integer)
    created: Mapped[dt.datetime] = mapped_column(default=_now)
    updated: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class ShardRow(Base):
    __tablename__ = "index_shards"
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    file: Mapped[str] = mapped_column(String)  # name inside shards/
    n_vectors: Mapped[int] = mapped_column(Integer)
    max_id: Mapped[int] = mapped_column(Integer)  # every live id of this shard up to here is in the file
    updated: Mapped[dt.datetime] = mapped_column(default=_now, onupdate=_now)


class RunRow(Base):
    __tablename__ = "index_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started: Mapped[dt.datetime] = mapped_column(default=_now)
    finished: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    status: Mapped[str] = mapped_column(String, default="running")  # running | done (a crashed run stays "running")
    paths: Mapped[list] = mapped_column(JSON, default=list)
    indexed: Mapped[int] = mapped_column(Integer, default=0)
    unchanged: Mapped[int] = mapped_column(Integer, default=0)
    removed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    wall_s: Mapped[float | None] = mapped_column(Float, nullable=True)

    def to_dict(self) -> dict:
        return {c.name: getattr(self, c.name) for c in self.__table__.columns}


class SkippedRow(Base):
    __tablename__ = "index_skipped"
    path: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)  # raw bytes: names need not be UTF-8
    reason: Mapped[str] = mapped_column(String)
    run_id: Mapped[int] = mapped_column(Integer)


class WeightsFileRow(Base):
    __tablename__ = "index_weights"
    path: Mapped[str] = mapped_column(String, primary_key=True)  # absolute
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (web UI) keep reading while a run writes
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def open_catalog(path: Path, create: bool = False) -> Engine:
    """The catalog's engine. An index a reader may not write to (read-only media, a folder of
    someone else's) is opened read-only: with ``mode=ro`` when WAL's side files are there to
    read (recent commits may live in them), else ``immutable``, since SQLite cannot create
    them there and nothing can change the file through such a mount anyway."""
    path = Path(path)
    if not create and path.is_file() and not os.access(path.parent, os.W_OK):
        side_files = all(path.with_name(path.name + s).is_file() for s in ("-wal", "-shm"))
        how = "mode=ro" if side_files else "immutable=1"
        return create_engine(f"sqlite:///file:{path.absolute()}?{how}&uri=true")
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        Base.metadata.create_all(engine)
    return engine


def catalog_read_only(engine: Engine) -> bool:
    """True for a catalog opened read-only by ``open_catalog``."""
    return engine.url.query.get("immutable") == "1" or engine.url.query.get("mode") == "ro"


def read_info(engine: Engine) -> IndexInfo | None:
    with Session(engine, expire_on_commit=False) as s:
        return s.get(IndexInfo, 1)


def recorded_sha256(engine: Engine, path: str, st: os.stat_result) -> str | None:
    """The sha256 recorded for the weights file at ``path`` if its size and mtime are still
    the ones recorded with it (the file was not rewritten since), else None."""
    try:
        with Session(engine) as s:
            row = s.get(WeightsFileRow, path)
    except OperationalError:  # an index made before this table existed, on read-only media
        return None
    if row is None or (row.size, row.mtime_ns) != (st.st_size, st.st_mtime_ns):
        return None
    return row.sha256


def record_sha256(engine: Engine, path: str, st: os.stat_result, sha256: str) -> None:
    """Remember the sha256 of the weights file at ``path`` as of ``st`` (best effort: an index
    on read-only media just hashes again next time)."""
    try:
        WeightsFileRow.__table__.create(engine, checkfirst=True)
        with Session(engine) as s, s.begin():
            s.merge(WeightsFileRow(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256))
    except OperationalError:
        pass


def read_shards(engine: Engine) -> list[ShardRow]:
    with Session(engine, expire_on_commit=False) as s:
        return list(s.scalars(select(ShardRow).order_by(ShardRow.shard)))


def last_run(engine: Engine) -> RunRow | None:
    with Session(engine, expire_on_commit=False) as s:
        return s.scalars(select(RunRow).order_by(RunRow.id.desc()).limit(1)).first()


def indexed_roots(engine: Engine) -> list[str]:
    """Every folder (or file) a ``dinoret index`` run of this index was given, sorted."""
    with Session(engine) as s:
        return sorted({p for paths in s.scalars(select(RunRow.paths)) for p in (paths or [])})


def display_path(raw: bytes) -> str:
    """A skipped file's name for people: undecodable bytes shown as \\xNN escapes."""
    return raw.decode("utf-8", "backslashreplace")


def read_skipped(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as s:
        return [(display_path(r.path), r.reason) for r in s.scalars(select(SkippedRow).order_by(SkippedRow.path))]


def count_skipped(engine: Engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(SkippedRow)) or 0
