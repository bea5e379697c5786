"""One ``dinoret index`` run: find files, embed what is new or changed, drop what is gone,
bring the shards up to date. Incremental, and resumable after a crash at any moment.

Commit protocol (why a ``kill -9`` loses at most the work since the last commit):
1. a chunk of vectors is written to ``vectors/`` under its final name (tmp + rename);
2. one LMDB transaction makes their records live (ids, paths, hashes, counters);
3. at the end, the shards are synced from the committed vectors (see ``dinoret.indexer.sync``).
A chunk without its LMDB commit is deleted by the next run, whose walk finds those files
uncommitted and embeds them again; a committed file is never embedded twice because the
next run sees its path with the same size and mtime.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy.orm import Session
from tqdm import tqdm

from dinoret.indexer.catalog import IndexInfo, RunRow, SkippedRow, display_path, open_catalog, read_info, read_shards
from dinoret.indexer.commit import Committer, create_info
from dinoret.indexer.discover import find_images
from dinoret.indexer.file_dataset import FileItem, file_loader
from dinoret.indexer.identity import identity_mismatch
from dinoret.indexer.index_type import FLAT_MAX
from dinoret.indexer.layout import IndexPaths
from dinoret.indexer.meta import MetaStore, Record
from dinoret.indexer.sync import SyncResult, remove_unreferenced, sync_shards
from dinoret.indexer.vectors import remove_uncommitted
from dinoret.core.errors import UserError

DEFAULT_MODEL = "dinov2_vits14"
DEFAULT_SHARD_SIZE = 1_000_000
DEFAULT_COMMIT_EVERY = 1024  # images per commit: the most a crash can lose


@dataclass
class BuildOptions:
    model: str | None = None
    weights: str | None = None
    device: str = "auto"
    preprocess: str | None = None  # crop | whole; None: the index's, or crop for a new index
    precision: str | None = None  # fp32 | int8; None: the index's, or fp32 for a new index
    batch_size: int = 32
    workers: int | None = None  # None: half the cores, at most 8
    index_type: str = "auto"  # auto | flat | ivfpq
    flat_max: int = FLAT_MAX
    shard_size: int = DEFAULT_SHARD_SIZE
    commit_every: int = DEFAULT_COMMIT_EVERY
    gpu_decode: bool = True  # on CUDA: decode JPEGs and resize on the GPU (dinoret.indexer.gpu_pipeline)
    progress: bool = True


@dataclass
class RunSummary:
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path for display, reason)
    wall_s: float = 0.0
    embed_s: float = 0.0
    total: int = 0  # live images after the run
    sync: SyncResult | None = None

    def skip_reasons(self) -> Counter:
        return Counter(reason for _, reason in self.skipped)


@contextlib.contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """One writer per index; the OS drops the lock when the process dies (even by kill -9)."""
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `dinoret index` is writing to {path.parent}; wait for it to finish") from None
        yield


def default_workers() -> int:
    return min(8, (os.cpu_count() or 2) // 2)


def _load_embedder(info: IndexInfo | None, opts: BuildOptions):
    from dinoret.indexer.embed import Embedder
    from dinoret.indexer.preprocess import Preprocess

    if info is None:
        preprocess = Preprocess(mode=opts.preprocess or "crop")
        model = opts.model or (None if opts.weights else DEFAULT_MODEL)
        return Embedder.load(model, opts.weights, preprocess, opts.device, precision=opts.precision or "fp32")
    recorded = info.identity
    if opts.model and opts.model != recorded["model"]:
        raise UserError(
            f"the index was built with {recorded['model']}, not {opts.model}: vectors of two models "
            f"cannot be mixed; use another --index DIR (or delete this one)"
        )
    preprocess = Preprocess.from_dict(recorded["preprocess"])
    if opts.preprocess and opts.preprocess != preprocess.mode:
        raise UserError(
            f"the index was built with --preprocess {preprocess.mode}, not {opts.preprocess}; "
            f"use another --index DIR (or delete this one)"
        )
    precision = recorded.get("precision", "fp32")
    if opts.precision and opts.precision != precision:
        raise UserError(
            f"the index was built with --precision {precision}, not {opts.precision}: vectors of two "
            f"precisions cannot be mixed; use another --index DIR (or delete this one)"
        )
    weights = opts.weights or info.weights_path
    if not Path(weights).is_file():
        raise UserError(f"the weights this index was built with are not at {weights}: pass --weights FILE")
    emb = Embedder.load(None if not opts.model else opts.model, weights, preprocess, opts.device, precision=precision)
    problem = identity_mismatch(recorded, emb.identity())
    if problem:
        raise UserError(f"refusing to mix embeddings: {problem}; use another --index DIR (or delete this one)")
    return emb


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _plan(found: list[Path], meta: MetaStore, roots: list[str]) -> tuple[list[str], list[Record], list[int]]:
    """(paths to embed, unchanged records, ids whose files are gone)."""
    todo, unchanged = [], []
    seen = set()
    for p in found:
        path = str(p)
        seen.add(path)
        i = meta.id_for_path(path)
        rec = meta.get(i) if i is not None else None
        if rec is not None:
            try:
                st = os.stat(path)
            except OSError:
                todo.append(path)  # let the loader report why
                continue
            if st.st_size == rec.size and st.st_mtime == rec.mtime:
                unchanged.append(rec)
                continue
        todo.append(path)
    gone = [rec.id for rec in meta.iter_records() if _under(rec.path, roots) and rec.path not in seen]
    return todo, unchanged, gone


def _embed(todo: list[str], embedder, meta: MetaStore, committer: Committer, opts: BuildOptions,
           skipped: dict[str, str]) -> int:
    """Embeds and commits ``todo``; returns how many turned out unchanged (same bytes, new mtime)."""
    workers = default_workers() if opts.workers is None else opts.workers
    if embedder.device.type == "cuda" and opts.gpu_decode:
        from dinoret.indexer.gpu_pipeline import gpu_batches  # JPEG decode and resize on the GPU

        loader = gpu_batches(todo, embedder.preprocess, opts.batch_size, embedder.device)
    else:
        loader = file_loader(todo, embedder.preprocess, opts.batch_size, workers)
    same_bytes = 0
    with tqdm(total=len(todo), unit="img", desc="embedding", disable=not opts.progress, smoothing=0.1) as bar:
        for batch in loader:
            for item in batch.failed:
                skipped[item.path] = item.reason
                old = meta.id_for_path(item.path)
                if old is not None:  # it was indexed and is now unreadable: drop it
                    committer.deleted.append(old)
            for tensor, items in batch.groups:
                keep = []
                for j, item in enumerate(items):
                    old_id = meta.id_for_path(item.path)
                    old = meta.get(old_id) if old_id is not None else None
                    if old is not None and old.content_hash == item.content_hash:
                        # Touched, not changed: keep id and vector, record the new stat.
                        committer.touched.append(Record(**{**old.__dict__, "size": item.size, "mtime": item.mtime}))
                        same_bytes += 1
                    else:
                        keep.append(j)
                if keep:
                    vecs = embedder.embed_batch(tensor[keep] if len(keep) < len(items) else tensor)
                    for j, v in zip(keep, vecs):
                        committer.add(_record(items[j]), v)
            bar.update(sum(len(items) for _, items in batch.groups) + len(batch.failed))
            committer.maybe_commit()
    committer.commit()
    return same_bytes


def _record(item: FileItem) -> Record:
    return Record(-1, item.path, item.size, item.mtime, item.content_hash, item.pixel_hash, item.width, item.height, -1)


def _record_skipped(engine, run_id: int, roots: list[str], skipped: dict[str, str]) -> None:
    root_bytes = [os.fsencode(r) for r in roots]
    with Session(engine) as s, s.begin():
        for row in s.query(SkippedRow).all():
            p = row.path
            if any(p == r or p.startswith(r.rstrip(b"/") + b"/") for r in root_bytes):
                s.delete(row)  # the latest run over these folders says what is skipped now
        s.flush()
        for path, reason in skipped.items():
            s.merge(SkippedRow(path=os.fsencode(path), reason=reason, run_id=run_id))


def build_index(inputs: Sequence[str | os.PathLike], index_dir: str | os.PathLike, opts: BuildOptions | None = None) -> RunSummary:
    """Index the images under ``inputs`` into ``index_dir`` (created if needed)."""
    opts = opts or BuildOptions()
    t0 = time.perf_counter()
    paths = IndexPaths.of(index_dir)
    roots = [os.path.abspath(p) for p in inputs]
    for r in roots:
        if not os.path.lexists(r):
            raise UserError(f"no such file or folder: {r}")
    paths.root.mkdir(parents=True, exist_ok=True)
    with writer_lock(paths.lock):
        engine = open_catalog(paths.catalog, create=True)
        info = read_info(engine)
        embedder = _load_embedder(info, opts)
        if info is None:
            info = create_info(engine, embedder.identity(), embedder.backbone.weights_path, opts.shard_size)
        with Session(engine) as s, s.begin():
            run = RunRow(paths=roots)
            s.add(run)
            s.flush()
            run_id = run.id

        meta = MetaStore(paths.meta, readonly=False)
        try:
            remove_uncommitted(paths.vectors, meta.counters()["next_id"])
            current = {r.file for r in read_shards(engine)} | {info.template_file}
            remove_unreferenced(paths.shards, current)

            skipped: dict[str, str] = {}
            found = list(find_images(roots, exclude=[paths.root], on_skip=lambda p, r: skipped.__setitem__(str(p), r)))
            todo, unchanged, gone = _plan(found, meta, roots)
            if gone:
                meta.commit([], deleted=gone)
            opts = replace(opts, shard_size=info.shard_size)  # fixed when the index was created
            committer = Committer(paths, meta, opts.shard_size, opts.commit_every)
            t_embed = time.perf_counter()
            same_bytes = _embed(todo, embedder, meta, committer, opts, skipped)
            embed_s = time.perf_counter() - t_embed
            sync = sync_shards(paths, engine, meta, embedder.dim, forced=opts.index_type, flat_max=opts.flat_max,
                               show_progress=opts.progress)
            summary = RunSummary(
                indexed=committer.indexed, unchanged=len(unchanged) + same_bytes, removed=len(gone),
                skipped=sorted((display_path(os.fsencode(p)), r) for p, r in skipped.items()), embed_s=embed_s, total=len(meta), sync=sync,
            )
            _record_skipped(engine, run_id, roots, skipped)
        finally:
            meta.close()
        summary.wall_s = time.perf_counter() - t0
        with Session(engine) as s, s.begin():
            run = s.get(RunRow, run_id)
            run.status, run.finished, run.wall_s = "done", dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), summary.wall_s
            run.indexed, run.unchanged, run.removed, run.skipped = (
                summary.indexed, summary.unchanged, summary.removed, len(summary.skipped))
        engine.dispose()
        return summary
