"""Dedup reports: catalog storage with reviews, and the HTML / JSON / CSV files."""
import csv
import io
import json
import re

import pytest
from sqlalchemy import create_engine

from dinoret.retrieval.dedup_result import DedupResult, Group, Member, result_from_dict
from dinoret.retrieval.report_files import render_csv, report_format, write_report
from dinoret.retrieval.reports import (list_reports, load_report, load_reviews, save_report, set_group_verdict,
                               set_keeper)
from tests.conftest import make_image
from dinoret.core.errors import UserError


def sample_result(tmp_path) -> DedupResult:
    a = make_image(tmp_path / "a.jpg", 1, size=(320, 240))
    b = make_image(tmp_path / "sub" / "b.png", 2, size=(160, 120))
    c = make_image(tmp_path / "c.jpg", 3)
    g1 = Group(1, 10, [Member(10, str(a), True, 1.0, "near", 320, 240, a.stat().st_size),
                       Member(11, str(b), False, 0.97, "near", 160, 120, b.stat().st_size)])
    g2 = Group(2, 12, [Member(12, str(c), True, 1.0, "exact", 320, 240, c.stat().st_size),
                       Member(13, str(tmp_path / "gone.jpg"), False, 1.0, "exact", 320, 240, 99)])
    return DedupResult([g1, g2], {"threshold": 0.9, "k": 10, "against": None}, {"images": 4})


@pytest.fixture
def engine(tmp_path):
    return create_engine(f"sqlite:///{tmp_path / 'catalog.db'}")


def test_save_list_load_roundtrip(tmp_path, engine):
    result = sample_result(tmp_path)
    first = save_report(engine, result, files=["r.html"])
    second = save_report(engine, result)
    listed = list_reports(engine)
    assert [r["id"] for r in listed] == [second, first]
    assert listed[1]["files"] == ["r.html"] and listed[1]["n_groups"] == 2 and listed[1]["n_images"] == 4
    loaded = load_report(engine, first)
    assert loaded["params"]["threshold"] == 0.9
    back = result_from_dict(loaded)
    assert [[m.path for m in g.members] for g in back.groups] == [[m.path for m in g.members] for g in result.groups]
    assert loaded["groups"][0]["members"][1]["score"] == pytest.approx(0.97)
    with pytest.raises(UserError, match="no dedup report"):
        load_report(engine, 999)


def test_reviews_apply_to_stored_reports(tmp_path, engine):
    rid = save_report(engine, sample_result(tmp_path))
    set_keeper(engine, [11, 10], 11)
    set_group_verdict(engine, [13, 12], "not_duplicates")
    g1, g2 = load_report(engine, rid)["groups"]
    assert g1["keeper"] == 11 and g1["scored_against"] == 10
    assert [m["is_keeper"] for m in g1["members"]] == [False, True]
    assert g2["reviewed"] == "not_duplicates" and g1["reviewed"] is None
    set_group_verdict(engine, [12, 13], None)  # cleared
    assert load_report(engine, rid)["groups"][1]["reviewed"] is None
    assert load_reviews(engine)[frozenset({10, 11})]["keeper_id"] == 11
    with pytest.raises(UserError):
        set_keeper(engine, [10, 11], 99)
    with pytest.raises(UserError):
        set_group_verdict(engine, [10, 11], "maybe")


def test_json_and_csv_files_parse(tmp_path, engine):
    report = load_report(engine, save_report(engine, sample_result(tmp_path)))
    js = json.loads(write_report(report, tmp_path / "r.json").read_text())
    assert js["groups"][0]["members"][0]["is_keeper"] is True
    rows = list(csv.DictReader(io.StringIO(write_report(report, tmp_path / "out" / "r.csv").read_text())))
    assert [r["reason"] for r in rows] == ["near", "near", "exact", "exact"]
    assert [r["is_keeper"] for r in rows] == ["True", "False", "True", "False"]
    assert rows[1]["group"] == "1" and float(rows[1]["score"]) == pytest.approx(0.97)
    assert render_csv({"groups": []}).strip() == "group,id,path,is_keeper,score,reason,width,height,size,external"


def test_html_is_self_contained(tmp_path, engine):
    report = load_report(engine, save_report(engine, sample_result(tmp_path)))
    html = write_report(report, tmp_path / "r.html").read_text()
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', html)) == 3  # the 4th file is gone
    assert "no preview" in html
    assert not re.search(r'(src|href)="(https?:)?//', html), "no external assets"
    assert "0.970" in html and "keeper" in html and "sub/b.png" in html


def test_report_format_from_name():
    assert report_format("x.HTM") == "html" and report_format("x.csv") == "csv"
    assert report_format("x.txt", "json") == "json"
    with pytest.raises(UserError):
        report_format("report.txt")
