"""Duplicate detection over an index: exact copies, then near duplicates (the copy-detection
step of the DINOv2 data pipeline), with a keeper per group and reviewers' verdicts honoured.

``find_duplicates(reader)`` groups the index with itself. ``against=`` instead finds the
index images that duplicate *another* set (a test set that must not leak into training
data): one group per item of the other set, that item as the keeper, the index images
matching it as the members to remove; the index is not grouped with itself.
"""
from __future__ import annotations

import os
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dinoret.core.devices import device_type
from dinoret.core.errors import NotFound, UserError
from dinoret.retrieval.dedup_result import DedupResult, Group, Member
from dinoret.retrieval.groups import (
    KEEP_POLICIES, RowGroup, digests_array, find_groups, first_match, key_digest, key_digests, keeper_rank,
    labels_from_keys,
)
from dinoret.retrieval.knn_graph import choose_method, default_nprobe, knn_edges
from dinoret.retrieval.reports import apply_reviews, load_reviews
from dinoret.retrieval.unit_vectors import UnitVectors

# The best mean F1 over the three image sets of benchmarks/dedup_quality.py for the only
# trained backbone measurable offline (a small ViT trained by benchmarks/train_eval.py), default
# crop preprocessing; the other measured backbone/preprocessing pairs score within 0.025 of
# their own best mean F1 there (README, "dedup").
# Official DINOv2 weights spread similarities wider: re-measure with them before trusting it.
DEFAULT_THRESHOLD = 0.95
DEFAULT_K = 10


class _Items:
    """Facts about a set of images, as parallel arrays (rows), plus their vectors."""

    def __init__(self, ids, paths, width, height, size, mtime, content, pixels, vectors) -> None:
        self.ids, self.paths = ids, paths
        self.width, self.height = np.asarray(width, np.int64), np.asarray(height, np.int64)
        self.size, self.mtime = np.asarray(size, np.int64), np.asarray(mtime, np.float64)
        self.content, self.pixels = content, pixels
        # Kept as read (index vectors: float16 as stored, no float32 copy of them all),
        # normalised on the way out so that a vector's cosine with itself is 1.
        self.vectors = UnitVectors(np.asarray(vectors))

    def __len__(self) -> int:
        return len(self.paths)

    def member(self, row: int, is_keeper: bool, score: float, reason: str, external: bool = False) -> Member:
        return Member(
            id=None if self.ids is None else int(self.ids[row]), path=self.paths[row], is_keeper=is_keeper,
            score=round(float(score), 6), reason=reason, width=int(self.width[row]), height=int(self.height[row]),
            size=int(self.size[row]), external=external,
        )


class _IndexRows:
    """The images of the index being deduplicated, as a million of them fit: for every image
    its id, the digests of its hashes and its stored vector (compact arrays, the vectors
    float16 as stored), and the rest of its record (path, size, ...) read only for the rows
    that fall in some group."""

    def __init__(self, reader) -> None:
        ids, content, pixels = array("q"), bytearray(), bytearray()
        for n, rec in enumerate(reader.meta.iter_records(), 1):  # one record at a time: none is kept
            ids.append(rec.id)
            content += key_digest(rec.content_hash)
            pixels += key_digest(rec.pixel_hash)
            if n % 65_536 == 0:
                reader.meta.drop_pages()  # the records read need not stay resident beside the vectors
        reader.meta.drop_pages()
        self.reader = reader
        self.ids = np.array(ids, dtype=np.int64)
        del ids
        self.content, self.pixels = digests_array(content), digests_array(pixels)
        del content, pixels
        self.vectors = UnitVectors(reader.vectors(self.ids, float16=True))
        self._records: dict[int, object] = {}  # row -> Record, or None once it is gone

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, rows: np.ndarray) -> None:
        """Read the records of ``rows`` (a record deleted since the first read stays None)."""
        rows = [int(r) for r in rows if int(r) not in self._records]
        found = {rec.id: rec for rec in self.reader.records(self.ids[rows])}
        for r in rows:
            self._records[r] = found.get(int(self.ids[r]))

    def record(self, row: int):
        if row not in self._records:
            self.load(np.array([row]))
        return self._records[row]

    def path(self, row: int) -> str:
        rec = self.record(row)
        return "" if rec is None else rec.path

    def member(self, row: int, is_keeper: bool, score: float, reason: str) -> Member:
        rec = self.record(row)
        return Member(id=int(self.ids[row]), path=rec.path, is_keeper=is_keeper, score=round(float(score), 6),
                      reason=reason, width=int(rec.width), height=int(rec.height), size=int(rec.size))

    def keeper_rank(self, keep: str, reviews: dict):
        """``find_groups``' rank function: the keeper policy over the rows given (their records
        read now), a reviewer's keeper ahead of every policy choice, a vanished record last."""
        def rank(rows: np.ndarray) -> np.ndarray:
            self.load(rows)
            recs = [self._records[int(r)] for r in rows]
            gone = np.array([rec is None for rec in recs], bool)
            r = keeper_rank(keep, *(np.array([0 if rec is None else getattr(rec, f) for rec in recs])
                                    for f in ("width", "height", "size", "mtime")),
                            ["" if rec is None else rec.path for rec in recs])
            at = {int(i): n for n, i in enumerate(self.ids[rows])}
            for review in reviews.values():
                if review["keeper_id"] in at:
                    r[at[review["keeper_id"]]] -= len(rows)
            r[gone] += 2 * len(rows)
            return r

        return rank


def _index_items(reader) -> _Items:
    ids = reader.ids()
    recs = reader.records(ids)
    if len(recs) != len(ids):  # a concurrent run deleted some: keep the ids that still have records
        ids = np.array([r.id for r in recs], np.int64)
    return _Items(
        ids, [r.path for r in recs], [r.width for r in recs], [r.height for r in recs], [r.size for r in recs],
        [r.mtime for r in recs], [r.content_hash for r in recs], [r.pixel_hash for r in recs],
        reader.vectors(ids, float16=True),
    )


def _folder_items(reader, paths: Sequence[str | os.PathLike], device: str, weights: str | None,
                  progress: bool, param: str = "against") -> tuple[_Items, list[tuple[str, str]]]:
    """Embed image files exactly as the index was (same decoder, model, preprocessing)."""
    from dinoret.indexer.file_dataset import file_loader

    emb = reader.embedder(device=device, weights=weights)
    workers = min(4, (os.cpu_count() or 2) // 2) if len(paths) > 64 else 0
    items, vecs, skipped = [], [], []
    with tqdm(total=len(paths), desc="embedding the other set", unit="img", disable=not progress) as bar:
        for batch in file_loader([str(p) for p in paths], emb.preprocess, batch_size=32, workers=workers):
            skipped += [(f.path, f.reason) for f in batch.failed]
            for tensor, members in batch.groups:
                vecs.append(emb.embed_batch(tensor))
                items += members
            bar.update(len(batch.failed) + sum(len(m) for _, m in batch.groups))
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, emb.dim), np.float32)
    return _Items(
        None, [f.path for f in items], [f.width for f in items], [f.height for f in items],
        [f.size for f in items], [f.mtime for f in items], [f.content_hash for f in items],
        [f.pixel_hash for f in items], vectors,
    ), skipped


def _reason(exact: bool) -> str:
    return "exact" if exact else "near"


def _self_groups(items: _IndexRows, rows: list[RowGroup]) -> tuple[list[Group], int]:
    """The groups as reported, and how many were dropped because images' records vanished (a
    concurrent index run) before they were read: such images are left out, and a group left
    with fewer than two, or without its keeper (the scores are cosines to it), is dropped."""
    groups, dropped = [], 0
    for g in rows:
        live = np.array([items.record(int(r)) is not None for r in g.rows], bool)
        if not live[0] or live.sum() < 2:
            dropped += 1
            continue
        g = RowGroup(g.rows[live], g.scores[live], g.exact[live])
        others_exact = bool(g.exact[1:].all())
        members = [items.member(int(r), i == 0, s, _reason(others_exact if i == 0 else bool(e)))
                   for i, (r, s, e) in enumerate(zip(g.rows, g.scores, g.exact))]
        groups.append(Group(len(groups) + 1, members[0].id, members))
    return groups, dropped


def _against_groups(items: _IndexRows, other: _Items, threshold: float, method: str, device: str,
                    progress: bool) -> tuple[list[Group], dict]:
    """One group per item of ``other`` that index rows duplicate; each index row joins at most
    one group (its best match), so nothing is moved twice."""
    best: dict[int, tuple[int, float, bool]] = {}  # index row -> (other row, score, exact)
    src, dst, score = knn_edges(items.vectors, k=1, threshold=threshold, y=other.vectors, method=method,
                                device=device, progress=progress)
    for a, b, s in zip(src.tolist(), dst.tolist(), score.tolist()):
        best[a] = (b, s, False)
    # Same bytes first, else same pixels: the first item of the other set with that hash.
    same = first_match(items.content, key_digests(other.content))
    by_pixels = first_match(items.pixels, key_digests(other.pixels))
    same = np.where(same >= 0, same, by_pixels)
    exact_rows = np.flatnonzero(same >= 0)
    for i, j in zip(exact_rows.tolist(), same[exact_rows].tolist()):
        best[i] = (j, float(items.vectors.rows(i) @ other.vectors.rows(j)), True)
    n_exact = len(exact_rows)
    items.load(np.array(sorted(best), np.int64))
    members_of: dict[int, list[tuple[int, float, bool]]] = {}
    for i, (j, s, exact) in best.items():
        if items.record(i) is not None:  # not deleted by a concurrent index run since the first read
            members_of.setdefault(j, []).append((i, s, exact))
    groups = []
    for n, j in enumerate(sorted(members_of, key=lambda j: other.paths[j]), 1):
        matched = sorted(members_of[j], key=lambda t: (not t[2], -t[1], items.path(t[0])))
        keeper = other.member(j, True, 1.0, _reason(all(e for _, _, e in matched)), external=True)
        groups.append(Group(n, None, [keeper] + [items.member(i, False, s, _reason(e)) for i, s, e in matched]))
    return groups, {"exact_matches": n_exact, "near_edges": int(len(src))}


def open_other_set(reader, against, device: str, weights: str | None, progress: bool,
                   param: str = "against") -> tuple[_Items, dict]:
    """Another image set as ``against_source`` gives it (an index made with the same model,
    or image paths embedded with this index's model), with its vectors; ``param`` is the option
    it came from, for messages. Also used by curation (--seeds, --exclude)."""
    from dinoret.retrieval.index import IndexReader

    if isinstance(against, IndexReader):
        from dinoret.indexer.identity import identity_mismatch

        problem = identity_mismatch(reader.identity, against.identity)
        if problem:
            raise UserError(f"the other index {against.root} is not comparable: {problem}", param=param)
        items = _index_items(against)
        # Its ids number another index's images: in this index's report (and the web UI, which
        # serves images by id) they would name the wrong files, so external items carry none.
        items.ids = None
        return items, {"against_images": len(items)}
    items, skipped = _folder_items(reader, list(against), device, weights, progress, param)
    return items, {"against_images": len(items), "against_skipped": len(skipped)}


def find_duplicates(
    reader,
    threshold: float = DEFAULT_THRESHOLD,
    k: int = DEFAULT_K,
    keep: str = "largest",
    against=None,
    split: bool = True,
    device: str = "auto",
    method: str = "auto",
    nprobe: int | None = None,
    weights: str | None = None,
    against_label: str | None = None,
    progress: bool = False,
) -> DedupResult:
    """Duplicate groups of the index behind ``reader`` (``dinoret.retrieval.index.IndexReader``).

    ``against``: None (the index with itself), another ``IndexReader``, or image paths
    (embedded with the index's own model: ``weights`` if it moved). Groups a reviewer marked
    "not duplicates" are left out; keepers a reviewer chose stay keepers. ``nprobe``: lists
    each vector is compared within by the IVF engines (default: the engine's own).
    """
    if keep not in KEEP_POLICIES:
        raise UserError(f"the keeper policy must be one of {', '.join(KEEP_POLICIES)}, not {keep!r}", param="keep")
    if not -1.0 <= threshold <= 1.0:
        raise UserError(f"the threshold is a cosine similarity in [-1, 1], not {threshold}", param="threshold")
    t0 = time.perf_counter()
    items = _IndexRows(reader)
    read_s = time.perf_counter() - t0
    dev = device_type(device)
    params = {
        "threshold": threshold, "k": k, "keep": keep, "split": split, "nprobe": nprobe,
        "against": against_label if against is not None else None, "index": str(reader.root),
        "model": reader.identity.get("model"), "weights_sha256": reader.identity.get("weights_sha256"),
        "preprocess": (reader.identity.get("preprocess") or {}).get("mode"),
    }
    stats: dict = {"images": len(items)}
    if against is not None:
        other, more = open_other_set(reader, against, device, weights, progress)
        stats.update(more)
        params["method"] = choose_method(len(items), len(other), dev) if method == "auto" else method
        params["nprobe"] = default_nprobe(params["method"]) if nprobe is None else nprobe
        if len(items) and len(other):
            groups, more = _against_groups(items, other, threshold, params["method"], dev, progress)
            stats.update(more)
        else:
            groups = []
    else:
        params["method"] = choose_method(len(items), len(items), dev) if method == "auto" else method
        params["nprobe"] = default_nprobe(params["method"]) if nprobe is None else nprobe
        reviews = load_reviews(reader.engine)
        exact = labels_from_keys(len(items), items.content, items.pixels)
        stats["exact_copies"] = int((exact != np.arange(len(items))).sum())
        rows = find_groups(items.vectors, threshold, k=k, rank=items.keeper_rank(keep, reviews), exact_labels=exact,
                           split=split, method=params["method"], device=dev, nprobe=params["nprobe"],
                           progress=progress) if len(items) else []
        found, vanished = _self_groups(items, rows)
        groups = apply_reviews(found, reviews)
        stats["not_duplicates_skipped"] = len(found) - len(groups)
        if vanished:
            stats["groups_dropped_images_gone"] = vanished
        for n, g in enumerate(groups, 1):
            g.group = n
    stats["read_seconds"] = round(read_s, 3)
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    return DedupResult(groups, params, stats)


def against_source(path: str | os.PathLike, param: str = "against") -> tuple[object, str]:
    """What ``path`` (the other set of a dedup against it, or a set to exclude) names: an index
    directory (opened) or a folder/file of images (their paths, found by content). Returns
    (index reader or path list, label); ``param``: the option it came from, for error messages."""
    from dinoret.indexer.discover import find_images
    from dinoret.indexer.layout import IndexPaths
    from dinoret.retrieval.index import open_index

    p = Path(path)
    if not p.exists():
        raise NotFound(f"{path}: no such file or folder", param=param)
    if IndexPaths.of(p).exists():
        return open_index(p), f"index:{p.resolve()}"
    paths = list(find_images([p]))
    if not paths:
        raise UserError(f"{path}: no images there (and not an index directory)", param=param)
    return paths, str(p.resolve())
