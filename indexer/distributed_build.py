"""``dinoret index`` under torchrun: every rank reads and embeds a slice of the files, rank 0 writes.

    torchrun --nproc_per_node=N -m dinoret index ./photos      (--nnodes ... for many machines)

Rank 0 runs the ordinary single-writer build (``run_build``: the lock, the catalog, the
walk and the unchanged/changed decision, the commits, the shard sync); only where that
build reads and embeds files do the other ranks come in. Rank 0 hands rank r the files
``todo[r::W]`` (one scatter); then, in lock step, every rank reads and embeds one batch
of its slice and sends the results (float16 vectors, which is how the index stores them,
and the facts about each file) to rank 0 (one gather per batch), which puts them back in
the order of ``todo`` and queues them exactly as it queues its own. Rank 0 commits them
as a single process would: chunk file, then one LMDB transaction, every
``--commit-every`` images or every minute. So the crash-safety protocol is the
single-process one, unchanged: one process writes, and only committed vectors exist.
The other ranks never open the index directory: they need only the photos (and the
weights file) at the same paths.

A rank that dies takes the job down: its peers' next collective fails on the closed
connection and torchrun stops the rest. The next run (any number of processes) finds the
files that were not committed new and embeds them; a committed file is never embedded
twice. All processes talk over gloo (only Python objects on the CPU travel), whatever
the device the model runs on.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch.distributed as dist

from dinoret.core.distributed import DistContext, all_gather_object, setup, teardown
from dinoret.core.errors import NotFound, UserError
from dinoret.indexer.build import BuildOptions, RunSummary, default_workers, local_results, run_build
from dinoret.indexer.decode import VANISHED
from dinoret.indexer.identity import identity_mismatch
from dinoret.indexer.index_embedder import index_preprocess

if TYPE_CHECKING:
    from dinoret.indexer.embed import Embedder
    from dinoret.indexer.file_dataset import FileItem
    from dinoret.indexer.preprocess import Preprocess

# The other ranks wait while rank 0 walks the folders, which can take long on a big
# collection; a dead rank is found by torchrun and by closed connections, not by this.
TIMEOUT = timedelta(hours=24)


@dataclass
class _Work:
    """What rank 0 gives a rank to do: its slice of the files and how to embed them."""

    roots: list[str]
    paths: list[str]  # todo[rank::world]
    known: dict[str, str]  # path -> indexed content hash, for the known files among ``paths``
    total: int  # len(todo): every rank takes the same number of steps
    batch_size: int
    identity: dict  # the index's embedder
    weights_path: str
    weights_sha256: str
    weights_stat: tuple[int, float]  # (size, mtime) of the weights file on rank 0


@dataclass
class _Stop:
    """Rank 0's last word: the run's summary, or why it failed."""

    summary: RunSummary | None = None
    error: UserError | None = None  # raised again on every rank: same message, kind and parameters

    def result(self) -> RunSummary:
        if self.error is not None:
            raise self.error
        return self.summary


def build_on_ranks(inputs: Sequence[str | os.PathLike], index_dir: str | os.PathLike, opts: BuildOptions) -> RunSummary:
    """``build_index`` for one of torchrun's processes; every rank returns the run's summary."""
    ctx = setup(opts.device, backend="gloo", timeout=TIMEOUT)
    # Objects travel over gloo; a group someone else started on NCCL gets a gloo twin.
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=TIMEOUT)
    workers = opts.workers
    if workers is None:  # the single-process default, shared by the ranks of this machine
        workers = max(1, default_workers() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    opts = replace(opts, device=str(ctx.device), workers=workers, progress=opts.progress and ctx.is_main)
    try:
        if ctx.is_main:
            return _lead(inputs, index_dir, opts, ctx, group)
        return _follow(ctx, group, opts)
    finally:
        if group is not None:
            dist.destroy_process_group(group)
        teardown(ctx)


class _Lead:
    """Rank 0's side: what the other ranks have been told so far."""

    def __init__(self, roots: list[str], ctx: DistContext, group) -> None:
        self.roots, self.ctx, self.group = roots, ctx, group
        self.phase = "plan"  # plan: the others wait for work or a stop; embed: they are in the loop; done

    def source(self, todo: list[str], known: dict[str, str], preprocess: Preprocess,
               embedder: Callable[[], Embedder], opts: BuildOptions) -> Iterator[list]:
        """``run_build``'s result source on rank 0: hands out the slices, then yields every
        rank's results, batch by batch, in the order of ``todo``."""
        emb = embedder()  # a wrong or missing weights file fails here, before any rank starts
        path = emb.backbone.weights_path
        st = os.stat(path)
        slices = [todo[r::self.ctx.world_size] for r in range(self.ctx.world_size)]
        works = [
            _Work(roots=self.roots, paths=mine, known={p: known[p] for p in mine if p in known}, total=len(todo),
                  batch_size=opts.batch_size, identity=emb.identity(), weights_path=path,
                  weights_sha256=emb.backbone.weights_sha256, weights_stat=(st.st_size, st.st_mtime))
            for mine in slices
        ]
        _scatter(works, self.group)
        self.phase = "embed"
        _check_ready(None, self.group)
        yield from _embed_slice(works[0], self.ctx, preprocess, lambda: emb, opts, self.group)
        self.phase = "done"

    def stop(self, stop: _Stop) -> None:
        """Release the other ranks, unless they are inside the loop (then they fail with us)."""
        if self.phase != "embed":
            _scatter([stop] * self.ctx.world_size, self.group)


def _lead(inputs, index_dir, opts: BuildOptions, ctx: DistContext, group) -> RunSummary:
    lead = _Lead([os.path.abspath(p) for p in inputs], ctx, group)  # as run_build sees them
    try:
        summary = run_build(inputs, index_dir, opts, source=lead.source)
    except BaseException as e:
        error = e if isinstance(e, UserError) else UserError(
            f"the index run stopped on rank 0 ({socket.gethostname()}): {type(e).__name__}: {e}")
        with contextlib.suppress(Exception):  # the others may be gone already: nothing left to tell
            lead.stop(_Stop(error=error))
        raise
    lead.stop(_Stop(summary=summary))
    return summary


def _follow(ctx: DistContext, group, opts: BuildOptions) -> RunSummary:
    work = _receive(group)
    if isinstance(work, _Stop):
        return work.result()
    emb, problem = None, None
    try:
        missing = [r for r in work.roots if not os.path.lexists(r)]
        if missing:
            raise NotFound(f"cannot see {missing[0]}: every machine needs the photos at the same paths")
        emb = _load_embedder(work, ctx.device)
    except UserError as e:
        problem = str(e)
    _check_ready(problem, group)
    for _ in _embed_slice(work, ctx, index_preprocess(work.identity), lambda: emb, opts, group):
        pass  # only rank 0 gets anything back
    return _receive(group).result()


def _load_embedder(work: _Work, device) -> Embedder:
    """The index's embedder on this rank: the weights file rank 0 uses, at the same path
    (hashed again only if its size or mtime differ), or the official weights by name."""
    from dinoret.core.models import MODELS
    from dinoret.indexer.embed import Embedder

    preprocess = index_preprocess(work.identity)
    path = Path(work.weights_path)
    if path.is_file():
        st = path.stat()
        same = (st.st_size, st.st_mtime) == tuple(work.weights_stat)
        emb = Embedder.load(None, str(path), preprocess, device, sha256=work.weights_sha256 if same else None)
    elif work.identity["model"] in MODELS:  # e.g. the hub cache of another machine: found or fetched there
        emb = Embedder.load(work.identity["model"], None, preprocess, device)
    else:
        raise NotFound(f"no weights file at {path}: every machine needs it at the same path")
    problem = identity_mismatch(work.identity, emb.identity())
    if problem:
        raise UserError(f"the weights at {emb.backbone.weights_path} do not match the index: {problem}")
    return emb


def _check_ready(problem: str | None, group) -> None:
    """Every rank says whether it can start; if one cannot, all stop with its reason."""
    problems = all_gather_object((problem, socket.gethostname()), group)
    for rank, (p, host) in enumerate(problems):
        if p is not None:
            raise UserError(f"rank {rank} ({host}): {p}")


def _embed_slice(work: _Work, ctx: DistContext, preprocess: Preprocess, embedder: Callable[[], Embedder],
                 opts: BuildOptions, group) -> Iterator[list[tuple[FileItem, np.ndarray | None]]]:
    """Read and embed this rank's slice a batch per step, sending each step's results to
    rank 0; on rank 0, yield every rank's results of the step in the order of ``todo``."""
    rank, world = ctx.rank, ctx.world_size
    steps = math.ceil(math.ceil(work.total / world) / work.batch_size)
    position = {p: i * world + rank for i, p in enumerate(work.paths)}  # index in todo
    batches = iter(local_results(work.paths, work.known, preprocess, embedder, replace(opts, batch_size=work.batch_size)))
    for _ in range(steps):
        mine = [(position[item.path], item, None if v is None else v.astype(np.float16)) for item, v in next(batches, [])]
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0, group=group)
        if rank == 0:
            merged = sorted((r for part in gathered for r in part), key=lambda r: r[0])
            _check_visible(merged, world)
            yield [(item, vector) for _, item, vector in merged]


def _check_visible(results: list[tuple[int, FileItem, np.ndarray | None]], world: int) -> None:
    """A file another rank could not find but rank 0 sees is a machine without the photos
    (or with other ones), not a vanished file: stop before it is recorded as skipped (or
    its record dropped) and say so."""
    for position, item, _ in results:
        if item.reason == VANISHED and position % world != 0 and os.path.lexists(item.path):
            raise UserError(f"rank {position % world} cannot find {item.path}, which rank 0 sees: every machine "
                            f"needs the photos at the same paths")


def _scatter(objs: list, group) -> None:
    dist.scatter_object_list([None], objs, src=0, group=group)


def _receive(group):
    out = [None]
    dist.scatter_object_list(out, None, src=0, group=group)
    return out[0]
