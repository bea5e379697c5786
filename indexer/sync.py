"""Bringing the Faiss shards up to date with the committed vectors, crash-safely.

Runs at the end of an index run (and again on the next run if a crash cut it short).
New shard files are written under fresh names; one catalog transaction then makes them
current; only after that are the tombstones they account for cleared and the old files
deleted. A crash anywhere leaves the previous, consistent set of shards in the catalog.
"""
from __future__ import annotations

from array import array
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session
from tqdm import tqdm

from dinoret.core.files import TMP_SUFFIX
from dinoret.indexer.catalog import IndexInfo, ShardRow, read_info, read_shards
from dinoret.indexer.index_type import FLAT_MAX, choose_index
from dinoret.indexer.layout import IndexPaths
from dinoret.indexer.meta import MetaStore
from dinoret.indexer.shards import (add_vectors, empty_shard, new_file_name, prepare_for_adding, read_index, remove_ids,
                                    train_template, write_index)
from dinoret.indexer.vectors import VectorStore

ADD_BATCH = 65_536  # vectors decoded to float32 at once while filling a shard


@dataclass
class SyncResult:
    spec: dict
    rebuilt: bool  # a new index type / training, every shard rewritten
    shards_written: int


def _current_spec(info: IndexInfo) -> dict | None:
    return None if info.index_type in (None, "none") else dict(info.index_params or {}, type=info.index_type)


def _fill(index, store: VectorStore, ids, progress) -> None:
    for s in range(0, len(ids), ADD_BATCH):
        chunk = np.asarray(ids[s : s + ADD_BATCH], dtype=np.int64)
        add_vectors(index, chunk, store.get(chunk))
        progress(len(chunk))


def _train(spec: dict, meta: MetaStore, store: VectorStore, dim: int, seed: int = 0):
    live = meta.ids()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(live, size=min(len(live), spec["train_size"]), replace=False))
    return train_template(spec, dim, store.get(sample))


def sync_shards(paths: IndexPaths, engine: Engine, meta: MetaStore, dim: int, forced: str = "auto",
                flat_max: int = FLAT_MAX, show_progress: bool = False) -> SyncResult:
    info = read_info(engine)
    store = VectorStore(paths.vectors)
    tombstones = meta.tombstones()
    current = _current_spec(info)
    spec = choose_index(len(meta), dim, current, forced=forced, flat_max=flat_max)
    rebuild = spec is not current
    rows = {} if rebuild else {r.shard: r for r in read_shards(engine)}
    watermark = meta.counters()["next_id"] - 1
    after = min((r.max_id for r in rows.values()), default=-1)

    adds: dict[int, array] = defaultdict(lambda: array("q"))  # 8 bytes per id, not a Python int each
    for rec in meta.iter_records(after=after):
        if rec.id > (rows[rec.shard].max_id if rec.shard in rows else -1):
            adds[rec.shard].append(rec.id)
    removes: dict[int, list[int]] = defaultdict(list)
    for i, shard in tombstones.items():
        if shard in rows:
            removes[shard].append(i)

    template_file = info.template_file
    template = None
    if spec["type"] == "ivfpq":
        if rebuild:
            template = _train(spec, meta, store, dim)
            template_file = new_file_name("trained")
            write_index(template, paths.shards / template_file)
        elif set(adds) - set(rows):  # a shard not made yet needs the template
            template = read_index(paths.shards / template_file)
    elif rebuild:
        template_file = None

    bar = tqdm(total=sum(map(len, adds.values())), unit="vec", desc="shards", disable=not show_progress, leave=False)
    new_rows: dict[int, ShardRow] = {}
    for shard in sorted(set(rows) | set(adds)):
        row = rows.get(shard)
        if row is None or rebuild:
            index = empty_shard(spec, dim, template)
        elif adds.get(shard) or removes.get(shard):
            index = read_index(paths.shards / row.file)
        else:
            new_rows[shard] = ShardRow(shard=shard, file=row.file, n_vectors=row.n_vectors, max_id=watermark)
            continue
        remove_ids(index, removes.get(shard, ()))
        if spec["type"] == "ivfpq":
            prepare_for_adding(index, spec)
        _fill(index, store, adds.get(shard, array("q")), bar.update)
        name = new_file_name(f"shard-{shard:04d}")
        write_index(index, paths.shards / name)
        new_rows[shard] = ShardRow(shard=shard, file=name, n_vectors=int(index.ntotal), max_id=watermark)

    bar.close()
    written = sum(1 for s, r in new_rows.items() if s not in rows or rows[s].file != r.file)
    keep = {r.file for r in new_rows.values()} | {template_file}
    with Session(engine) as s, s.begin():
        row = s.get(IndexInfo, 1)
        row.index_type = spec["type"]
        row.index_params = {k: v for k, v in spec.items() if k != "type"}
        row.template_file = template_file
        s.execute(delete(ShardRow))
        s.add_all(new_rows.values())
    meta.clear_tombstones(tombstones)
    remove_unreferenced(paths.shards, keep)
    return SyncResult(spec, rebuild, written)


def remove_unreferenced(directory: Path, keep: set) -> None:
    """Delete shard files the catalog does not point to (superseded, or left by a crash)."""
    if not directory.is_dir():
        return
    for f in directory.iterdir():
        if f.name not in keep and (f.suffix == ".faiss" or f.name.endswith(TMP_SUFFIX)):
            f.unlink(missing_ok=True)
