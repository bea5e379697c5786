"""Dedup results as objects: :class:`Groups` (a list of :class:`Group` with their
:class:`Member` s), the report files ``dinoret dedup --report`` writes, and moving the extra
copies aside (``--move-to``) and back (``--undo``)."""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dinoret.core.errors import UserError
from dinoret.retrieval import moves
from dinoret.retrieval.dedup_result import Group, Member, result_from_dict
from dinoret.retrieval.report_files import report_format, write_report
from dinoret.retrieval.reports import add_report_files

if TYPE_CHECKING:
    from dinoret.api.handle import Index


def check_report_path(path: str | os.PathLike, format: str | None = None) -> str:
    """The report format for ``path`` (``format``, else from the file name); :class:`dinoret.Error`
    for an unknown format or a path that is not a regular file (a device, a pipe), before any
    work is done.

    >>> from dinoret.api.groups import check_report_path
    >>> check_report_path("dups.html"), check_report_path("dups", "csv")
    ('html', 'csv')
    """
    fmt = report_format(path, format)
    if os.path.lexists(path) and not os.path.isfile(path):
        raise UserError(f"the report {os.fspath(path)} exists and is not a regular file (a device or a pipe?): "
                        "it would be replaced; choose a file name", param="report_path")
    return fmt


class Groups(Sequence):
    """Duplicate groups, as ``dinoret dedup`` finds and reports them: a list of
    :class:`dinoret.Group`, each with its keeper first and the other members (``reason``
    ``"exact"`` or ``"near"``, ``score`` = cosine to the keeper). ``params`` says what made
    them (threshold, k, keep, ...), ``stats`` what was looked at; ``id`` is the number of the
    report stored in the index (``dinoret dedup --list``), None when it was not stored.

    >>> groups = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False)
    >>> all(g.members[0].is_keeper for g in groups), groups.params["threshold"]
    (True, 0.95)
    >>> groups.to_csv("dups.csv").name
    'dups.csv'
    """

    def __init__(self, report: dict, index: Index | None = None) -> None:
        self._report = report
        self._index = index  # where the groups come from: move targets are checked against its folders
        self.groups: list[Group] = result_from_dict(report).groups

    @property
    def id(self) -> int | None:
        return self._report.get("id")

    @property
    def params(self) -> dict:
        return self._report.get("params", {})

    @property
    def stats(self) -> dict:
        return self._report.get("stats", {})

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i):
        return self.groups[i]

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __repr__(self) -> str:
        stored = f" report #{self.id}" if self.id is not None else ""
        return f"<dinoret.Groups{stored}: {len(self)} groups, {len(self.non_keepers())} duplicates>"

    def non_keepers(self) -> list[Member]:
        """Every member that is not its group's keeper (the copies a clean-up would remove).

        >>> groups = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False)
        >>> len(groups.non_keepers()) == sum(len(g.members) - 1 for g in groups)
        True
        """
        return [m for g in self.groups for m in g.members if not m.is_keeper]

    def to_dict(self) -> dict:
        """The report as one dict (``params``, ``stats``, ``groups`` with ``members``): the JSON
        file's content and the shape of ``GET /api/dedup/reports/<id>``.

        >>> report = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False).to_dict()
        >>> sorted(report)[:3], sorted(report["groups"][0]) if report["groups"] else ["group", "keeper"]
        (['groups', 'params', 'stats'], ['group', 'keeper', 'members', 'reviewed'])
        """
        return self._report

    def write(self, path: str | os.PathLike, format: str | None = None, progress: bool = False) -> Path:
        """Write the report file ``path`` (``format`` html, json or csv; default from the name),
        as ``dinoret dedup --report PATH [--format F]``; a stored report lists the file.

        >>> groups = dinoret.open(".dinoret", writable=True).dedup(threshold=0.95, progress=False)
        >>> groups.write("dups.report", format="json").name
        'dups.report'
        >>> any(f.endswith("dups.report") for f in dinoret.open(".dinoret").reports()[0]["files"])
        True
        """
        fmt = check_report_path(path, format)
        try:
            written = write_report(self._report, path, fmt, progress=progress)
        except OSError as e:
            raise UserError(f"cannot write the report {os.fspath(path)}: {e.strerror or e}", param="report_path") from None
        if self._index is not None and self._index.writable and self.id is not None:
            add_report_files(self._index._reader.engine, self.id, [str(written.resolve())])
        return written

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the groups as JSON (see :meth:`to_dict`); returns the path.

        >>> import json
        >>> groups = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False)
        >>> len(json.load(open(groups.to_json("dups.json")))["groups"]) == len(groups)
        True
        """
        return self.write(path, "json")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write one CSV row per member: ``group, id, path, is_keeper, score, reason, width,
        height, size, external``; returns the path.

        >>> groups = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False)
        >>> open(groups.to_csv("dups.csv")).readline().strip()
        'group,id,path,is_keeper,score,reason,width,height,size,external'
        """
        return self.write(path, "csv")

    def to_html(self, path: str | os.PathLike, progress: bool = False) -> Path:
        """Write a self-contained HTML page, thumbnails embedded (opens offline); returns the path.

        >>> groups = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False)
        >>> open(groups.to_html("dups.html")).read().lstrip().lower().startswith("<!doctype html>")
        True
        """
        return self.write(path, "html", progress=progress)

    def move_to(self, dest: str | os.PathLike, dry_run: bool = False, allow_inside: bool = False,
                progress: bool = True) -> dict:
        """Move every non-keeper under ``dest`` (paths kept relative to the folder all reported
        images share), as ``dinoret dedup --move-to DEST [--dry-run] [--allow-inside]``; groups a
        reviewer marked *not duplicates* stay. Nothing is deleted or overwritten; a manifest is
        written in ``dest`` first. A ``dest`` inside the indexed folders is refused unless
        ``allow_inside`` (see :meth:`Index.check_move_to`). Returns the manifest: ``moves``
        (``src``, ``dst``, ``status`` each; empty when nothing is to move) and ``manifest`` (its
        path; None on a dry run or when nothing is to move).

        >>> plan = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False).move_to("dups", dry_run=True)
        >>> plan["manifest"] is None, {m["status"] for m in plan["moves"]} <= {"planned"}
        (True, True)
        """
        if self._index is not None and not allow_inside:
            self._index.check_move_to(dest)
        members = [m for g in self.groups if g.reviewed != "not_duplicates" for m in g.members]
        to_move = [m.path for m in members if not m.is_keeper and not m.external]
        if not to_move:
            return moves.move_files([], dest, dry_run=True)  # the manifest's shape; nothing written
        root = os.path.commonpath([os.path.dirname(m.path) for m in members if not m.external])
        plan = moves.plan_moves(to_move, dest, root=root)
        return moves.move_files(plan, dest, dry_run=dry_run, report_id=self.id, progress=progress and not dry_run)


def undo_moves(manifest: str | os.PathLike, progress: bool = True) -> dict:
    """Move the files of a ``move_to`` manifest back where they were, each after checking its
    sha256, as ``dinoret dedup --undo MANIFEST``. Returns ``restored``, ``already_in_place``
    and ``problems`` (files changed or missing, or whose place is taken again: left alone).

    >>> groups = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False)
    >>> moved = groups.move_to("dups", progress=False)
    >>> dinoret.undo_moves(moved["manifest"], progress=False)["problems"] if moved["manifest"] else []
    []
    """
    return moves.undo_moves(manifest, progress=progress)
