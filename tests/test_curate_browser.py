"""The curation report and the Clusters page in a real browser (Debian chromium through
playwright), over real photos: the 56 UKBench photos and the 10 perception test photos,
embedded by a ViT-S/14 with random weights (no pretrained weights offline)."""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dinoret.cli import main
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, serving

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium (.ci/run installs it)"),
]


def _curate(*args) -> str:
    r = CliRunner().invoke(main, ["curate", *map(str, args)])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def curated(tmp_path_factory, shared_data, vits14_weights):
    """(index, report, selection): clusters 12,3; a sample of 24 with one UKBench object's
    photo as the evaluation set to exclude, and its report."""
    from PIL import Image

    from dinoret.indexer.build import BuildOptions, build_index

    root = tmp_path_factory.mktemp("curate_browser")
    evalset = root / "eval"
    evalset.mkdir()
    with Image.open(shared_data / "ukbench_first56" / "images" / "ukbench00040.jpg") as im:
        im.resize((im.width // 2, im.height // 2)).save(evalset / "leak.jpg", quality=85)
    index = root / "index"
    build_index([shared_data / "ukbench_first56" / "images", shared_data / "perception_testimages"], index,
                BuildOptions(weights=str(vits14_weights), workers=0, progress=False))
    _curate("clusters", "--index", index, "--clusters", "12,3", "--resample", "2", "-q")
    report, selection = root / "report.html", root / "pick.csv"
    out = _curate("sample", "--index", index, "--target", 24, "--out", selection, "--report", report,
                  "--exclude", evalset, "--exclude-threshold", 0.97, "-q")
    assert "excluded" in out
    return index, report, selection


def _images_loaded(page, selector: str, timeout: float = 30.0) -> None:
    """Wait until every image under ``selector`` is decoded (polling from here: the server's
    Content-Security-Policy forbids the eval that page.wait_for_function uses)."""
    deadline = time.monotonic() + timeout
    check = "imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
    while not page.locator(selector).evaluate_all(check):
        assert time.monotonic() < deadline, f"images under {selector} did not load"
        time.sleep(0.2)


def _watch(page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("request", lambda r: errors.append(f"outside request {r.url}") if not r.url.startswith(("file:", "data:", "http://127.0.0.1")) else None)
    return errors


def test_report_opens_offline_in_chromium(curated, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    _, report, selection = curated
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = _watch(page)
            page.goto(report.as_uri())
            assert "24 images selected from a pool of 66" in page.inner_text(".params")
            rows = page.locator("table.levels tr")
            assert rows.count() == 3  # header + 2 levels
            tops = page.locator("#clusters > details.cluster")
            assert tops.count() == 3
            tops.first.locator(":scope > summary").click()  # expand the largest top cluster: its gallery and its leaves
            gallery = tops.first.locator(":scope > .gallery figure img")
            assert gallery.count() >= 1
            _images_loaded(page, "#clusters > details.cluster[open] > .gallery img")
            assert tops.first.locator(":scope > details.cluster").count() >= 1
            # What was excluded, and why: the photo leak.jpg copies.
            dropped = page.locator(".row.dropped")
            assert dropped.count() >= 1 and "ukbench00040.jpg" in dropped.first.inner_text()
            assert "leak.jpg" in dropped.first.inner_text()
            # The selected images are marked in the galleries; the counts add up.
            sel = sum(int(m) for m in re.findall(r"(\d+) selected", " ".join(tops.locator(":scope > summary").all_inner_texts())))
            assert sel == 24
            page.screenshot(path=str(tmp_path / "curate_report.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "curate_report.png").stat().st_size > 10_000
    assert "ukbench00040.jpg" not in selection.read_text()
    if os.environ.get("DINORET_KEEP_SCREENSHOTS"):
        shutil.copy(tmp_path / "curate_report.png", Path(os.environ["DINORET_KEEP_SCREENSHOTS"]) / "curate_report.png")


@pytest.fixture(scope="module")
def server(curated, tmp_path_factory):
    with serving(curated[0], tmp_path_factory.mktemp("serve_clusters")) as url:
        yield url


def test_clusters_page_in_chromium(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = _watch(page)
            page.goto(server)
            with page.expect_navigation():
                page.click("header nav >> text=Clusters")
            assert page.locator("#levels tr").count() == 3
            cards = page.locator("#clusters .cluster-card")
            assert cards.count() == 3
            _images_loaded(page, "#clusters img")
            with page.expect_navigation():
                cards.first.locator("a.open-cluster").click()
            assert re.search(r"/clusters/2/\d+$", page.url)
            with page.expect_navigation():
                page.locator("#clusters .cluster-card a.open-cluster").first.click()
            assert re.search(r"/clusters/1/\d+$", page.url)
            hits = page.locator("#results .hit")
            assert hits.count() >= 1
            first = hits.first.get_attribute("data-id")
            page.screenshot(path=str(tmp_path / "clusters.png"), full_page=True)
            with page.expect_navigation():  # more like this, from a picture of the leaf
                hits.first.locator("a.more").click()
            assert re.search(rf"/search\?id={first}&k=16$", page.url)
            assert page.locator("#results .hit").count() == 16
            assert not errors, errors
        finally:
            browser.close()
    if os.environ.get("DINORET_KEEP_SCREENSHOTS"):
        shutil.copy(tmp_path / "clusters.png", Path(os.environ["DINORET_KEEP_SCREENSHOTS"]) / "clusters.png")
