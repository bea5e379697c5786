"""One ``dinoret index`` run: find files, embed what is new or changed, drop what is gone,
bring the shards up to date. Incremental, and resumable after a crash at any moment.

Commit protocol (why a ``kill -9`` loses at most the work since the last commit):
1. a chunk of vectors is written to ``vectors/`` under its final name (tmp + rename);
2. one LMDB transaction makes their records live (ids, paths, hashes, counters);
3. at the end, the shards are synced from the committed vectors (see ``dinoret.indexer.sync``).
A chunk without its LMDB commit is deleted by the next run, whose walk finds those files
uncommitted and embeds them again; a committed file is never embedded twice because the
next run sees its path with the same size and mtime.

Hot path (a re-run over a collection that barely changed): a file with the size and mtime
of its record is not opened; a new or changed file is read once, hashed, and decoded from
the same bytes only if they are not the indexed ones; the model (and torch) is loaded only
for the first file that needs embedding, and the weights are hashed only if their size or
mtime changed since the catalog recorded their sha256 (``index_embedder``).
"""
from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session
from tqdm import tqdm

from dinoret.core.distributed import env_world_size
from dinoret.core.errors import NotFound, UserError
from dinoret.indexer.catalog import RunRow, SkippedRow, display_path, open_catalog, read_info, read_shards
from dinoret.indexer.commit import Committer, create_info
from dinoret.indexer.damaged import index_errors
from dinoret.indexer.discover import find_images
from dinoret.indexer.index_embedder import check_requested, check_weights, index_preprocess, load_index_embedder, remember_weights
from dinoret.indexer.index_type import FLAT_MAX
from dinoret.indexer.layout import IndexPaths
from dinoret.indexer.meta import MetaStore, Record
from dinoret.indexer.sync import SyncResult, remove_unreferenced, sync_shards
from dinoret.indexer.vectors import remove_uncommitted
from dinoret.indexer.writer_lock import writer_lock

if TYPE_CHECKING:
    import numpy as np

    # torch (seconds to import) comes in only with the first file to read: a re-run with
    # nothing changed never imports it.
    from dinoret.indexer.embed import Embedder
    from dinoret.indexer.file_dataset import Batch, FileItem
    from dinoret.indexer.preprocess import Preprocess

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


def default_workers() -> int:
    return min(8, (os.cpu_count() or 2) // 2)


def _new_embedder(opts: BuildOptions) -> Embedder:
    """The embedder of a new index, from the options (the default model's official weights if none)."""
    from dinoret.indexer.embed import Embedder
    from dinoret.indexer.preprocess import Preprocess

    preprocess = Preprocess(mode=opts.preprocess or "crop")
    model = opts.model or (None if opts.weights else DEFAULT_MODEL)
    return Embedder.load(model, opts.weights, preprocess, opts.device, precision=opts.precision or "fp32")


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


@dataclass
class _Plan:
    todo: list[str]  # paths to read (new files, or known files whose size or mtime changed)
    known: dict[str, str]  # path -> indexed content hash, for the known files in todo
    unchanged: int  # known files with the same size and mtime: not even opened
    gone: list[int]  # ids whose files are no longer under the roots


def _plan(roots: list[str], exclude: Path, meta: MetaStore, skipped: dict[str, str]) -> _Plan:
    """Walk ``roots`` and sort what is found; a file whose size and mtime are those of its
    record is not opened at all (not even to sniff its format)."""
    plan = _Plan([], {}, 0, [])
    same_stat: set[str] = set()

    def unchanged(path: Path, st: os.stat_result) -> bool:
        rec = meta.record_for_path(str(path))
        if rec is not None and (st.st_size, st.st_mtime) == (rec.size, rec.mtime):
            same_stat.add(str(path))
            return True
        return False

    seen = set()
    for p in find_images(roots, exclude=[exclude], on_skip=lambda p, r: skipped.__setitem__(str(p), r),
                         unchanged=unchanged):
        path = str(p)
        seen.add(path)
        if path in same_stat:
            plan.unchanged += 1
            continue
        rec = meta.record_for_path(path)
        if rec is not None:
            plan.known[path] = rec.content_hash  # read it: decoded only if its bytes changed
        plan.todo.append(path)
    plan.gone = [rec.id for rec in meta.iter_records() if _under(rec.path, roots) and rec.path not in seen]
    return plan


# Where the results of a run come from: this process (``local_results``) or, under torchrun,
# every rank (``dinoret.indexer.distributed_build``). Called as (todo, known, preprocess,
# embedder, opts); yields lists of results. A result is what reading one file came to:
# (item, its vector) for an embedded file, (item, None) for a failed one (``item.reason``)
# or one whose bytes are the indexed ones (``item.unchanged``).
ResultSource = Callable[..., Iterable[list]]


def batch_results(batch: Batch, embedder: Callable[[], Embedder]) -> list[tuple[FileItem, np.ndarray | None]]:
    """The results of one loader batch (failed, unchanged, then embedded files); the model is
    asked for (``embedder()``) only if a file in it needs embedding."""
    out = [(item, None) for item in batch.failed] + [(item, None) for item in batch.unchanged]
    for tensor, items in batch.groups:
        out += zip(items, embedder().embed_batch(tensor))
    return out


def local_results(todo: list[str], known: dict[str, str], preprocess: Preprocess,
                  embedder: Callable[[], Embedder], opts: BuildOptions) -> Iterator[list[tuple[FileItem, np.ndarray | None]]]:
    """Read and embed ``todo`` in this process (decoding in DataLoader workers), a batch at a time."""
    from dinoret.indexer.file_dataset import file_loader

    workers = default_workers() if opts.workers is None else opts.workers
    loader = None
    if opts.gpu_decode and todo and not known:
        from dinoret.core.devices import resolve_device

        if resolve_device(opts.device).type == "cuda":
            from dinoret.indexer.gpu_pipeline import gpu_batches  # JPEG decode and resize on the GPU

            loader = gpu_batches(todo, preprocess, opts.batch_size, embedder().device)
    if loader is None:
        loader = file_loader(todo, preprocess, opts.batch_size, workers, known=known)
    for batch in loader:
        yield batch_results(batch, embedder)


def apply_results(results: list[tuple[FileItem, np.ndarray | None]], meta: MetaStore, committer: Committer, skipped: dict[str, str]) -> int:
    """Queue ``results`` for the next commit; returns how many turned out unchanged (same bytes)."""
    same_bytes = 0
    for item, vector in results:
        if item.reason is not None:
            skipped[item.path] = item.reason
            old = meta.id_for_path(item.path)
            if old is not None:  # it was indexed and is now unreadable: drop it
                committer.deleted.append(old)
        elif item.unchanged:
            # Touched, not changed: keep id and vector, record the new stat.
            old = meta.record_for_path(item.path)
            committer.touched.append(replace(old, size=item.size, mtime=item.mtime))
            same_bytes += 1
        else:
            committer.add(_record(item), vector)
    return same_bytes


def _embed(plan: _Plan, preprocess: Preprocess, embedder: Callable[[], Embedder], meta: MetaStore,
           committer: Committer, opts: BuildOptions, skipped: dict[str, str], source: ResultSource) -> int:
    """Reads, embeds and commits ``plan.todo``; returns how many turned out unchanged (same
    bytes, new mtime). ``embedder()`` is called, and the model loaded, only for a file that
    needs embedding."""
    same_bytes = 0
    with tqdm(total=len(plan.todo), unit="img", desc="embedding", disable=not opts.progress, smoothing=0.1) as bar:
        for results in source(plan.todo, plan.known, preprocess, embedder, opts):
            same_bytes += apply_results(results, meta, committer, skipped)
            bar.update(len(results))
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
    """Index the images under ``inputs`` into ``index_dir`` (created if needed).

    Under torchrun every process calls this with the same arguments: the ranks share the
    reading and embedding, rank 0 alone writes (:mod:`dinoret.indexer.distributed_build`)."""
    opts = opts or BuildOptions()
    if env_world_size() > 1:
        from dinoret.indexer.distributed_build import build_on_ranks

        return build_on_ranks(inputs, index_dir, opts)
    return run_build(inputs, index_dir, opts)


def run_build(inputs: Sequence[str | os.PathLike], index_dir: str | os.PathLike, opts: BuildOptions,
              source: ResultSource = local_results) -> RunSummary:
    """The run itself, in the one process that writes; ``source`` reads and embeds the files to do."""
    t0 = time.perf_counter()
    paths = IndexPaths.of(index_dir)
    roots = [os.path.abspath(p) for p in inputs]
    for r in roots:
        if not os.path.lexists(r):
            raise NotFound(f"no such file or folder: {r}")
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the index folder {paths.root}: {e.strerror or e}") from None
    with writer_lock(paths.lock), index_errors(paths.root):
        engine = open_catalog(paths.catalog, create=True)
        info = read_info(engine)
        embedder: Embedder | None = None
        if info is None:
            embedder = _new_embedder(opts)
            info = create_info(engine, embedder.identity(), embedder.backbone.weights_path, opts.shard_size)
            remember_weights(engine, embedder.backbone.weights_path, embedder.backbone.weights_sha256)
        else:
            # Refused by name, before any file is read; the model itself loads only if a file needs it.
            check_requested(info.identity, model=opts.model, preprocess=opts.preprocess, precision=opts.precision)
            if opts.weights:
                check_weights(engine, opts.weights)

        def get_embedder() -> Embedder:
            nonlocal embedder
            if embedder is None:
                embedder = load_index_embedder(engine, opts.weights, opts.device)
            return embedder

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
            plan = _plan(roots, paths.root, meta, skipped)
            if plan.gone:
                meta.commit([], deleted=plan.gone)
            opts = replace(opts, shard_size=info.shard_size)  # fixed when the index was created
            committer = Committer(paths, meta, opts.shard_size, opts.commit_every)
            t_embed = time.perf_counter()
            same_bytes = 0
            if plan.todo:
                same_bytes = _embed(plan, index_preprocess(info.identity), get_embedder, meta, committer, opts, skipped,
                                    source)
            embed_s = time.perf_counter() - t_embed
            sync = sync_shards(paths, engine, meta, info.identity["dim"], forced=opts.index_type,
                               flat_max=opts.flat_max, show_progress=opts.progress)
            summary = RunSummary(
                indexed=committer.indexed, unchanged=plan.unchanged + same_bytes, removed=len(plan.gone),
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
