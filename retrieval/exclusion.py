"""Eval-set exclusion (DINOv2 paper, section 3): drop every pool image whose duplicate
component touches an image of an evaluation set.

The components are those of the dedup graph: exact copies (same content hash or same
decoded pixels) and kNN edges (each image's ``k`` nearest neighbours) with cosine at or above
the threshold. They are grown from the excluded images through the index's own search:
first the pool images that copy an excluded image or are among its k nearest at the
threshold, then, round after round, the pool images among the k nearest of those already
found. So only the components that touch the excluded set are ever looked at, and the cost
follows their size, not the pool's. (An edge is followed from an image already in the
component to its neighbours; dedup's graph also has the reverse edges, which matter only
inside clumps of more than k near-copies, where the other edges join them anyway.)

Every dropped image says why: the excluded image its component reaches, the pool image it
was linked through (none when it copies the excluded image itself), and that link's cosine.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from dinoret.core.errors import UserError
from dinoret.retrieval.selection_files import Dropped

# Stricter than dedup's 0.95, i.e. a lower cosine, so that more near-copies go: a leaked
# evaluation image costs more than a pool image lost. On the trained small ViT's curves
# (README, dedup) 0.90 keeps mean F1 0.45 against 0.52 at 0.95, with more recall.
DEFAULT_EXCLUDE_THRESHOLD = 0.90
DEFAULT_K = 10
_BATCH = 1024


def _exact_matches(reader, other) -> dict[int, int]:
    """Pool id -> row of the excluded set it copies (same bytes, or same decoded pixels)."""
    content = {c: j for j, c in enumerate(other.content) if c}
    pixels = {p: j for j, p in enumerate(other.pixels) if p}
    found: dict[int, int] = {}
    for rec in reader.meta.iter_records():
        j = content.get(rec.content_hash)
        if j is None and rec.pixel_hash:
            j = pixels.get(rec.pixel_hash)
        if j is not None:
            found[rec.id] = j
    return found


def exclude_components(reader, path, threshold: float = DEFAULT_EXCLUDE_THRESHOLD, k: int = DEFAULT_K,
                       device: str = "auto", weights: str | None = None, progress: bool = False) -> list[Dropped]:
    """The pool images (of ``reader``) whose duplicate component touches the image set at
    ``path`` (a folder of images or an index made with the same model), sorted by id."""
    from dinoret.retrieval.dedup import against_source, open_other_set

    if not -1.0 <= threshold <= 1.0:
        raise UserError(f"the exclusion threshold is a cosine similarity in [-1, 1], not {threshold}",
                        param="exclude_threshold")
    source, _ = against_source(path, "exclude")
    other, _ = open_other_set(reader, source, device, weights, progress, "exclude")
    if len(other) == 0 or len(reader) == 0:
        return []
    kk = min(k, len(reader))
    # pool id -> (excluded row it reaches, pool id it came through or None, cosine, reason)
    reached: dict[int, tuple[int, int | None, float, str]] = {}
    for i, j in _exact_matches(reader, other).items():
        reached[i] = (j, None, 1.0, "exact")
    queue: deque[int] = deque(sorted(reached))
    for s in range(0, len(other), _BATCH):
        scores, ids = reader.search(other.vectors[s : s + _BATCH], k=kk)
        for j, (row_s, row_i) in enumerate(zip(scores, ids)):
            for sc, i in zip(row_s.tolist(), row_i.tolist()):
                if i >= 0 and sc >= threshold and i not in reached:
                    reached[i] = (s + j, None, float(sc), "near")
                    queue.append(i)
    while queue:
        batch = [queue.popleft() for _ in range(min(_BATCH, len(queue)))]
        scores, ids = reader.search(reader.vectors(np.asarray(batch, np.int64)), k=kk + 1)
        for src, row_s, row_i in zip(batch, scores, ids):
            for sc, i in zip(row_s.tolist(), row_i.tolist()):
                if i >= 0 and sc >= threshold and i not in reached:
                    reached[i] = (reached[src][0], src, float(sc), "near")
                    queue.append(i)
    records = {r.id: r for r in reader.records(sorted(reached))}
    return [Dropped(i, records[i].path, other.paths[j], via, sim, reason)
            for i, (j, via, sim, reason) in sorted(reached.items()) if i in records]
