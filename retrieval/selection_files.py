"""Selection files: what `dinoret curate` writes, and what `dinoret train` reads as its data.

Written by the file's suffix:

* ``.txt``: one absolute path per line.
* ``.csv``: columns ``id, path, cluster_l1 … cluster_lL, reason, seed_id, seed_path, similarity``.
* ``.json``: ``{"kind": "dinoret-selection", "params", "levels", "images": [{"id", "path",
  "clusters": [l1 … lL], "reason", "seed_id", "seed_path", "similarity"}], "excluded": [...]}``.

``reason`` is ``balanced`` (curate sample), ``sample-retrieval`` or ``cluster-retrieval``
(curate retrieve); ``similarity`` is the cosine to the leaf centroid (balanced) or to the seed.

Read back (``read_selection``) from any of the three, or from files made by hand: a text
file of paths (``#`` comments), a CSV with a ``path`` column, a JSON list of paths or of
objects with ``"path"``. Relative paths are taken from the file's own folder.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dinoret.core.errors import UserError
from dinoret.core.files import atomic_path

SUFFIXES = (".txt", ".csv", ".json")
KIND = "dinoret-selection"


@dataclass
class Selected:
    id: int
    path: str
    clusters: list[int]  # cluster at level 1 .. L (empty when there is no clustering)
    reason: str  # balanced | sample-retrieval | cluster-retrieval
    similarity: float
    seed_id: int | None = None  # the seed's index id, when the seeds are an index
    seed_path: str | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "clusters": self.clusters, "reason": self.reason,
                "seed_id": self.seed_id, "seed_path": self.seed_path, "similarity": round(self.similarity, 6)}


@dataclass
class Dropped:
    """A pool image left out by --exclude, and why."""

    id: int
    path: str
    excluded_path: str  # the excluded image whose duplicate component it is in
    via_id: int | None  # the pool image it was linked through (None: linked to the excluded image itself)
    similarity: float  # cosine of the link that brought it in (1.0 for an exact copy)
    reason: str  # exact | near

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "excluded_path": self.excluded_path, "via_id": self.via_id,
                "similarity": round(self.similarity, 6), "reason": self.reason}


@dataclass
class Selection:
    images: list[Selected]
    levels: list[int] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    excluded: list[Dropped] = field(default_factory=list)


def check_suffix(path: str | os.PathLike, what: str = "the selection file", param: str | None = "out") -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{what} {path}: the file name must end in .txt, .csv or .json (that picks the format)",
                        param=param)
    return suffix


def _csv(selection: Selection) -> str:
    level_cols = [f"cluster_l{level}" for level in range(1, len(selection.levels) + 1)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", *level_cols, "reason", "seed_id", "seed_path", "similarity"])
    for s in selection.images:
        clusters = (s.clusters + [""] * len(level_cols))[: len(level_cols)]
        w.writerow([s.id, s.path, *clusters, s.reason, "" if s.seed_id is None else s.seed_id, s.seed_path or "",
                    f"{s.similarity:.6f}"])
    return buf.getvalue()


def write_excluded(dropped: Sequence[Dropped], path: str | os.PathLike) -> Path:
    """The images --exclude dropped, as CSV: id, path, excluded_path, via_id, similarity, reason."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(_excluded_csv(dropped), encoding="utf-8", errors="surrogateescape")
    return path


def _excluded_csv(dropped: Sequence[Dropped]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", "excluded_path", "via_id", "similarity", "reason"])
    for d in dropped:
        w.writerow([d.id, d.path, d.excluded_path, "" if d.via_id is None else d.via_id, f"{d.similarity:.6f}",
                    d.reason])
    return buf.getvalue()


def write_selection(selection: Selection, path: str | os.PathLike) -> Path:
    """Write ``selection`` in the format its suffix names (through a temporary name)."""
    path = Path(path)
    suffix = check_suffix(path)
    if suffix == ".txt":
        text = "".join(s.path + "\n" for s in selection.images)
    elif suffix == ".csv":
        text = _csv(selection)
    else:
        text = json.dumps({"kind": KIND, "params": selection.params, "levels": selection.levels,
                           "images": [s.to_dict() for s in selection.images],
                           "excluded": [d.to_dict() for d in selection.excluded]}, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
    return path


def _json_paths(data) -> list[str]:
    items = data.get("images", data.get("paths")) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError("expected a list of paths, a list of objects with 'path', or {'images': [...]}")
    out = []
    for item in items:
        p = item.get("path") if isinstance(item, dict) else item
        if not isinstance(p, str):
            raise ValueError(f"an entry without a path: {str(item)[:80]}")
        out.append(p)
    return out


def read_selection(path: str | os.PathLike) -> list[str]:
    """The image paths a selection file lists, in order, made absolute against its folder."""
    path = Path(path)
    suffix = check_suffix(path, "selection file", param=None)
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if suffix == ".txt":
            paths = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        elif suffix == ".csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            if rows and "path" not in rows[0]:
                raise ValueError("no 'path' column")
            paths = [r["path"] for r in rows if r.get("path")]
        else:
            paths = _json_paths(json.loads(text))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read selection file {path}: {e}") from None
    base = path.resolve().parent
    return [str(p if os.path.isabs(p) else base / p) for p in paths]


def selected_from_sample(reader, h, positions) -> Selection:
    """The selection file's rows for images ``positions`` of hierarchy ``h`` (reason ``balanced``;
    similarity: cosine to the leaf centroid)."""
    table = h.path_table()[positions]
    records = {r.id: r for r in reader.records(h.ids[positions])}
    images = [Selected(int(i), records[int(i)].path, table[n].tolist(), "balanced", float(h.sims[p]))
              for n, (p, i) in enumerate(zip(positions, h.ids[positions])) if int(i) in records]
    return Selection(images, h.levels)


def link_or_copy(paths: Sequence[str], dest: str | os.PathLike, mode: str) -> tuple[int, list[str]]:
    """Symbolic links to (``mode="link"``) or copies of (``"copy"``) ``paths`` under ``dest``,
    each at its path relative to the files' common folder; an existing file is never replaced.
    Returns (how many placed, problems)."""
    import shutil

    from dinoret.retrieval.moves import plan_moves

    placed, problems = 0, []
    for src, dst in plan_moves(list(paths), dest):
        try:
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(dst):
                problems.append(f"{dst} exists already")
                continue
            if mode == "link":
                os.symlink(src, dst)
            else:
                shutil.copy2(src, dst)
            placed += 1
        except OSError as e:
            problems.append(f"{src}: {e.strerror or e}")
    return placed, problems
