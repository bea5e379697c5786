"""`dinoret dedup` end to end: a real index (tiny random ViT, generated photos), the finder,
the CLI, reports, --against, moves + undo, and reviewers' verdicts.

The tiny random ViT is not DINOv2: unrelated generated photos score up to ~0.99 with it,
while a resized/recompressed copy scores ~0.9999. The tests therefore run at THRESHOLD
0.998, which tests the grouping logic, not the default threshold (that one is chosen
from real-photo curves, see benchmarks/dedup_quality.py).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dinoret.cli import main
from dinoret.indexer.build import BuildOptions, build_index
from dinoret.retrieval.dedup import find_duplicates
from dinoret.retrieval.index import open_index
from dinoret.retrieval.reports import load_report, set_group_verdict, set_keeper
from tests.conftest import make_image

THRESHOLD = 0.998
T0 = 1_700_000_000  # a fixed mtime, so that --keep oldest has a known answer


def make_collection(d: Path) -> Path:
    """Three duplicate groups and four unrelated photos.

    a.jpg + a-small.jpg (half size, recompressed): near. b.png + b.bmp: same pixels (exact by
    pixel hash). c.jpg + sub/c-copy.jpg: same bytes (exact by content hash). u4..u7: unrelated.
    mtimes: a.jpg older than a-small.jpg, b.png older than b.bmp.
    """
    a = make_image(d / "a.jpg", 1)
    Image.open(a).resize((160, 120), Image.Resampling.BILINEAR).save(d / "a-small.jpg", quality=70)
    make_image(d / "b.png", 2, fmt="PNG")
    Image.open(d / "b.png").save(d / "b.bmp")
    c = make_image(d / "c.jpg", 3)
    (d / "sub").mkdir()
    shutil.copyfile(c, d / "sub" / "c-copy.jpg")
    for seed in range(4, 8):
        make_image(d / f"u{seed}.jpg", seed)
    for name, age in {"a.jpg": 100, "a-small.jpg": 0, "b.png": 200, "b.bmp": 0, "c.jpg": 0, "sub/c-copy.jpg": 0}.items():
        os.utime(d / name, (T0 - age, T0 - age))
    return d


def make_other_set(d: Path, photos: Path) -> Path:
    """A 'test set': a byte copy of c, a smaller JPEG of b, and an unrelated photo."""
    d.mkdir(parents=True)
    shutil.copyfile(photos / "c.jpg", d / "c-leak.jpg")
    Image.open(photos / "b.png").resize((200, 150), Image.Resampling.BILINEAR).save(d / "b-leak.jpg", quality=85)
    make_image(d / "x9.jpg", 9)
    return d


def build(photos: Path, index_dir: Path, weights: Path) -> Path:
    build_index([photos], index_dir, BuildOptions(weights=str(weights), device="cpu", workers=0, progress=False,
                                                  batch_size=8))
    return index_dir


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_weights):
    """(photos, index) shared by the tests that only read them."""
    root = tmp_path_factory.mktemp("dedup")
    photos = make_collection(root / "photos")
    return photos, build(photos, root / "idx", tiny_weights)


@pytest.fixture
def own_collection(tmp_path, tiny_weights):
    """(photos, index) for a test that moves files or writes reviews."""
    photos = make_collection(tmp_path / "photos")
    return photos, build(photos, tmp_path / "idx", tiny_weights)


def dedup(*args: str):
    result = CliRunner().invoke(main, ["dedup", "-q", *args])
    assert "Traceback" not in result.output, result.output
    return result


def names(photos: Path, group) -> list[str]:
    """Member paths relative to ``photos`` (keeper first), for groups as dicts or Groups."""
    members = group["members"] if isinstance(group, dict) else [vars(m) for m in group.members]
    return [os.path.relpath(m["path"], photos) for m in members]


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_tiny_model_separates_copies_from_unrelated_photos(collection):
    # The premise of every test below: near copies above THRESHOLD, unrelated photos below it.
    photos, idx = collection
    reader = open_index(idx)
    ids = reader.ids()
    v = reader.vectors(ids)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    row = {os.path.relpath(r.path, photos): i for i, r in enumerate(reader.records(ids))}
    sims = v @ v.T
    assert sims[row["a.jpg"], row["a-small.jpg"]] > THRESHOLD
    unrelated = [row[n] for n in ("a.jpg", "b.png", "c.jpg", "u4.jpg", "u5.jpg", "u6.jpg", "u7.jpg")]
    sub = sims[np.ix_(unrelated, unrelated)]
    assert sub[~np.eye(len(unrelated), dtype=bool)].max() < THRESHOLD - 0.002


def test_dedup_on_a_cpu_imports_no_torch(own_collection):
    """Grouping stored vectors needs no model: the command never imports torch (about 0.5 GiB
    resident, a third of the whole budget of a million-vector dedup)."""
    photos, idx = own_collection
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); "
            "sys.argv = ['dinoret', 'dedup', '--index', sys.argv[1], '-q', '--device', 'cpu', '--threshold', sys.argv[2]]; "
            "runpy.run_module('dinoret', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, str(idx), str(THRESHOLD)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "3 groups, 3 duplicates" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "torch loaded: False"


def test_exact_and_near_duplicates_found_unrelated_photos_not_grouped(collection):
    photos, idx = collection
    result = find_duplicates(open_index(idx), threshold=THRESHOLD, device="cpu")
    by_keeper = {names(photos, g)[0]: g for g in result.groups}
    assert sorted(names(photos, g) for g in result.groups) == [
        ["a.jpg", "a-small.jpg"], ["b.bmp", "b.png"], ["c.jpg", "sub/c-copy.jpg"]]
    near, pixels, content = (by_keeper[k].members for k in ("a.jpg", "b.bmp", "c.jpg"))
    assert [m.reason for m in near] == ["near", "near"] and THRESHOLD <= near[1].score < 1.0
    assert [m.reason for m in pixels] == ["exact", "exact"] and [m.reason for m in content] == ["exact", "exact"]
    assert [m.is_keeper for g in result.groups for m in g.members].count(True) == 3
    assert all(g.keeper == g.members[0].id and g.members[0].is_keeper for g in result.groups)
    assert (near[0].width, near[0].height, near[1].width, near[1].height) == (320, 240, 160, 120)
    assert result.stats["exact_copies"] == 2 and result.stats["images"] == 10
    # At a threshold below every unrelated pair's cosine everything would merge: the logic, not luck.
    assert len(find_duplicates(open_index(idx), threshold=0.5, device="cpu").groups) < 3


@pytest.mark.parametrize("keep, keepers", [
    ("largest", {"a.jpg", "b.bmp"}),  # most pixels; b: same pixels, more bytes
    ("first", {"a-small.jpg", "b.bmp"}),  # first path: "a-small" sorts before "a.jpg"
    ("oldest", {"a.jpg", "b.png"}),  # earliest mtime
])
def test_keep_policies(collection, keep, keepers):
    photos, idx = collection
    result = find_duplicates(open_index(idx), threshold=THRESHOLD, keep=keep, device="cpu")
    chosen = {names(photos, g)[0] for g in result.groups}
    assert chosen == keepers | {"c.jpg"}


def test_reports_html_json_csv_and_list(collection, tmp_path):
    photos, idx = collection
    out = {fmt: tmp_path / f"report.{fmt}" for fmt in ("html", "json", "csv")}
    for fmt, path in out.items():
        r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--report", str(path))
        assert r.exit_code == 0, r.output
        assert f"report written to {path}" in r.output and "3 groups, 3 duplicates (2 exact, 1 near)" in r.output
    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--format", "json",
              "--report", str(tmp_path / "no-suffix"))
    assert r.exit_code == 0 and json.loads((tmp_path / "no-suffix").read_text())["groups"]

    js = json.loads(out["json"].read_text())
    assert js["params"]["threshold"] == THRESHOLD and len(js["groups"]) == 3
    assert sorted(names(photos, g) for g in js["groups"])[0] == ["a.jpg", "a-small.jpg"]
    rows = list(csv.DictReader(out["csv"].open()))
    assert {"group", "path", "is_keeper", "score", "reason"} <= set(rows[0])
    assert len(rows) == 6 and sum(r["is_keeper"] == "True" for r in rows) == 3
    small = next(r for r in rows if r["path"].endswith("a-small.jpg"))
    assert small["reason"] == "near" and THRESHOLD <= float(small["score"]) < 1
    assert {r["reason"] for r in rows if r["path"].endswith((".png", ".bmp", "c.jpg", "c-copy.jpg"))} == {"exact"}
    html = out["html"].read_text()
    assert html.count('<img src="data:image/jpeg;base64,') == 6
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) and "http://" not in html
    assert "https://" not in html and "a-small.jpg" in html

    listed = dedup("--index", str(idx), "--list")
    assert listed.exit_code == 0
    lines = [line for line in listed.output.splitlines() if line.startswith("#")]
    assert len(lines) >= 4 and all(f"threshold {THRESHOLD}" in line for line in lines)
    assert sum(str(p.resolve()) in listed.output for p in out.values()) == 3


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium is not at /usr/bin/chromium")
def test_html_report_renders_offline_in_chromium(collection, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    photos, idx = collection
    assert dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--report", str(tmp_path / "r.html")).exit_code == 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.goto((tmp_path / "r.html").as_uri())
            page.wait_for_load_state("load")
            assert page.locator("section.group").count() == 3
            assert page.locator(".member.keeper").count() == 3
            loaded = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
            assert loaded == 6
        finally:
            browser.close()
    assert all(u.startswith(("file:", "data:")) for u in requests), requests


def _against_groups(photos: Path, other: Path, report: dict) -> list[tuple[str, list[str]]]:
    out = []
    for g in report["groups"]:
        keeper, *members = g["members"]
        assert keeper["external"] and keeper["is_keeper"] and keeper["id"] is None and g["keeper"] is None
        assert not any(m["external"] or m["is_keeper"] for m in members)
        out.append((os.path.relpath(keeper["path"], other), sorted(os.path.relpath(m["path"], photos) for m in members)))
    return out


@pytest.mark.parametrize("as_index", [False, True], ids=["folder", "index"])
def test_against_reports_index_images_duplicating_another_set(collection, tmp_path, tiny_weights, as_index):
    photos, idx = collection
    other = make_other_set(tmp_path / "test_set", photos)
    target = build(other, tmp_path / "test_idx", tiny_weights) if as_index else other
    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--against", str(target),
              "--report", str(tmp_path / "leaks.json"))
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "leaks.json").read_text())
    # One group per leaked item; a.jpg / a-small.jpg (duplicates within the index) are not reported.
    assert _against_groups(photos, other, report) == [
        ("b-leak.jpg", ["b.bmp", "b.png"]), ("c-leak.jpg", ["c.jpg", "sub/c-copy.jpg"])]
    reasons = {os.path.relpath(m["path"], photos): m["reason"] for g in report["groups"] for m in g["members"][1:]}
    assert reasons == {"b.bmp": "near", "b.png": "near", "c.jpg": "exact", "sub/c-copy.jpg": "exact"}
    assert report["params"]["against"].endswith("test_idx" if as_index else "test_set")
    assert report["stats"]["against_images"] == 3
    assert "against" in dedup("--index", str(idx), "--list").output


def test_move_dry_run_then_move_and_undo_restore_every_byte(own_collection, tmp_path):
    photos, idx = own_collection
    before = tree(photos)
    dest = tmp_path / "dups"
    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--move-to", str(dest), "--dry-run")
    assert r.exit_code == 0 and "dry run: 3 files would move" in r.output
    assert tree(photos) == before and not dest.exists()

    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--move-to", str(dest))
    assert r.exit_code == 0 and "moved 3 of 3 files" in r.output, r.output
    assert sorted(set(before) - set(tree(photos))) == ["a-small.jpg", "b.png", "sub/c-copy.jpg"]
    moved = {k: v for k, v in tree(dest).items() if not k.startswith("dinoret-moves-")}
    assert moved == {k: before[k] for k in ("a-small.jpg", "b.png", "sub/c-copy.jpg")}  # relative paths kept
    manifest = next(dest.glob("dinoret-moves-*.json"))
    assert f"undo with: dinoret dedup --undo {manifest}" in r.output

    r = dedup("--undo", str(manifest))
    assert r.exit_code == 0 and "restored 3 files" in r.output, r.output
    assert tree(photos) == before
    assert [p.name for p in dest.rglob("*") if p.is_file()] == [manifest.name]


def test_reviews_are_honoured_by_the_next_run(own_collection):
    photos, idx = own_collection
    reader = open_index(idx)
    first = find_duplicates(reader, threshold=THRESHOLD, device="cpu")
    group_a = next(g for g in first.groups if names(photos, g)[0] == "a.jpg")
    group_b = next(g for g in first.groups if names(photos, g)[0] == "b.bmp")
    set_group_verdict(reader.engine, group_a.member_ids(), "not_duplicates")
    b_png = reader.id_for_path(photos / "b.png")
    set_keeper(reader.engine, group_b.member_ids(), b_png)

    again = find_duplicates(reader, threshold=THRESHOLD, device="cpu")
    assert sorted(names(photos, g) for g in again.groups) == [["b.png", "b.bmp"], ["c.jpg", "sub/c-copy.jpg"]]
    assert again.stats["not_duplicates_skipped"] == 1
    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD))
    assert r.exit_code == 0 and "2 groups" in r.output and "a-small.jpg" not in r.output
    report = load_report(reader.engine, int(re.search(r"report #(\d+)", r.output).group(1)))
    assert [g["keeper"] for g in report["groups"] if names(photos, g)[0].startswith("b.")] == [b_png]

    set_group_verdict(reader.engine, group_a.member_ids(), None)  # cleared: reported again
    assert len(find_duplicates(reader, threshold=THRESHOLD, device="cpu").groups) == 3


def test_user_errors_are_one_line_and_non_zero(tmp_path, collection):
    _, idx = collection
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    for args in (["--index", str(tmp_path / "nowhere")],
                 ["--index", str(idx), "--against", str(empty)],
                 ["--index", str(idx), "--from-report", "999"]):
        r = dedup(*args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    r = dedup("--index", str(idx), "--dry-run")  # --dry-run without --move-to
    assert r.exit_code == 2 and "--dry-run goes with --move-to" in r.output


def test_help_states_the_default_threshold_in_use():
    from dinoret.retrieval.dedup import DEFAULT_THRESHOLD

    r = CliRunner().invoke(main, ["dedup", "--help"], terminal_width=200)
    assert r.exit_code == 0 and "Example:" in r.output
    assert f"[default: {DEFAULT_THRESHOLD}," in " ".join(r.output.split())
