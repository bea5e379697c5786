"""Dedup reports and reviewers' verdicts, stored in the index catalog (its SQLAlchemy engine).

Three tables of our own (``dedup_reports``, ``dedup_members``, ``dedup_reviews``) live beside
the index's tables in ``catalog.db``; they are created on first use.

A review is keyed by the *set of index ids* in a group, not by a report or group number,
so it survives re-running dedup: a group marked ``not_duplicates`` is not reported again
while it has the same members, and a keeper chosen by a reviewer stays the keeper of any
later group that still contains every reviewed member.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import weakref
from collections.abc import Iterable

from sqlalchemy import JSON, Boolean, DateTime, Engine, Float, ForeignKey, Integer, String, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from dinoret.indexer.catalog import catalog_read_only, utcnow
from dinoret.retrieval.dedup_result import DedupResult, Group
from dinoret.core.errors import NotFound, UserError

VERDICTS = ("not_duplicates", None)


class Base(DeclarativeBase):
    pass


class DedupReport(Base):
    __tablename__ = "dedup_reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime)
    params: Mapped[dict] = mapped_column(JSON)
    stats: Mapped[dict] = mapped_column(JSON)
    files: Mapped[list] = mapped_column(JSON)  # report files written for it (html/json/csv)
    n_groups: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)


class DedupMember(Base):
    __tablename__ = "dedup_members"
    row: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("dedup_reports.id", ondelete="CASCADE"), index=True)
    group: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    path: Mapped[str] = mapped_column(String)
    is_keeper: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(Integer)
    external: Mapped[bool] = mapped_column(Boolean, default=False)


class DedupReview(Base):
    __tablename__ = "dedup_reviews"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    member_ids: Mapped[list] = mapped_column(JSON)
    verdict: Mapped[str | None] = mapped_column(String(20), nullable=True)
    keeper_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated: Mapped[dt.datetime] = mapped_column(DateTime)


_ready: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _ensure_tables(engine: Engine, write: bool = False) -> bool:
    """Create the dedup tables on first use; False if they do not exist and cannot be made
    (a read-only catalog: reading finds nothing, writing is a UserError)."""
    if engine in _ready:
        return True
    if catalog_read_only(engine):
        if write:
            raise UserError(f"the index catalog {engine.url.database} is read-only: dedup reports and reviews "
                            "cannot be stored in it")
        return inspect(engine).has_table(DedupReport.__tablename__)
    Base.metadata.create_all(engine)
    _ready.add(engine)
    return True


def review_key(member_ids: Iterable[int]) -> str:
    ids = sorted({int(i) for i in member_ids})
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def save_report(engine: Engine, result: DedupResult, files: Iterable[str] = ()) -> int:
    """Store ``result`` (every group and member) and return the new report id."""
    _ensure_tables(engine, write=True)
    with Session(engine) as s, s.begin():
        rep = DedupReport(
            created=utcnow(), params=result.params, stats=result.stats, files=[str(f) for f in files],
            n_groups=len(result.groups), n_images=result.n_images,
        )
        s.add(rep)
        s.flush()
        s.add_all(
            DedupMember(
                report_id=rep.id, group=g.group, image_id=m.id, path=m.path, is_keeper=m.is_keeper,
                score=float(m.score), reason=m.reason, width=m.width, height=m.height, size=m.size,
                external=m.external,
            )
            for g in result.groups
            for m in g.members
        )
        return rep.id


def add_report_files(engine: Engine, report_id: int, files: Iterable[str]) -> None:
    """Record report files written after the report was saved (they are listed with it)."""
    _ensure_tables(engine, write=True)
    with Session(engine) as s, s.begin():
        rep = s.get(DedupReport, report_id)
        if rep is None:
            raise NotFound(f"no dedup report {report_id}")
        rep.files = [*rep.files, *(str(f) for f in files)]


def _summary(rep: DedupReport) -> dict:
    return {
        "id": rep.id,
        "created": rep.created.isoformat(timespec="seconds"),
        "threshold": rep.params.get("threshold"),
        "against": rep.params.get("against"),
        "n_groups": rep.n_groups,
        "n_images": rep.n_images,
        "files": list(rep.files),
        "params": rep.params,
    }


def list_reports(engine: Engine) -> list[dict]:
    """Every stored report, newest first: id, created, threshold, against, n_groups, n_images, files, params."""
    if not _ensure_tables(engine):
        return []
    with Session(engine) as s:
        return [_summary(r) for r in s.scalars(select(DedupReport).order_by(DedupReport.id.desc()))]


def load_report(engine: Engine, report_id: int) -> dict:
    """A stored report with the reviews made since applied (verdicts, keepers chosen by a reviewer).

    Each member's ``score`` is its similarity to the keeper the report chose, whose id is
    the group's ``scored_against`` (it differs from ``keeper`` after a reviewer's choice).
    """
    if not _ensure_tables(engine):
        raise NotFound(f"no dedup report {report_id}")
    with Session(engine) as s:
        rep = s.get(DedupReport, report_id)
        if rep is None:
            raise NotFound(f"no dedup report {report_id}")
        rows = s.scalars(select(DedupMember).where(DedupMember.report_id == report_id).order_by(DedupMember.row)).all()
        out = _summary(rep)
        out["stats"] = rep.stats
    groups: dict[int, dict] = {}
    for r in rows:
        g = groups.setdefault(r.group, {"group": r.group, "keeper": None, "reviewed": None, "members": []})
        if r.is_keeper:
            g["keeper"] = g["scored_against"] = r.image_id
        g["members"].append({
            "id": r.image_id, "path": r.path, "is_keeper": r.is_keeper, "score": r.score, "reason": r.reason,
            "width": r.width, "height": r.height, "size": r.size, "external": r.external,
        })
    reviews = load_reviews(engine)
    for g in groups.values():
        _apply_review(g, reviews.get(frozenset(m["id"] for m in g["members"] if m["id"] is not None)))
    out["groups"] = list(groups.values())
    return out


def _apply_review(group: dict, review: dict | None) -> None:
    if review is None:
        return
    group["reviewed"] = review["verdict"]
    keeper = review["keeper_id"]
    if keeper is not None and any(m["id"] == keeper for m in group["members"]):
        group["keeper"] = keeper
        for m in group["members"]:
            m["is_keeper"] = m["id"] == keeper


def load_reviews(engine: Engine) -> dict[frozenset, dict]:
    """Every review: frozenset of member ids -> {"verdict", "keeper_id", "updated"}."""
    if not _ensure_tables(engine):
        return {}
    with Session(engine) as s:
        return {
            frozenset(r.member_ids): {"verdict": r.verdict, "keeper_id": r.keeper_id, "updated": r.updated}
            for r in s.scalars(select(DedupReview))
        }


def _upsert_review(engine: Engine, member_ids: list[int], **fields) -> None:
    _ensure_tables(engine, write=True)
    ids = sorted({int(i) for i in member_ids})
    if len(ids) < 2:
        raise UserError("a review needs the ids of at least two group members")
    with Session(engine) as s, s.begin():
        key = review_key(ids)
        rev = s.get(DedupReview, key) or DedupReview(key=key, member_ids=ids, verdict=None, keeper_id=None)
        for name, value in fields.items():
            setattr(rev, name, value)
        rev.updated = utcnow()
        s.add(rev)


def set_group_verdict(engine: Engine, member_ids: list[int], verdict: str | None) -> None:
    """Mark the group with these members ``"not_duplicates"`` (or clear the mark with None)."""
    if verdict not in VERDICTS:
        raise UserError(f"verdict must be 'not_duplicates' or None, not {verdict!r}")
    _upsert_review(engine, member_ids, verdict=verdict)


def set_keeper(engine: Engine, member_ids: list[int], keeper_id: int) -> None:
    """Make ``keeper_id`` the keeper of the group with these members (now and in later runs)."""
    if int(keeper_id) not in {int(i) for i in member_ids}:
        raise UserError(f"keeper {keeper_id} is not a member of the group")
    _upsert_review(engine, member_ids, keeper_id=int(keeper_id))


def apply_reviews(groups: list[Group], reviews: dict[frozenset, dict]) -> list[Group]:
    """Groups a fresh dedup run reports: those marked not-duplicates with the same members are
    dropped; keepers chosen by reviewers are kept (see ``dinoret.retrieval.groups`` for how they lead)."""
    kept = []
    for g in groups:
        review = reviews.get(frozenset(g.member_ids()))
        if review is not None and review["verdict"] == "not_duplicates":
            continue
        kept.append(g)
    return kept
