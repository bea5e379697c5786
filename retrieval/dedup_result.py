"""The shape of a dedup result, shared by the finder, the catalog, the report files and the web UI.

``DedupResult.to_dict()`` has exactly the shape ``dinoret.retrieval.reports.load_report`` returns
(without ``id``/``created``), so every consumer reads one format.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Member:
    """One image of a duplicate :class:`Group`: the keeper (``is_keeper``) or a copy of it.

    >>> groups = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False)
    >>> all(m.score == 1.0 for g in groups for m in g.members if m.is_keeper and not m.external)
    True
    """

    id: int | None  # index id; None for an item of the --against set that is not in this index
    path: str
    is_keeper: bool
    score: float  # cosine similarity to the group's keeper (1.0 for the keeper itself)
    reason: str  # "exact" (same bytes or same decoded pixels as the keeper) or "near"
    width: int
    height: int
    size: int  # bytes on disk
    external: bool = False  # True for the --against item a group is about


@dataclass
class Group:
    """A duplicate group: its number, the keeper's id, the members (the keeper first) and a
    reviewer's verdict (``reviewed``).

    >>> groups = dinoret.open(".dinoret").dedup(threshold=0.95, progress=False)
    >>> all(g.keeper == g.members[0].id and len(g.members) >= 2 for g in groups)
    True
    """

    group: int
    keeper: int | None  # id of the keeper (None when the keeper is an external --against item)
    members: list[Member]
    reviewed: str | None = None  # "not_duplicates" or None

    def member_ids(self) -> list[int]:
        return [m.id for m in self.members if m.id is not None]


@dataclass
class DedupResult:
    groups: list[Group]
    params: dict  # threshold, k, keep, split, against, method, model ... (what made this result)
    stats: dict = field(default_factory=dict)  # images, exact_pairs, near_edges, seconds ...

    @property
    def n_images(self) -> int:
        return sum(len(g.members) for g in self.groups)

    def non_keepers(self) -> list[Member]:
        return [m for g in self.groups for m in g.members if not m.is_keeper]

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "stats": self.stats,
            "groups": [
                {"group": g.group, "keeper": g.keeper, "reviewed": g.reviewed, "members": [asdict(m) for m in g.members]}
                for g in self.groups
            ],
        }


def result_from_dict(d: dict) -> DedupResult:
    """Inverse of ``DedupResult.to_dict`` (also accepts ``load_report``'s dict)."""
    groups = [
        Group(g["group"], g["keeper"], [Member(**m) for m in g["members"]], g.get("reviewed"))
        for g in d["groups"]
    ]
    return DedupResult(groups, dict(d.get("params", {})), dict(d.get("stats", {})))
