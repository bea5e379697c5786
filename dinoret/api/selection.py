"""A curated selection as an object: :class:`Selection` (what ``dinoret curate sample`` and
``curate retrieve`` choose), with the files and places the commands write it to."""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dinoret.retrieval.selection_files import Dropped, Selected, check_suffix, link_or_copy, write_excluded, write_selection

if TYPE_CHECKING:
    from dinoret.api.handle import Index
    from dinoret.retrieval.selection_files import Selection as SelectionRows


def check_selection_path(path: str | os.PathLike) -> str:
    """The format (``.txt``, ``.csv`` or ``.json``) a selection file's name picks; :class:`dinoret.Error`
    for any other name, so that a long selection can be refused before it runs.

    >>> from dinoret.api.selection import check_selection_path
    >>> check_selection_path("train.csv")
    '.csv'
    """
    return check_suffix(path)


class Selection(Sequence):
    """Images chosen from an index by :meth:`dinoret.Index.curate_sample` or
    :meth:`dinoret.Index.curate_retrieve`: a list of ``Selected`` (``id``, ``path``,
    ``clusters`` at each level, ``reason``, ``similarity``, ``seed_id``, ``seed_path``),
    with ``excluded`` (the pool images an exclusion set removed, each with why), ``params``
    (what made it, and for a retrieval what it found), ``levels`` (clusters per level) and
    ``notes`` (what changed in the index since its clustering was made).

    >>> idx = dinoret.open(".dinoret", writable=True)
    >>> _ = idx.curate_clusters([4, 2], progress=False)
    >>> pick = idx.curate_sample(3)
    >>> len(pick), pick.levels, pick[0].reason
    (3, [4, 2], 'balanced')
    >>> pick.write("train.txt").read_text().splitlines() == pick.paths
    True
    """

    def __init__(self, rows: SelectionRows, index: Index, report_data: dict, notes: list[str]) -> None:
        self._rows = rows
        self._index = index
        self._report_data = report_data  # what the HTML report shows besides the selection
        self.notes = notes
        #: The ``.excluded.csv`` file the last :meth:`write` wrote beside the selection (None: none).
        self.excluded_file: Path | None = None

    @property
    def images(self) -> list[Selected]:
        return self._rows.images

    @property
    def excluded(self) -> list[Dropped]:
        return self._rows.excluded

    @property
    def params(self) -> dict:
        return self._rows.params

    @property
    def levels(self) -> list[int]:
        return self._rows.levels

    @property
    def paths(self) -> list[str]:
        """The selected files' paths, in the selection's order."""
        return [s.path for s in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]

    def __iter__(self) -> Iterator[Selected]:
        return iter(self.images)

    def __repr__(self) -> str:
        return f"<dinoret.Selection {len(self)} images, {len(self.excluded)} excluded>"

    def write(self, path: str | os.PathLike) -> Path:
        """Write the selection file (``--out``): ``.txt`` one path per line, ``.csv`` (id, path,
        clusters, reason, seed, similarity) or ``.json``, by the name; the excluded images, if
        any, go beside it (``NAME.excluded.csv``, see ``excluded_file``). ``dinoret train``
        reads any of the three.

        >>> idx = dinoret.open(".dinoret", writable=True)
        >>> _ = idx.curate_clusters([4, 2], recluster=True, progress=False)
        >>> idx.curate_sample(2).write("pick.csv").read_text().splitlines()[0]
        'id,path,cluster_l1,cluster_l2,reason,seed_id,seed_path,similarity'
        """
        written = write_selection(self._rows, path)
        self.excluded_file = None
        if self.excluded:
            self.excluded_file = write_excluded(self.excluded, written.with_name(written.stem + ".excluded.csv"))
        return written

    def link_to(self, dest: str | os.PathLike) -> tuple[int, list[str]]:
        """Make symbolic links to the selected files under ``dest`` (paths kept relative to their
        common folder; an existing file is never replaced): (files placed, problems).

        >>> pick = dinoret.open(".dinoret").curate_retrieve("test_set", k=1)
        >>> pick.link_to("linked")[0] == len(pick)
        True
        """
        return link_or_copy(self.paths, dest, "link")

    def copy_to(self, dest: str | os.PathLike) -> tuple[int, list[str]]:
        """Copy the selected files under ``dest``, as :meth:`link_to` links them.

        >>> pick = dinoret.open(".dinoret").curate_retrieve("test_set", k=1)
        >>> pick.copy_to("copied")[0] == len(pick)
        True
        """
        return link_or_copy(self.paths, dest, "copy")

    def to_html(self, path: str | os.PathLike, progress: bool = False) -> Path:
        """Write the HTML report (``--report``): the cluster tree with galleries, images per
        cluster in the pool and in the selection, what was excluded and, for a retrieval, the
        seeds with what they found. One file, thumbnails embedded, opens offline.

        >>> pick = dinoret.open(".dinoret").curate_retrieve("test_set", k=1)
        >>> pick.to_html("near.html").read_text().lstrip().lower().startswith("<!doctype html>")
        True
        """
        from dinoret.retrieval.curate_report import write_curate_report

        return write_curate_report(self._index.reader, self._report_data, self._rows, path, progress=progress)
